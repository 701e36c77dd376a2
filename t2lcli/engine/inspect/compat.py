"""`t2l inspect ADAPTER --compat RUNTIME`: a checklist of a serving runtime's known rules for one adapter.

Each check is {check, status: ok|warn|fail, detail, fix (a command, for failures and warnings)}; the adapter is
`compatible` when no check fails. The runtime facts themselves (rank ladder, module lists, GGUF archs) are
`t2lcli.runtimes`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli.engine.inspect.reports import _gguf_info, _module_and_layer, kind_of
from t2lcli.engine.shapes import base_config
from t2lcli.errors import InputError
from t2lcli.runtimes import COMPAT_RUNTIMES, GGUF_ARCH, PEFT_RUNTIME_MODULES, VLLM_MAX_LORA_RANKS, vllm_rank_flag

RUNTIMES = COMPAT_RUNTIMES
OLLAMA_PEFT_TYPES = ("llama", "mistral", "gemma", "gemma2")  # model types whose PEFT folders Ollama's ADAPTER imports
LLAMACPP_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Checklist:
    """The checks of one adapter against one runtime, in the order they were made."""

    path: Path
    runtime: str
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, check: str, status: str, detail: str, fix: str | None = None) -> None:
        self.checks.append({"check": check, "status": status, "detail": detail, "fix": fix})

    @property
    def export(self) -> str:
        """The `t2l merge --export` command that makes this adapter loadable by the runtime."""
        return f"t2l merge {self.path} --export {self.runtime} -o {self.path.name or 'adapter'}-{self.runtime}"

    def result(self) -> dict[str, Any]:
        return {"kind": "compat", "path": str(self.path), "runtime": self.runtime,
                "compatible": all(ch["status"] != "fail" for ch in self.checks), "checks": self.checks}


def compat_check(path: Path, runtime: str) -> dict[str, Any]:
    """A checklist of `runtime`'s known rules for the adapter at `path`; `compatible` is False if any check fails."""
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime '{runtime}'", hint=f"choose one of: {', '.join(RUNTIMES)}")
    kind = kind_of(path)
    if kind == "checkpoint":
        raise InputError(f"{path} is a T2L checkpoint, not an adapter; --compat checks adapters",
                         hint=f"generate one first: t2l generate \"...\" -c {path} -o out/x")
    cl = Checklist(path, runtime)
    if kind == "gguf-adapter":
        _check_gguf(cl)
        return cl.result()

    from t2lcli.engine.adapters import CONFIG_NAME, load_adapter

    ad = load_adapter(path)
    raw = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    mods = ad.modules() or sorted({_module_and_layer(p)[0] for p in ad.prefixes()})
    cfg = base_config(ad.config.get("base_model_name_or_path"))
    mtype = None if cfg is None else str((cfg.get("text_config") or cfg).get("model_type", cfg.get("model_type")))
    _check_format(cl, mtype)
    _check_rank(cl, ad.r)
    _check_modules(cl, mods)
    _check_scale(cl, ad.config, ad.r, ad.scaling)
    _check_keys(cl, ad.config)
    if runtime == "ollama":
        _check_alpha_type(cl, raw.get("lora_alpha"))
    if runtime in ("llamacpp", "ollama"):
        _check_architecture(cl, mtype, ad.config.get("base_model_name_or_path"))
    dts = sorted({str(t.dtype).replace("torch.", "") for t in ad.tensors.values()})
    cl.add("dtype", "ok", f"{', '.join(dts)}: " + ("cast to the model dtype at load" if runtime != "llamacpp" else "converted to F32 by the export"))
    _check_base(cl, ad.config.get("base_model_name_or_path"))
    return cl.result()


def _check_gguf(cl: Checklist) -> None:
    """A GGUF export: llama.cpp and Ollama load it (Ollama with a Modelfile); the PEFT runtimes do not."""
    info = _gguf_info(cl.path / "adapter.gguf")
    if cl.runtime not in ("llamacpp", "ollama"):
        cl.add("format", "fail", f"{cl.path} holds a GGUF adapter; {cl.runtime} loads PEFT folders (adapter_config.json + adapter_model.safetensors)",
               "use the PEFT folder this was exported from")
        return
    ok = info["gguf_type"] == "adapter" and info["adapter_type"] == "lora"
    cl.add("format", "ok" if ok else "fail", f"GGUF {info['gguf_type']}/{info['adapter_type']}, arch {info['arch']}, {info['tensors']} tensors",
           None if ok else "re-export from the PEFT folder: t2l merge ADAPTER --export llamacpp -o OUT")
    if cl.runtime == "ollama":
        has = (cl.path / "Modelfile").is_file()
        cl.add("Modelfile", "ok" if has else "fail", "present (FROM base + ADAPTER ./adapter.gguf)" if has else "missing",
               None if has else "t2l merge ADAPTER --export ollama -o OUT --runtime-base MODEL")


def _check_format(cl: Checklist, mtype: str | None) -> None:
    if cl.runtime in ("vllm", "sglang", "peft"):
        cl.add("format", "ok", "PEFT folder (adapter_config.json + adapter_model.safetensors)")
    elif cl.runtime == "llamacpp":
        cl.add("format", "fail", "llama.cpp loads GGUF LoRA adapters (`--lora adapter.gguf`), not PEFT folders", cl.export)
    else:
        cl.add("format", "ok" if mtype in OLLAMA_PEFT_TYPES else "warn",
               "Ollama's ADAPTER imports a PEFT safetensors folder for Llama/Mistral/Gemma bases, or a GGUF adapter",
               None if mtype in OLLAMA_PEFT_TYPES else cl.export)


def _check_rank(cl: Checklist, r: int) -> None:
    if cl.runtime == "vllm":
        flag = vllm_rank_flag(r)
        if flag is None:
            top = VLLM_MAX_LORA_RANKS[-1]
            cl.add("rank", "fail", f"rank {r} is over vLLM's largest max_lora_rank {top}",
                   f"t2l merge {cl.path} --method svd --rank {top} -o {cl.path.name}-r{top}")
        else:
            note = "" if r <= 16 else f" (vLLM's default max_lora_rank 16 would refuse it: 'LoRA rank {r} is greater than max_lora_rank 16')"
            cl.add("rank", "ok", f"rank {r}: start vLLM with --enable-lora --max-lora-rank {flag}{note}")
    elif cl.runtime == "sglang":
        cl.add("rank", "ok", f"rank {r}: SGLang sizes its LoRA buffers from the adapters given at start; pass --max-lora-rank {r} or more when adding adapters later")
    else:
        cl.add("rank", "ok", f"rank {r}: no rank limit")


def _check_modules(cl: Checklist, mods: list[str]) -> None:
    if cl.runtime == "peft":
        supported: tuple[str, ...] = tuple(mods)
    elif cl.runtime in ("vllm", "sglang"):
        supported = PEFT_RUNTIME_MODULES
    else:
        supported = LLAMACPP_MODULES
    bad = [m for m in mods if m not in supported]
    cl.add("target modules", "fail" if bad else "ok",
           f"{', '.join(mods)}" + (f": {', '.join(bad)} not supported (supported: {', '.join(supported)})" if bad else " (all supported)"),
           f"generate with a checkpoint that targets only {', '.join(supported)}, or fold it into the base: t2l merge {cl.path} --into-base -o {cl.path.name}-merged" if bad else None)


def _check_scale(cl: Checklist, c: dict[str, Any], r: int, scale: float) -> None:
    """rsLoRA: which runtimes apply alpha/sqrt(r) as peft does."""
    rs = bool(c.get("use_rslora")) and r != 1
    if not rs:
        cl.add("scale", "ok", f"lora_alpha/r = {scale:.4g}, which every runtime applies")
    elif cl.runtime == "peft":
        cl.add("scale", "ok", f"use_rslora: peft applies alpha/sqrt(r) = {scale:.4g}")
    elif cl.runtime == "vllm":
        cl.add("scale", "warn", f"use_rslora: vLLM >= 0.7 (PEFTHelper) applies alpha/sqrt(r) = {scale:.4g}; older vLLM applied alpha/r "
               f"= {float(c['lora_alpha']) / r:.4g} ({math.sqrt(r):.2f}x too weak)", cl.export)
    elif cl.runtime == "sglang":
        cl.add("scale", "warn", f"use_rslora: check that your SGLang version applies alpha/sqrt(r) = {scale:.4g}; "
               f"a runtime that ignores it applies alpha/r = {float(c['lora_alpha']) / r:.4g}", cl.export)
    else:
        cl.add("scale", "fail", f"use_rslora is ignored by {'llama.cpp' if cl.runtime == 'llamacpp' else 'Ollama'}: it would apply alpha/r = "
               f"{float(c['lora_alpha']) / r:.4g} instead of {scale:.4g} ({math.sqrt(r):.2f}x too weak); an adapter written with "
               "`t2l generate ... --scaling folded` has the scale folded into lora_B and passes", cl.export)


def _check_keys(cl: Checklist, c: dict[str, Any]) -> None:
    """modules_to_save, DoRA and bias terms: only peft reads them."""
    problems = []
    if c.get("modules_to_save"):
        problems.append(f"modules_to_save={c['modules_to_save']}")
    if c.get("use_dora"):
        problems.append("use_dora=true (DoRA)")
    if str(c.get("bias", "none")) != "none":
        problems.append(f"bias={c.get('bias')}")
    if cl.runtime == "peft":
        cl.add("unsupported keys", "ok", "peft reads every LoraConfig key" + (f" ({', '.join(problems)})" if problems else ""))
    else:
        cl.add("unsupported keys", "fail" if problems else "ok",
               f"{', '.join(problems)} not supported by {cl.runtime}" if problems else "no modules_to_save, DoRA or bias terms; only lora_A/lora_B tensors",
               f"t2l merge {cl.path} --into-base -o {cl.path.name}-merged" if problems else None)


def _check_alpha_type(cl: Checklist, alpha: Any) -> None:
    """Ollama decodes lora_alpha as uint32: a JSON float fails."""
    ok = isinstance(alpha, int) and not isinstance(alpha, bool) and alpha >= 0
    cl.add("lora_alpha", "ok" if ok else "fail",
           f"lora_alpha = {alpha!r}" + ("" if ok else ": Ollama decodes it as an unsigned integer; a JSON float such as 16.0 fails"),
           None if ok else cl.export)


def _check_architecture(cl: Checklist, mtype: str | None, base: str | None) -> None:
    """llama.cpp / Ollama: the base's model type must have GGUF LoRA support."""
    if mtype is None:
        cl.add("architecture", "warn", f"cannot check: the base's config.json ({base}) is not available offline",
               f"{cl.export} --base-model DIR_WITH_CONFIG_JSON")
        return
    ok = mtype in GGUF_ARCH and (cl.runtime == "llamacpp" or mtype in OLLAMA_PEFT_TYPES)
    cl.add("architecture", "ok" if ok else "fail", f"base model type {mtype}" + ("" if ok else f" has no {cl.runtime} LoRA support"),
           None if ok else f"fold it into the base instead: t2l merge {cl.path} --into-base -o {cl.path.name}-merged")


def _check_base(cl: Checklist, base: str | None) -> None:
    """The base the adapter names: peft's AutoPeftModel must be able to load it."""
    if not base:
        cl.add("base model", "warn", "adapter_config.json names no base_model_name_or_path; the runtime must be started with the right base")
    elif cl.runtime == "peft" and str(base).count("/") != 1 and not Path(str(base)).expanduser().is_dir():
        from t2lcli.engine.adapters import hub_base_id

        hub = hub_base_id(str(base))
        cl.add("base model", "fail", f"base_model_name_or_path {base!r} is neither a Hub id (owner/name) nor a folder here: "
               "AutoPeftModelForCausalLM.from_pretrained cannot load the base",
               f"set base_model_name_or_path to {hub!r} in adapter_config.json" if hub != base else "set it to the base's Hub id")
    elif cl.runtime == "peft":
        cl.add("base model", "ok", f"{base} (AutoPeftModelForCausalLM loads it from the Hub or the local cache)")
