"""`t2l merge --into-base`: a full transformers model folder with ΔW folded into the weights, streamed shard by shard.

Reads tensors lazily (safetensors `safe_open`), never builds the model, holds one output shard in memory at a time,
computes W + ΔW in float32 and casts to the requested dtype ("auto" keeps each tensor's stored dtype).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from t2lcli import __version__
from t2lcli.engine.adapters import Adapter, folded, provenance_section
from t2lcli.engine.atomic import atomic_dir, check_output_free
from t2lcli.errors import InputError, ShapeMismatchError, T2LError

_COPY_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_SKIP_FILES = {"model.safetensors.index.json", "README.md", ".complete", "t2l_merge.json"}
_FLOAT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}

Plan = list[tuple[Path, str, list[int], str]]  # every base tensor's (file, key, shape, safetensors dtype)


def _base_weight_files(base_dir: Path) -> list[Path]:
    """The base's safetensors files, in index order; a clear error for pickle-only or empty folders."""
    index = base_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (ValueError, KeyError) as exc:
            raise T2LError(f"cannot read {index}: {exc}") from None
        return [base_dir / f for f in dict.fromkeys(wm.values())]
    single = base_dir / "model.safetensors"
    if single.is_file():
        return [single]
    if any(base_dir.glob("*.bin")):
        raise T2LError(f"{base_dir} holds only pickle (.bin) weights; t2l reads safetensors only",
                       hint="convert the base to safetensors first (save_pretrained(..., safe_serialization=True))")
    raise T2LError(f"no safetensors weights in {base_dir}", hint="pass --base-model with a transformers model folder")


def _read_plan(files: list[Path]) -> Plan:
    """Every tensor's (file, key, shape, dtype), from the headers only."""
    from safetensors import safe_open

    plan: Plan = []
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                sl = fh.get_slice(k)
                plan.append((f, k, list(sl.get_shape()), sl.get_dtype()))
    return plan


def _match_targets(adapter: Adapter, plan: Plan, spec: str) -> dict[str, str]:
    """Base weight key -> adapter module prefix, for every adapted module; refuses any that does not fit."""
    keys = {k: (shape, dt) for _f, k, shape, dt in plan}
    targets: dict[str, str] = {}
    problems = []
    by_suffix: dict[str, list[str]] = {}
    for k in keys:
        if ".layers." in k:
            by_suffix.setdefault("layers." + k.split(".layers.", 1)[1], []).append(k)
    for p in adapter.prefixes():
        wkey = p[len("base_model.model."):] + ".weight"
        if wkey not in keys and ".layers." in wkey:
            # e.g. a multimodal checkpoint storing the text model under model.language_model.layers.N…
            alt = by_suffix.get("layers." + wkey.split(".layers.", 1)[1], [])
            wkey = alt[0] if len(alt) == 1 else wkey
        a, b = adapter.tensors[f"{p}.lora_A.weight"], adapter.tensors[f"{p}.lora_B.weight"]
        if wkey not in keys:
            problems.append(f"{wkey} is not in the base")
        elif keys[wkey][0] != [b.shape[0], a.shape[1]]:
            problems.append(f"{wkey} is {keys[wkey][0]} in the base but the adapter's ΔW is {[b.shape[0], a.shape[1]]}")
        elif keys[wkey][1] not in _FLOAT:
            problems.append(f"{wkey} is stored as {keys[wkey][1]} (quantized?); merging needs float weights")
        else:
            targets[wkey] = p
    if problems:
        raise ShapeMismatchError(f"the adapter does not fit {spec}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                                 hint="pass the adapter's own base with --base-model")
    return targets


def _plan_shards(plan: Plan, out_dtype: torch.dtype | None, max_shard_bytes: int) -> tuple[list[list[tuple[Path, str]]], int]:
    """Output shards (lists of (file, key)) of at most `max_shard_bytes` each, and the total size in bytes."""

    def out_bytes(shape: list[int], dt: str) -> int:
        n = math.prod(shape) if shape else 1
        if dt in _FLOAT and out_dtype is not None:
            return n * torch.tensor([], dtype=out_dtype).element_size()
        return n * _BYTES.get(dt, 4)

    shards: list[list[tuple[Path, str]]] = [[]]
    size = 0
    total_size = 0
    for f, k, shape, dt in plan:
        nb = out_bytes(shape, dt)
        if shards[-1] and size + nb > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((f, k))
        size += nb
        total_size += nb
    return shards, total_size


def _merged_shard(items: list[tuple[Path, str]], adapter: Adapter, targets: dict[str, str], out_dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """One output shard's tensors: W + s·B@A for adapted weights, the rest cast (floats) or kept."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for f, k in items:
        by_file.setdefault(f, []).append(k)
    for f, ks in by_file.items():
        # opened per output shard, so the source's memory map never stays resident beyond one shard
        with safe_open(str(f), framework="pt") as fh:
            for k in ks:
                t = fh.get_tensor(k)
                if k in targets:
                    a, b = folded(adapter, targets[k])
                    t = (t.float() + b @ a).to(out_dtype or t.dtype)
                elif out_dtype is not None and t.is_floating_point():
                    t = t.to(out_dtype)
                tensors[k] = t.contiguous()
    return tensors


def merge_into_base(
    adapter: Adapter, base_spec: str | None, out_dir: Path, dtype: str = "auto", max_shard_bytes: int = 2_000_000_000,
    force: bool = False, prov: dict[str, Any] | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Write base + scaling·B@A as a sharded safetensors model folder, one output shard in memory at a time."""
    from t2lcli import console
    from t2lcli.engine.atomic import write_safetensors
    from t2lcli.engine.base_model import read_config, resolve_model, torch_dtype

    spec = base_spec or adapter.config.get("base_model_name_or_path")
    if not spec:
        raise InputError("the adapter does not name its base model", hint="pass --base-model NAME_OR_DIR")
    check_output_free(out_dir, force)
    base_dir = resolve_model(spec, "base")
    config = read_config(base_dir)
    plan = _read_plan(_base_weight_files(base_dir))
    targets = _match_targets(adapter, plan, spec)
    out_dtype = None if dtype == "auto" else torch_dtype(dtype)
    shards, total_size = _plan_shards(plan, out_dtype, max_shard_bytes)
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    with atomic_dir(out_dir, force=force) as tmp, console.progress(transient=True) as bar:
        task = bar.add_task("merging shards", total=n) if progress else None
        for name, items in zip(names, shards, strict=True):
            tensors = _merged_shard(items, adapter, targets, out_dtype)
            weight_map.update(dict.fromkeys(tensors, name))
            write_safetensors(tensors, tmp / name)
            del tensors
            if task is not None:
                bar.advance(task)
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
        )
        written_dtype = _DTYPE_NAME.get(out_dtype) if out_dtype is not None else (config.get("dtype") or config.get("torch_dtype"))
        info = {
            "kind": "merged-model",
            "base_model": str(spec),
            "base_path": str(base_dir),
            "dtype": written_dtype or "as stored",
            "shards": n,
            "merged_modules": len(targets),
            "effective_scale": adapter.scaling,
            "adapter_r": adapter.r,
            "adapter_lora_alpha": adapter.config.get("lora_alpha"),
            "adapter_use_rslora": bool(adapter.config.get("use_rslora")),
            "description": adapter.meta.get("description"),
            "tool": f"t2l {__version__}",
            **(prov or {}),
        }
        _write_side_files(base_dir, tmp, config, written_dtype, info)
    return {"path": str(out_dir), "shards": n, "merged_modules": len(targets), "dtype": info["dtype"],
            "effective_scale": adapter.scaling, "total_size": total_size}


def _write_side_files(base_dir: Path, tmp: Path, config: dict[str, Any], written_dtype: str | None, info: dict[str, Any]) -> None:
    """The base's tokenizer/side files, config.json (with the written dtype), generation_config, provenance, card."""
    copied = _copy_side_files(base_dir, tmp)
    cfg = dict(config)
    if written_dtype:
        cfg["dtype"] = written_dtype
        cfg.pop("torch_dtype", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if not (tmp / "generation_config.json").is_file():
        gen_cfg = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
        (tmp / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    (tmp / "t2l_merge.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")
    (tmp / "README.md").write_text(_merged_card(info, copied))


def _copy_side_files(base_dir: Path, dest: Path) -> list[str]:
    import shutil

    copied = []
    for f in sorted(base_dir.iterdir()):
        if not f.is_file() or f.name in _SKIP_FILES or f.name.startswith("."):
            continue
        if f.suffix in _COPY_SUFFIXES and f.name != "config.json" and f.stat().st_size < 200_000_000:
            shutil.copy2(f, dest / f.name)
            copied.append(f.name)
    return copied


def _merged_card(info: dict[str, Any], copied: list[str]) -> str:
    lines = [
        "---",
        f"base_model: {info['base_model']}",
        "library_name: transformers",
        "tags: [lora, merged, text-to-lora, t2l]",
        "---",
        "",
        "# Merged model (T2L adapter folded into the base)",
        "",
        f"W' = W + {info['effective_scale']:.6g} · B @ A for {info['merged_modules']} linear layers "
        f"(adapter r={info['adapter_r']}, lora_alpha={info['adapter_lora_alpha']}, use_rslora={info['adapter_use_rslora']}).",
        "Load it like any transformers model; no peft needed:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER')",
        "tok = AutoTokenizer.from_pretrained('THIS_FOLDER')",
        "```",
        "",
        f"Copied from the base: {', '.join(copied) if copied else 'nothing'}.",
        "",
    ]
    return "\n".join(lines) + "\n" + provenance_section(info)


# --------------------------------------------------------------------------------------------- the one entry point
