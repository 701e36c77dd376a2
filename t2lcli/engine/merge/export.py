"""Runtime exports of a LoRA adapter: vLLM / SGLang (PEFT folder) and llama.cpp / Ollama (GGUF LoRA adapter).

Every export folds the adapter's effective scale into B and declares a scale of exactly 1.0, because the runtimes
disagree on rsLoRA: llama.cpp and Ollama ignore `use_rslora` and apply alpha/r, older vLLM did too.

PEFT exports (vllm, sglang): `adapter_config.json` with `use_rslora=false`, `lora_alpha=r` (an integer: Ollama
decodes it as uint32) and only `lora_A`/`lora_B` keys of the supported projection modules.

GGUF export (llamacpp, ollama), following llama.cpp's `convert_lora_to_gguf.py` conventions:
  * KV: `general.architecture` = the base's llama.cpp arch, `general.type=adapter`, `adapter.type=lora`,
    `adapter.lora.alpha` = r (float32), so llama.cpp's scale alpha/rank is 1.0;
  * tensors `blk.{l}.{attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down}.weight.lora_a` = A as stored by
    PyTorch, numpy shape [r, d_in] (ggml ne = [d_in, r]) and `.lora_b` = s·B, numpy shape [d_out, r] (ne = [r, d_out]),
    F32. llama.cpp checks base ne[0] == lora_a ne[0] and base ne[1] == lora_b ne[1];
  * llama.cpp stores the `llama` architecture's (Llama, Mistral) q_proj/k_proj weights with their rows permuted for
    its RoPE layout: rows of each head go from HF's [first half | second half] order to interleaved pairs.
    ΔW = B @ A transforms like W, so the same row permutation is applied to lora_b of q_proj (n_head heads) and
    k_proj (n_kv_head heads); lora_a is unchanged. Gemma/Qwen archs keep HF's layout (no permutation).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import torch

from t2lcli import __version__, registry
from t2lcli.engine.adapters import Adapter
from t2lcli.engine.atomic import atomic_dir
from t2lcli.errors import InputError, ShapeMismatchError, T2LError
from t2lcli.runtimes import (  # noqa: F401  (re-exported: the runtime facts used to live here)
    EXPORT_RUNTIMES,
    GGUF_ARCH,
    GGUF_TENSOR,
    PEFT_RUNTIME_MODULES,
    PERMUTED_ARCHS,
    VLLM_MAX_LORA_RANKS,
    vllm_rank_flag,
)

RUNTIMES = EXPORT_RUNTIMES
GGUF_NAME = "adapter.gguf"


def precheck_export(target: str, max_lora_rank: int | None) -> None:
    """Validate flags before any work is done."""
    if target not in RUNTIMES:
        raise InputError(f"unknown export target '{target}'", hint=f"use one of: {', '.join(RUNTIMES)}")
    if max_lora_rank is not None:
        if target == "vllm" and max_lora_rank not in VLLM_MAX_LORA_RANKS:
            raise InputError(f"--max-lora-rank {max_lora_rank} is not a value vLLM accepts",
                             hint=f"vLLM's max_lora_rank is one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))}")
        if target in ("llamacpp", "ollama"):
            raise InputError(f"--max-lora-rank does not apply to {target} (it has no rank limit)")
        if max_lora_rank < 1:
            raise InputError("--max-lora-rank must be at least 1")


def check_rank(target: str, r: int, max_lora_rank: int | None) -> int | None:
    """The --max-lora-rank to print; raises RankLimitError (with the svd suggestion) when r is too large."""
    from t2lcli.errors import RankLimitError

    fix = f"re-factorise to a smaller rank: t2l merge ADAPTER --method svd --rank {{k}} --export {target} -o OUT"
    if target == "vllm":
        limit = max_lora_rank or VLLM_MAX_LORA_RANKS[-1]
        if r > limit:
            k = max_lora_rank or VLLM_MAX_LORA_RANKS[-1]
            raise RankLimitError(f"rank {r} is over vLLM's max_lora_rank {limit}", hint=fix.format(k=k))
        return max_lora_rank or vllm_rank_flag(r)
    if target == "sglang":
        if max_lora_rank is not None and r > max_lora_rank:
            raise RankLimitError(f"rank {r} is over the SGLang server's --max-lora-rank {max_lora_rank}", hint=fix.format(k=max_lora_rank))
        return max_lora_rank or r
    return None


def _runtime_name(base: str | None) -> str:
    """What a server would call the base: the hub id for registry names, else the name as written."""
    if not base:
        return "BASE_MODEL"
    entry = registry.lookup(base)
    return entry.hub_id if entry is not None else base


def _base_gguf(base: str | None) -> str | None:
    """A GGUF file of the base when t2l knows one (the packaged SmolLM2)."""
    entry = registry.lookup(base) if base else None
    if entry is None or entry.source != "gguf-package":
        return None
    try:
        from t2lcli.engine.base_model import gguf_source

        return str(gguf_source(entry))
    except T2LError:
        return None


def _check_modules(adapter: Adapter, target: str) -> None:
    bad = [m for m in adapter.modules() if m not in PEFT_RUNTIME_MODULES]
    if bad:
        raise ShapeMismatchError(f"{target} cannot apply LoRA to module(s) {', '.join(bad)}",
                                 hint=f"supported: {', '.join(PEFT_RUNTIME_MODULES)}")


def export_adapter(
    adapter: Adapter, target: str, out_dir: Path, name: str, base_model: str | None = None, runtime_base: str | None = None,
    max_lora_rank: int | None = None, force: bool = False, prov: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `adapter` for one runtime into `out_dir` (atomically). Returns path, rank, scale and the commands."""
    from t2lcli.engine.adapters import fold_scale

    precheck_export(target, max_lora_rank)
    _check_modules(adapter, target)
    flat = fold_scale(adapter)
    base = base_model or adapter.config.get("base_model_name_or_path")
    flat.config["base_model_name_or_path"] = base
    rank_flag = check_rank(target, flat.r, max_lora_rank)
    prov = {**(prov or {}), "export": target, "source_effective_scale": adapter.scaling, "effective_scale": 1.0}
    if target in ("vllm", "sglang"):
        return _export_peft(flat, target, out_dir, name, base, runtime_base, rank_flag, force, prov)
    return _export_gguf(flat, target, out_dir, name, base, runtime_base, force, prov)


def _export_peft(flat: Adapter, target: str, out_dir: Path, name: str, base: str | None, runtime_base: str | None,
                 rank_flag: int | None, force: bool, prov: dict[str, Any]) -> dict[str, Any]:
    from t2lcli.engine.adapters import write_peft

    served = runtime_base or _runtime_name(base)
    flat.config["base_model_name_or_path"] = served  # what the serving engine and AutoPeftModel will look up
    path = str(out_dir.resolve())
    mods = " ".join(sorted(flat.modules()))
    if target == "vllm":
        cmd = (f"vllm serve {shlex.quote(served)} --enable-lora --lora-modules {shlex.quote(f'{name}={path}')} "
               f"--max-lora-rank {rank_flag}")
    else:
        cmd = (f"python -m sglang.launch_server --model-path {shlex.quote(served)} --enable-lora "
               f"--lora-paths {shlex.quote(f'{name}={path}')} --max-lora-rank {rank_flag} --lora-target-modules {mods}")
    card = "\n".join([
        f"## Serving with {'vLLM' if target == 'vllm' else 'SGLang'}", "",
        "The scale is folded into lora_B: `use_rslora=false`, `lora_alpha=r`, effective scale 1.0 in every runtime.", "",
        "```bash", cmd, "```", "",
        f"Then send requests with `\"model\": \"{name}\"`." if target == "vllm" else f"Then send requests with `\"lora_path\": \"{name}\"`.",
        "", "",
    ])
    prov = {**prov, "serve_command": cmd}
    write_peft(flat, out_dir, force, prov, extra_card=card)
    return {"kind": f"{target}-adapter", "path": str(out_dir), "r": flat.r, "lora_alpha": flat.config["lora_alpha"],
            "effective_scale": 1.0, "source_effective_scale": prov["source_effective_scale"], "max_lora_rank": rank_flag,
            "command": cmd}


# --------------------------------------------------------------------------------------------- GGUF


def permute_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's Q/K row order: within each head, rows [0..h/2) and [h/2..h) become interleaved pairs."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(flat: Adapter, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(llama.cpp arch, {gguf name: float32 numpy array}) for a scale-folded adapter and its base's config.json."""
    import numpy as np

    if "text_config" in config and "num_hidden_layers" not in config:
        config = {**config["text_config"], "model_type": config["text_config"].get("model_type", config.get("model_type"))}
    mtype = str(config.get("model_type", ""))
    arch = GGUF_ARCH.get(mtype)
    if arch is None:
        raise T2LError(f"no llama.cpp mapping for model type '{mtype}'", hint=f"supported: {', '.join(sorted(GGUF_ARCH))}")
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    out: dict[str, Any] = {}
    for p in flat.prefixes():
        mod = p.rsplit(".", 1)[1]
        m = re.search(r"\.layers\.(\d+)\.", p + ".")
        if m is None or mod not in GGUF_TENSOR:
            raise ShapeMismatchError(f"cannot map {p} to a llama.cpp tensor name")
        layer = int(m.group(1))
        a = flat.tensors[f"{p}.lora_A.weight"].float()
        b = flat.tensors[f"{p}.lora_B.weight"].float()
        if arch in PERMUTED_ARCHS and mod in ("q_proj", "k_proj"):
            b = permute_rows(b, n_head if mod == "q_proj" else n_kv)
        stem = f"blk.{layer}.{GGUF_TENSOR[mod]}.weight"
        out[f"{stem}.lora_a"] = np.ascontiguousarray(a.numpy(), dtype=np.float32)
        out[f"{stem}.lora_b"] = np.ascontiguousarray(b.numpy(), dtype=np.float32)
    return arch, out


def write_gguf_adapter(path: Path, arch: str, tensors: dict[str, Any], alpha: float, name: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(name)
    for key in sorted(tensors, key=_gguf_order):
        writer.add_tensor(key, tensors[key])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_order(key: str) -> tuple[int, str]:
    parts = key.split(".")
    return (int(parts[1]), key) if len(parts) > 1 and parts[1].isdigit() else (-1, key)


def _export_gguf(flat: Adapter, target: str, out_dir: Path, name: str, base: str | None, runtime_base: str | None,
                 force: bool, prov: dict[str, Any]) -> dict[str, Any]:
    from t2lcli.engine.adapters import provenance_section
    from t2lcli.engine.base_model import read_config, resolve_model

    if not base:
        raise InputError("the adapter does not name its base model; the GGUF export needs its config.json",
                         hint="pass --base-model NAME_OR_DIR (only config.json is read)")
    try:
        config = read_config(resolve_model(base, "base"))
    except T2LError as exc:
        raise T2LError(f"cannot read the base model's config.json ({exc.message})",
                       hint="pass --base-model DIR with the base's config.json (weights are not needed)") from None
    arch, tensors = gguf_tensors(flat, config)
    base_gguf = runtime_base or _base_gguf(base)
    if target == "ollama" and base_gguf is None:
        raise InputError("the Ollama Modelfile needs the base as Ollama knows it",
                         hint="pass --runtime-base with an Ollama model name (e.g. llama3.1:8b) or a base .gguf path")
    gpath = (out_dir / GGUF_NAME).resolve()
    base_ref = base_gguf or "BASE.gguf"
    llama_cmd = f"llama-cli -m {shlex.quote(base_ref)} --lora {shlex.quote(str(gpath))}"
    ollama_cmds = f"ollama create {name} -f {shlex.quote(str((out_dir / 'Modelfile').resolve()))} && ollama run {name}"
    permuted = arch in PERMUTED_ARCHS and any(m in ("q_proj", "k_proj") for m in flat.modules())
    prov = {**prov, "gguf_arch": arch, "gguf_alpha": float(flat.r), "qk_rows_permuted": permuted,
            "command": ollama_cmds if target == "ollama" else llama_cmd}
    lines = [
        "---", f"base_model: {base}", "tags: [lora, gguf, llama.cpp, text-to-lora, t2l]", "---", "",
        f"# {name}: GGUF LoRA adapter", "",
        f"`{GGUF_NAME}`: llama.cpp LoRA adapter for arch `{arch}`, rank {flat.r}, `adapter.lora.alpha` = {flat.r} "
        f"(scale 1.0; the source scale {prov['source_effective_scale']:.6g} is folded into lora_b). F32 tensors.",
        "",
        "```bash", llama_cmd, "```", "",
    ]
    if base_gguf is None:
        lines += ["BASE.gguf: the base model converted with llama.cpp's `convert_hf_to_gguf.py` (any quantization).", ""]
    if target == "ollama":
        lines += ["With Ollama:", "", "```bash", ollama_cmds, "```", ""]
    with atomic_dir(out_dir, force=force) as tmp:
        write_gguf_adapter(tmp / GGUF_NAME, arch, tensors, float(flat.r), name)
        if target == "ollama":
            (tmp / "Modelfile").write_text(f"FROM {base_gguf}\nADAPTER ./{GGUF_NAME}\n")
        (tmp / "README.md").write_text("\n".join(lines) + "\n" + provenance_section(prov))
        meta = {**flat.meta, "tool_version": __version__, "merge": prov}
        (tmp / "t2l_adapter.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")
    res = {"kind": f"{target}-adapter", "path": str(out_dir), "gguf": str(out_dir / GGUF_NAME), "arch": arch, "r": flat.r,
           "alpha": float(flat.r), "effective_scale": 1.0, "source_effective_scale": prov["source_effective_scale"],
           "command": prov["command"]}
    if target == "ollama":
        res["modelfile"] = str(out_dir / "Modelfile")
    return res
