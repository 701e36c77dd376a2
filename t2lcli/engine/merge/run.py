"""`run_merge`: the entry point of `t2l merge` — one adapter in memory from a source, then one sink.

Sources (exactly one):
  * one PEFT adapter folder;
  * several adapter folders combined with a method (`algebra.py`);
  * several task descriptions mixed in the hypernetwork's task space (`--checkpoint` + `--description`, `sources.py`).
Sinks (exactly one):
  * a PEFT adapter folder (the default when combining or mixing);
  * `--into-base`: a full transformers model folder with ΔW folded into the weights, streamed shard by shard
    (`into_base.py`);
  * `--export vllm|sglang|llamacpp|ollama` (`export.py`).

Scaling. Every combined output is written with `use_rslora=false` and `lora_alpha=r` (an integer), i.e. a scale of
exactly 1.0 that peft, vLLM, SGLang, llama.cpp and Ollama all apply the same way. (peft's `add_weighted_adapter`
inherits `use_rslora` from the first source and so over-scales rsLoRA sources by sqrt(r); that is the bug this
package avoids.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2lcli import __version__
from t2lcli.engine.adapters import Adapter, load_adapter, scale_one_config, write_peft
from t2lcli.engine.atomic import check_output_free
from t2lcli.engine.merge.algebra import METHODS, combine
from t2lcli.engine.merge.export import RUNTIMES, export_adapter, precheck_export
from t2lcli.engine.merge.into_base import merge_into_base
from t2lcli.engine.merge.sources import MIX_SPACE, check_compatible, mix_descriptions, source_info
from t2lcli.errors import InputError, show_value
from t2lcli.text import check_description

if TYPE_CHECKING:
    from t2lcli.hw_profiles import Profile


@dataclass
class MergeRequest:
    """Everything `t2l merge` was asked to do (validated by `run_merge`)."""

    adapters: list[str] = field(default_factory=list)
    output: Path | None = None
    into_base: bool = False
    export: str | None = None
    method: str | None = None
    weights: str | None = None  # "0.5,0.3,0.2"
    rank: int | None = None
    density: float | None = None
    seed: int = 0
    checkpoint: str | None = None
    descriptions: list[str] = field(default_factory=list)
    base_model: str | None = None
    dtype: str | None = None  # into-base output dtype; None = the profile's base dtype ("auto" keeps the source's)
    max_shard_size: str = "2GB"
    max_lora_rank: int | None = None
    name: str | None = None
    runtime_base: str | None = None
    force: bool = False
    trust_remote_code: bool = False


# --------------------------------------------------------------------------------------------- validation helpers


def parse_weights(text: str | None, n: int, what: str) -> list[float]:
    """`"0.5,0.3"` -> [0.5, 0.3]; None -> equal weights 1/n. Raises InputError on count or number problems."""
    if text is None or not text.strip():
        return [1.0 / n] * n
    parts = [p.strip() for p in text.split(",")]
    vals: list[float] = []
    for p in parts:
        try:
            v = float(p)
        except ValueError:
            raise InputError(f"--weights: {show_value(p)} is not a number", hint="give comma-separated numbers, e.g. --weights 0.7,0.3") from None
        if not math.isfinite(v):
            raise InputError(f"--weights: {show_value(p)} is not a finite number")
        vals.append(v)
    if len(vals) != n:
        raise InputError(f"--weights has {len(vals)} value(s) but there are {n} {what}", hint=f"give exactly {n} comma-separated weights")
    return vals


def parse_size(text: str) -> int:
    """'2GB', '500MB', '10KB' or a plain byte count -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*", text.upper())
    if not m:
        raise InputError(f"--max-shard-size: cannot read {show_value(text)}", hint="e.g. 2GB, 500MB")
    mult = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    unit = m.group(2) or ""
    if unit not in mult:
        raise InputError(f"--max-shard-size: unknown unit in {show_value(text)}", hint="use B, KB, MB, GB (or KiB, MiB, GiB)")
    value = float(m.group(1)) * mult[unit]
    if not math.isfinite(value) or value >= 2**63:
        raise InputError(f"--max-shard-size: {show_value(text)} is too large", hint="e.g. 2GB, 500MB")
    size = int(value)
    if size <= 0:
        raise InputError("--max-shard-size must be positive")
    return size


def _name_for(out: Path, given: str | None) -> str:
    name = given or out.name or "t2l-adapter"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "t2l-adapter"



def _check_request(req: MergeRequest) -> Path:
    """Refuse contradictory or incomplete requests before anything is loaded. Returns the output folder."""
    if req.output is None:
        raise InputError("give an output folder with -o/--output")
    out = Path(req.output)
    check_output_free(out, req.force)
    if req.into_base and req.export:
        raise InputError("choose one of --into-base and --export")
    if req.export is not None and req.export not in RUNTIMES:
        raise InputError(f"unknown export target '{req.export}'", hint=f"use one of: {', '.join(RUNTIMES)}")
    if req.method is not None and req.method not in METHODS:
        raise InputError(f"unknown method '{req.method}'", hint=f"use one of: {', '.join(METHODS)}")
    if req.rank is not None and req.rank < 1:
        raise InputError("--rank must be at least 1")
    if req.density is not None and not (0.0 < req.density <= 1.0):
        raise InputError(f"--density must be in (0, 1], got {req.density}")
    if req.density is not None and (req.method or "linear") not in ("ties", "dare"):
        raise InputError("--density applies only to --method ties or dare")
    if req.dtype is not None and not req.into_base:
        raise InputError("--dtype applies only to --into-base (adapters are written in float32)")
    if (req.max_lora_rank is not None or req.runtime_base is not None) and req.export is None:
        raise InputError("--max-lora-rank and --runtime-base apply only to --export")
    return out


def _check_sources(req: MergeRequest) -> None:
    """Exactly one kind of source, and something to do with it."""
    if req.descriptions and req.adapters:
        raise InputError("give adapter folders or --description texts, not both")
    if not req.descriptions and not req.adapters:
        raise InputError("nothing to merge: give ADAPTER folder(s), or --checkpoint with --description texts", hint="see t2l merge --help")
    if req.descriptions and req.method is not None:
        raise InputError("--method applies to adapters; descriptions are mixed in the hypernetwork's task space", hint="drop --method")
    for d in req.descriptions:
        check_description(d, "--description")  # the one rule (t2lcli.text)
    if req.export is not None:
        precheck_export(req.export, req.max_lora_rank)
    if req.adapters and len(req.adapters) == 1 and req.method is None and not (req.into_base or req.export):
        raise InputError("nothing to do with one adapter", hint="add --into-base, --export TARGET, more adapters, or --method svd --rank R")


def _build_adapter(req: MergeRequest, profile: Profile, prov: dict[str, Any]) -> Adapter:
    """The one adapter in memory, from descriptions, one folder or a combination; `prov` gains what it came from."""
    if req.descriptions:
        weights = parse_weights(req.weights, len(req.descriptions), "descriptions")
        adapter = mix_descriptions(req.descriptions, weights, req.checkpoint, profile, req.base_model, req.trust_remote_code)
        prov.update({"source": "descriptions", "mix_space": MIX_SPACE, "descriptions": req.descriptions,
                     "weights": adapter.meta["weights"], "checkpoint": adapter.meta.get("checkpoint"),
                     "checkpoint_sha256": adapter.meta.get("checkpoint_sha256")})
        return adapter
    weights = parse_weights(req.weights, len(req.adapters), "adapters") if (len(req.adapters) > 1 or req.weights) else [1.0]
    loaded = [load_adapter(p) for p in req.adapters]
    if len(loaded) == 1 and req.method is None:
        if req.weights:
            raise InputError("--weights needs several adapters (or --method) to apply to")
        prov.update({"source": "adapter", "sources": [source_info(req.adapters[0], loaded[0])]})
        return loaded[0]
    method = req.method or "linear"
    base = check_compatible(loaded, req.adapters, req.base_model)
    tensors, r, stats = combine(loaded, weights, method, req.rank, req.density, req.seed)
    modules = sorted(loaded[0].modules())
    desc = " + ".join(f"{w:g}×“{a.meta.get('description') or p}”" for w, a, p in zip(weights, loaded, req.adapters, strict=True))
    meta = {"description": f"{method} combination of {desc}", "method": method, "weights": weights, **stats}
    prov.update({"source": "combination", "method": method, "weights": weights, "rank": r, **stats,
                 "sources": [source_info(p, a, w) for p, a, w in zip(req.adapters, loaded, weights, strict=True)]})
    return Adapter(scale_one_config(r, modules, base), tensors, meta)


def run_merge(req: MergeRequest, profile: Profile) -> dict[str, Any]:
    """Validate the request, build the adapter in memory, write the requested output. Returns a result dict."""
    out = _check_request(req)
    max_shard = parse_size(req.max_shard_size)
    _check_sources(req)
    prov: dict[str, Any] = {"tool": f"t2l {__version__}"}
    adapter = _build_adapter(req, profile, prov)
    prov["effective_scale"] = adapter.scaling

    if req.into_base:
        res = merge_into_base(adapter, req.base_model, out, req.dtype or profile.base.dtype, max_shard, req.force, prov)
        return {"kind": "merged-model", **res}
    if req.export is not None:
        return export_adapter(adapter, req.export, out, name=_name_for(out, req.name), base_model=req.base_model,
                              runtime_base=req.runtime_base, max_lora_rank=req.max_lora_rank, force=req.force, prov=prov)
    write_peft(adapter, out, req.force, prov)
    return {"kind": "peft-adapter", "path": str(out), "r": adapter.r, "lora_alpha": adapter.config.get("lora_alpha"),
            "use_rslora": bool(adapter.config.get("use_rslora")), "effective_scale": adapter.scaling,
            **{k: v for k, v in prov.items() if k in ("method", "weights", "max_relative_error", "numerical_rank", "density", "seed", "mix_space")}}
