"""The engine behind `t2l merge`: one adapter in memory from a source, then one sink.

Sources (exactly one):
  * one PEFT adapter folder;
  * several adapter folders combined with a method (below);
  * several task descriptions mixed in the hypernetwork's task space (`--checkpoint` + `--description`).
Sinks (exactly one):
  * a PEFT adapter folder (the default when combining or mixing);
  * `--into-base`: a full transformers model folder with ΔW folded into the weights, streamed shard by shard;
  * `--export vllm|sglang|llamacpp|ollama` (see `t2lcli.engine.export`).

Scaling. Every source's effective scale s (alpha/sqrt(r) for rsLoRA, alpha/r otherwise) is folded into its B first,
so the maths below works on ΔW_i = s_i · B_i @ A_i. Every combined output is written with `use_rslora=false` and
`lora_alpha=r` (an integer), i.e. a scale of exactly 1.0 that peft, vLLM, SGLang, llama.cpp and Ollama all apply the
same way. (peft's `add_weighted_adapter` inherits `use_rslora` from the first source and so over-scales rsLoRA
sources by sqrt(r); that is the bug this module avoids.)

Combination methods, per target module, with weights w_i:
  * cat:    A = [A_1; …; A_n], B = [w_1 s_1 B_1, …, w_n s_n B_n]. Exactly Σ w_i ΔW_i, rank Σ r_i, original factors kept.
  * linear: exactly Σ w_i ΔW_i, re-factorised by an SVD of the concatenated factors into its numerical rank
            (at most Σ r_i; directions with σ < 1e-6·σ_max are dropped). Lossless; a single source with weight 1
            comes back as the same ΔW.
  * svd:    Σ w_i ΔW_i truncated to `--rank` (default max r_i) singular directions. Lossy; the relative Frobenius
            error is reported.
  * ties:   TIES-merging on ΔW: keep each ΔW_i's top `density` fraction of entries by magnitude (default 0.2),
            elect each entry's sign from Σ w_i ΔW_i, then take the w-weighted mean of the entries that agree with it
            (weights are relative importances: they must be ≥ 0 with a positive sum). Then SVD to `--rank`.
  * dare:   DARE on ΔW: drop each entry of ΔW_i with probability 1-density (default 0.5, seeded by `--seed`),
            rescale the rest by 1/density, then Σ w_i (…). Then SVD to `--rank`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from t2lcli import __version__
from t2lcli import models as registry
from t2lcli.engine.adapters import (  # noqa: F401  (fold_scale, write_peft, provenance_section: their home is adapters)
    WEIGHTS_NAME,
    Adapter,
    fold_scale,
    folded,
    load_adapter,
    peft_config,
    provenance_section,
    scale_one_config,
    tensors_sha256,
    write_peft,
)
from t2lcli.engine.atomic import atomic_dir, check_output_free
from t2lcli.errors import InputError, RankLimitError, ShapeMismatchError, T2LError, show_value  # noqa: F401  (re-exported)
from t2lcli.runtimes import MERGE_METHODS
from t2lcli.text import check_description

if TYPE_CHECKING:
    from t2lcli.hardware import Profile

METHODS = MERGE_METHODS
DEFAULT_DENSITY = {"ties": 0.2, "dare": 0.5}
RANK_TOL = 1e-6  # linear: singular values below RANK_TOL·σ_max are numerically zero
MIX_SPACE = "task-encoder output z (hypernet.encode), weights normalised to sum 1"


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


def _check_weights(method: str, weights: list[float]) -> None:
    if all(w == 0 for w in weights):
        raise InputError("all weights are zero: the result would be an empty adapter", hint="give at least one non-zero weight")
    if method == "ties":
        if any(w < 0 for w in weights):
            raise InputError("ties uses weights as relative importances: they must be >= 0", hint="use --method linear or dare for negative weights")
        if sum(weights) <= 0:
            raise InputError("ties needs a positive total weight")


def _base_key(name: str | None) -> str | None:
    if not name:
        return None
    entry = registry.lookup(name)
    return entry.name if entry is not None else str(name).rstrip("/")


# --------------------------------------------------------------------------------------------- factor algebra


def svd_from_factors(b: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of ΔW = B @ A without forming ΔW: QR of both factors, SVD of the small core (float64)."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.double().T)
    u, s, vh = torch.linalg.svd(rb @ ra.T, full_matrices=False)
    return qb @ u, s, vh @ qa.T


def svd_dense(dw: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank` SVD of a dense ΔW: exact for small matrices, randomized (niter 6) above 1024 on the short side."""
    if min(dw.shape) <= 1024:
        u, s, vh = torch.linalg.svd(dw.double(), full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    q = min(rank + 16, min(dw.shape))
    u, s, v = torch.svd_lowrank(dw.float(), q=q, niter=6)
    return u[:, :rank].double(), s[:rank].double(), v[:, :rank].T.double()


def split_usv(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors (A [rank, d_in], B [d_out, rank]) from an SVD, zero-padded when fewer directions exist."""
    k = min(rank, s.shape[0])
    root = s[:k].clamp(min=0).sqrt()
    b = torch.zeros(u.shape[0], rank, dtype=torch.float64)
    a = torch.zeros(rank, vh.shape[1], dtype=torch.float64)
    b[:, :k] = u[:, :k] * root
    a[:k] = root[:, None] * vh[:k]
    return a.float(), b.float()


def _trim(dw: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of entries by magnitude (TIES 'trim')."""
    k = max(1, int(round(density * dw.numel())))
    if k >= dw.numel():
        return dw
    thresh = dw.abs().flatten().kthvalue(dw.numel() - k + 1).values
    return dw * (dw.abs() >= thresh)


def ties_merge(deltas: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    trimmed = torch.stack([_trim(d, density) for d in deltas])
    w = torch.tensor(weights, dtype=trimmed.dtype).view(-1, 1, 1)
    elected = torch.sign((w * trimmed).sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    num = (w * trimmed * agree).sum(0)
    den = (w * agree).sum(0)
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num))


def dare_merge(deltas: list[torch.Tensor], weights: list[float], density: float, seed: int, salt: int) -> torch.Tensor:
    out = torch.zeros_like(deltas[0])
    for i, (d, w) in enumerate(zip(deltas, weights, strict=True)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + salt * 1009 + i)
        keep = torch.rand(d.shape, generator=g) < density
        out += w * d * keep / density
    return out


# --------------------------------------------------------------------------------------------- combine adapters


def check_compatible(adapters: list[Adapter], names: list[str], base_model: str | None) -> str | None:
    """Refuse different bases, target modules, layers or shapes. Returns the base name to record."""
    bases = [_base_key(a.config.get("base_model_name_or_path")) for a in adapters]
    if base_model is None and len(set(bases)) > 1:
        listed = "; ".join(f"{n} -> {b}" for n, b in zip(names, bases, strict=True))
        raise ShapeMismatchError(
            f"the adapters were made for different base models ({listed})",
            hint="combine adapters of one base; if these names denote the same model, pass --base-model NAME",
        )
    mods = [sorted(a.modules()) for a in adapters]
    if any(m != mods[0] for m in mods[1:]):
        listed = "; ".join(f"{n}: {','.join(m)}" for n, m in zip(names, mods, strict=True))
        raise ShapeMismatchError(f"the adapters target different modules ({listed})", hint="combine adapters with the same target_modules")
    ref = adapters[0]
    ref_shapes = {p: (ref.tensors[f"{p}.lora_B.weight"].shape[0], ref.tensors[f"{p}.lora_A.weight"].shape[1]) for p in ref.prefixes()}
    for a, n in zip(adapters[1:], names[1:], strict=True):
        shapes = {p: (a.tensors[f"{p}.lora_B.weight"].shape[0], a.tensors[f"{p}.lora_A.weight"].shape[1]) for p in a.prefixes()}
        if set(shapes) != set(ref_shapes):
            diff = sorted(set(shapes) ^ set(ref_shapes))
            raise ShapeMismatchError(f"{n} and {names[0]} adapt different layers (e.g. {diff[0]})", hint="combine adapters of one base model")
        bad = [p for p in shapes if shapes[p] != ref_shapes[p]]
        if bad:
            raise ShapeMismatchError(
                f"{n} and {names[0]} have different shapes at {bad[0]}: {shapes[bad[0]]} vs {ref_shapes[bad[0]]} (different base models)",
                hint="combine adapters of one base model",
            )
    return base_model or ref.config.get("base_model_name_or_path")


def combine(
    adapters: list[Adapter], weights: list[float], method: str, rank: int | None = None, density: float | None = None, seed: int = 0,
) -> tuple[dict[str, torch.Tensor], int, dict[str, Any]]:
    """Combine (already compatible) adapters. Returns (PEFT tensors at scale 1.0, rank, stats)."""
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'", hint=f"use one of: {', '.join(METHODS)}")
    _check_weights(method, weights)
    prefixes = adapters[0].prefixes()
    ranks = [a.r for a in adapters]
    stats: dict[str, Any] = {}
    if method == "cat":
        if rank is not None:
            raise InputError("--rank does not apply to --method cat (its rank is the sum of the sources' ranks)", hint="use --method svd --rank R")
        out: dict[str, torch.Tensor] = {}
        for p in prefixes:
            fs = [folded(a, p) for a in adapters]
            out[f"{p}.lora_A.weight"] = torch.cat([f[0] for f in fs], 0).contiguous()
            out[f"{p}.lora_B.weight"] = torch.cat([w * f[1] for w, f in zip(weights, fs, strict=True)], 1).contiguous()
        return out, sum(ranks), stats
    if method == "linear":
        if rank is not None:
            raise InputError("--rank does not apply to --method linear (it is lossless)", hint="use --method svd --rank R to truncate")
        svds = {}
        for p in prefixes:
            fs = [folded(a, p) for a in adapters]
            a_cat = torch.cat([f[0] for f in fs], 0)
            b_cat = torch.cat([w * f[1] for w, f in zip(weights, fs, strict=True)], 1)
            svds[p] = svd_from_factors(b_cat, a_cat)
        smax = max((float(s.max()) if s.numel() else 0.0) for _u, s, _v in svds.values())
        num_rank = max(int((s > RANK_TOL * max(float(s.max()), 1e-30)).sum()) for _u, s, _v in svds.values() if s.numel())
        if smax == 0.0:
            num_rank = 1
        out = {}
        for p, (u, s, vh) in svds.items():
            a_new, b_new = split_usv(u, s, vh, num_rank)
            out[f"{p}.lora_A.weight"], out[f"{p}.lora_B.weight"] = a_new.contiguous(), b_new.contiguous()
        stats["numerical_rank"] = num_rank
        return out, num_rank, stats
    # svd / ties / dare: a dense or factored target, then truncation to `rank`
    rank = rank or max(ranks)
    if rank < 1:
        raise InputError("--rank must be at least 1")
    if density is not None and not (0.0 < density <= 1.0):
        raise InputError(f"--density must be in (0, 1], got {density}")
    dens = density if density is not None else DEFAULT_DENSITY.get(method, 1.0)
    out = {}
    worst = 0.0
    for i, p in enumerate(prefixes):
        fs = [folded(a, p) for a in adapters]
        d_out, d_in = fs[0][1].shape[0], fs[0][0].shape[1]
        if rank > min(d_out, d_in):
            raise InputError(f"--rank {rank} exceeds the smallest dimension ({min(d_out, d_in)}) of {p}")
        if method == "svd":
            a_cat = torch.cat([f[0] for f in fs], 0)
            b_cat = torch.cat([w * f[1] for w, f in zip(weights, fs, strict=True)], 1)
            u, s, vh = svd_from_factors(b_cat, a_cat)
            total = float((s**2).sum())
            kept = float((s[:rank] ** 2).sum())
            err = math.sqrt(max(total - kept, 0.0) / total) if total > 0 else 0.0
        else:
            deltas = [f[1] @ f[0] for f in fs]
            target = ties_merge(deltas, weights, dens) if method == "ties" else dare_merge(deltas, weights, dens, seed, i)
            u, s, vh = svd_dense(target, rank)
            approx = (u * s) @ vh
            norm = float(target.double().norm())
            err = float((target.double() - approx).norm()) / norm if norm > 0 else 0.0
        worst = max(worst, err)
        a_new, b_new = split_usv(u, s, vh, rank)
        out[f"{p}.lora_A.weight"], out[f"{p}.lora_B.weight"] = a_new.contiguous(), b_new.contiguous()
    stats["max_relative_error"] = worst
    if method in ("ties", "dare"):
        stats["density"] = dens
    if method == "dare":
        stats["seed"] = seed
    return out, rank, stats


# --------------------------------------------------------------------------------------------- descriptions


def mix_descriptions(
    descriptions: list[str], weights: list[float], checkpoint: str | None, profile: Profile, base_model: str | None = None,
    trust_remote_code: bool = False,
) -> Adapter:
    """One adapter from a weighted average of the descriptions' task codes z = hypernet.encode(embedding).

    z is the hypernetwork's own task representation (the LayerNorm output of its task encoder), which every layer and
    module head consumes; the raw sentence embeddings are unit vectors whose average leaves the sphere the encoder was
    trained on. Weights are normalised to sum to 1, so `--weights 1,0` reproduces the first description exactly.
    """
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError("description weights must be >= 0 with a positive total (they are normalised to sum to 1)")
    from t2lcli.engine.generate import Generator, check_base_matches
    from t2lcli.engine.hypernet import lora_state_dict

    gen = Generator.load(
        checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype, encoder_device=profile.encoder.device,
        trust_remote_code=trust_remote_code, encoder_dtype=profile.encoder.dtype,
    )
    check_base_matches(gen.ckpt, base_model)
    emb = gen.embed(descriptions)
    net = gen.ckpt.hypernet
    dtype = next(net.parameters()).dtype
    total = sum(weights)
    w = torch.tensor([x / total for x in weights], dtype=torch.float32)
    with torch.no_grad():
        z = net.encode(emb.to(gen.device, dtype)).float()
        z_mix = (w.to(z.device)[:, None] * z).sum(0, keepdim=True).to(dtype)
        fac = {m: tuple(t.float().cpu() for t in net.generate_module(z_mix, m)) for m in net.config.target_modules}
    paths = {m: s.path for m, s in gen.ckpt.shape.modules.items()}
    c = gen.ckpt.config
    config = peft_config(c.r, c.lora_alpha, list(c.target_modules), gen.ckpt.base_model, use_rslora=True)
    label = " + ".join(f"{x / total:.3g}×“{d}”" for x, d in zip(weights, descriptions, strict=True) if x)
    meta = {
        "description": f"mix of {label}",
        "descriptions": list(descriptions),
        "weights": [x / total for x in weights],
        "mix_space": MIX_SPACE,
        "scaling": "rslora",
        "checkpoint": str(gen.ckpt.path) if gen.ckpt.path else None,
        "checkpoint_sha256": gen.ckpt.sha256,
        "encoder": gen.ckpt.encoder.model,
    }
    return Adapter(config, lora_state_dict(paths, fac, 0), meta)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- writing


def source_info(path: str, adapter: Adapter, weight: float | None = None) -> dict[str, Any]:
    wfile = Path(path) / WEIGHTS_NAME
    return {
        "path": str(Path(path).resolve()),
        "description": adapter.meta.get("description"),
        "r": adapter.r,
        "lora_alpha": adapter.config.get("lora_alpha"),
        "use_rslora": bool(adapter.config.get("use_rslora")),
        "effective_scale": round(adapter.scaling, 8),
        "weight": weight,
        "sha256": tensors_sha256(wfile) if wfile.is_file() else None,
    }


# --------------------------------------------------------------------------------------------- merge into base

_COPY_SUFFIXES = (".json", ".txt", ".model", ".jinja", ".tiktoken")
_SKIP_FILES = {"model.safetensors.index.json", "README.md", ".complete", "t2l_merge.json"}
_FLOAT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_DTYPE_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float64: "float64"}
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _base_weight_files(base_dir: Path) -> list[Path]:
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


def merge_into_base(
    adapter: Adapter, base_spec: str | None, out_dir: Path, dtype: str = "auto", max_shard_bytes: int = 2_000_000_000,
    force: bool = False, prov: dict[str, Any] | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Write base + scaling·B@A as a sharded safetensors model folder, one output shard in memory at a time.

    Reads tensors lazily (safetensors `safe_open`), never builds the model, computes W + ΔW in float32 and casts to
    `dtype` ("auto" keeps each tensor's stored dtype).
    """
    from safetensors import safe_open

    from t2lcli.engine.atomic import write_safetensors
    from t2lcli.engine.base_model import read_config, resolve_model, torch_dtype

    spec = base_spec or adapter.config.get("base_model_name_or_path")
    if not spec:
        raise InputError("the adapter does not name its base model", hint="pass --base-model NAME_OR_DIR")
    check_output_free(out_dir, force)
    base_dir = resolve_model(spec, "base")
    config = read_config(base_dir)
    files = _base_weight_files(base_dir)
    # plan: every tensor's (file, key, shape, dtype) from the headers only
    plan: list[tuple[Path, str, list[int], str]] = []
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                sl = fh.get_slice(k)
                plan.append((f, k, list(sl.get_shape()), sl.get_dtype()))
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
    out_dtype = None if dtype == "auto" else torch_dtype(dtype)

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
    n = len(shards)
    names = [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map: dict[str, str] = {}
    from t2lcli import console

    with atomic_dir(out_dir, force=force) as tmp, console.progress(transient=True) as bar:
        task = bar.add_task("merging shards", total=n) if progress else None
        for name, items in zip(names, shards, strict=True):
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
                        weight_map[k] = name
            write_safetensors(tensors, tmp / name)
            del tensors
            if task is not None:
                bar.advance(task)
        (tmp / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
        )
        copied = _copy_side_files(base_dir, tmp)
        cfg = dict(config)
        written_dtype = _DTYPE_NAME.get(out_dtype) if out_dtype is not None else (config.get("dtype") or config.get("torch_dtype"))
        if written_dtype:
            cfg["dtype"] = written_dtype
            cfg.pop("torch_dtype", None)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if not (tmp / "generation_config.json").is_file():
            gen_cfg = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
            (tmp / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
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
        (tmp / "t2l_merge.json").write_text(json.dumps(info, indent=2, ensure_ascii=False, default=str) + "\n")
        (tmp / "README.md").write_text(_merged_card(info, copied))
    return {"path": str(out_dir), "shards": n, "merged_modules": len(targets), "dtype": info["dtype"],
            "effective_scale": adapter.scaling, "total_size": total_size}


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


def _name_for(out: Path, given: str | None) -> str:
    name = given or out.name or "t2l-adapter"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "t2l-adapter"


def run_merge(req: MergeRequest, profile: Profile) -> dict[str, Any]:
    """Validate the request, build the adapter in memory, write the requested output. Returns a result dict."""
    from t2lcli.engine.export import RUNTIMES, export_adapter, precheck_export

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
    max_shard = parse_size(req.max_shard_size)
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

    prov: dict[str, Any] = {"tool": f"t2l {__version__}"}
    if req.descriptions:
        weights = parse_weights(req.weights, len(req.descriptions), "descriptions")
        adapter = mix_descriptions(req.descriptions, weights, req.checkpoint, profile, req.base_model, req.trust_remote_code)
        prov.update({"source": "descriptions", "mix_space": MIX_SPACE, "descriptions": req.descriptions,
                     "weights": adapter.meta["weights"], "checkpoint": adapter.meta.get("checkpoint"),
                     "checkpoint_sha256": adapter.meta.get("checkpoint_sha256")})
    else:
        weights = parse_weights(req.weights, len(req.adapters), "adapters") if (len(req.adapters) > 1 or req.weights) else [1.0]
        loaded = [load_adapter(p) for p in req.adapters]
        if len(loaded) == 1 and req.method is None:
            adapter = loaded[0]
            if req.weights:
                raise InputError("--weights needs several adapters (or --method) to apply to")
            prov.update({"source": "adapter", "sources": [source_info(req.adapters[0], adapter)]})
        else:
            method = req.method or "linear"
            base = check_compatible(loaded, req.adapters, req.base_model)
            tensors, r, stats = combine(loaded, weights, method, req.rank, req.density, req.seed)
            modules = sorted(loaded[0].modules())
            desc = " + ".join(f"{w:g}×“{a.meta.get('description') or p}”" for w, a, p in zip(weights, loaded, req.adapters, strict=True))
            meta = {"description": f"{method} combination of {desc}", "method": method, "weights": weights, **stats}
            adapter = Adapter(scale_one_config(r, modules, base), tensors, meta)
            prov.update({"source": "combination", "method": method, "weights": weights, "rank": r, **stats,
                         "sources": [source_info(p, a, w) for p, a, w in zip(req.adapters, loaded, weights, strict=True)]})
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
