"""Reports for `t2l inspect`: recognise a path (PEFT adapter, GGUF export, T2L checkpoint) and describe it; check an
adapter against a serving runtime's rules; compare many adapters (cosine similarity, 2-D projection plot).

ΔW = s·B@A is never materialised: per-block singular values come from the r×r core of two thin QRs, and
<ΔW₁, ΔW₂>_F = Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ) (r×r), so a Llama-8B adapter (64 blocks of 4096×4096) inspects in a blink.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path
from typing import Any

import torch

from t2lcli import console
from t2lcli.engine.checkpoint import SHIPPED, resolve_checkpoint
from t2lcli.engine.shapes import base_config
from t2lcli.errors import InputError, ShapeMismatchError
from t2lcli.runtimes import COMPAT_RUNTIMES

RUNTIMES = COMPAT_RUNTIMES
MAX_SIMILARITY = 64  # exact pairwise matrix; more adapters: use --plot (sketched)
MAX_PLOT = 1000  # points drawn; more are sampled (and the user is told)
SKETCH = 16  # per-block sketch U^T ΔW V of SKETCH x SKETCH for projections of many adapters
_LAYER = re.compile(r"\.layers\.(\d+)\.")


# ----------------------------------------------------------------------------------------------- recognise


def kind_of(path: Path) -> str:
    """'adapter', 'gguf-adapter' or 'checkpoint'.

    Raises:
        InputError: the path is none of these (what was expected is said).
    """
    if (path / "adapter_model.safetensors").is_file() and not (path / "hypermod.pt").exists():
        return "adapter"
    if (path / "t2l_config.json").is_file() or (path / "hypermod.pt").is_file():
        return "checkpoint"
    if (path / "adapter.gguf").is_file():
        return "gguf-adapter"
    if path.is_file():
        raise InputError(f"{path} is a file; t2l inspect reads folders",
                         hint="pass an adapter folder (adapter_config.json + adapter_model.safetensors), a checkpoint folder, or 'profile NAME'")
    raise InputError(
        f"{path} is not an adapter or a checkpoint: expected adapter_model.safetensors (PEFT adapter), adapter.gguf "
        "(t2l merge --export llamacpp/ollama), or t2l_config.json / hypermod.pt (T2L checkpoint)",
        hint="or inspect a profile: t2l inspect profile NAME",
    )


def _exists_or_hub(p: str) -> bool:
    return not Path(p).exists() and not p.startswith((".", "/", "~")) and p.count("/") >= 2


def inspect_paths(paths: list[str]) -> dict[str, Any] | list[dict[str, Any]]:
    """One report per path (a dict for one path, a list for several)."""
    reports = []
    for p in paths:
        if _exists_or_hub(p):
            reports.append(inspect_checkpoint(Path(p)))  # owner/repo/folder on the hub
            continue
        path = Path(p)
        if not path.exists() and p in SHIPPED:  # `t2l inspect default`, as --checkpoint default everywhere else
            path = resolve_checkpoint(p)
        if not path.exists():
            raise InputError(f"not found: {p}", hint="pass an adapter folder, a checkpoint folder, 'default', or 'profile NAME'")
        kind = kind_of(path)
        if kind == "adapter":
            reports.append(inspect_adapter(path))
        elif kind == "gguf-adapter":
            reports.append(inspect_gguf(path))
        else:
            reports.append(inspect_checkpoint(path))
    return reports[0] if len(reports) == 1 else reports


# ----------------------------------------------------------------------------------------------- adapters


def _blocks(adapter: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """prefix -> (A [r, d_in], s·B [d_out, r]) in float32, so that ΔW = B' @ A."""
    s = adapter.scaling
    return {p: (adapter.tensors[f"{p}.lora_A.weight"].float(), adapter.tensors[f"{p}.lora_B.weight"].float() * s) for p in adapter.prefixes()}


def singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Singular values of b @ a (b [m, r], a [r, n]) from the r×r core of thin QRs: BA = Qb (Rb Raᵀ) Qaᵀ."""
    _, rb = torch.linalg.qr(b.double())
    _, ra = torch.linalg.qr(a.double().T)
    return torch.linalg.svdvals(rb @ ra.T).float()


def effective_rank(s: torch.Tensor) -> float:
    """Entropy effective rank exp(H(s/Σs)) (Roy & Vetterli, 2007): r for a flat spectrum, 1 for a single direction."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _module_and_layer(prefix: str) -> tuple[str, int]:
    m = _LAYER.search(prefix + ".")
    return prefix.rsplit(".", 1)[1], int(m.group(1)) if m else -1


def inspect_adapter(path: Path) -> dict[str, Any]:
    """Everything about a PEFT LoRA folder: config, scale, per-layer/module ΔW norms and ranks, card, verdict."""
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(path)
    rows: list[dict[str, Any]] = []
    zero_blocks = 0
    total_sq = 0.0
    for prefix, (a, b) in _blocks(ad).items():
        mod, layer = _module_and_layer(prefix)
        s = singular_values(a, b)
        norm = float(s.pow(2).sum().sqrt())
        total_sq += norm**2
        tol = float(s.max()) * 1e-4 if float(s.max()) > 0 else 0.0
        if not bool((ad.tensors[f"{prefix}.lora_B.weight"] != 0).any()):
            zero_blocks += 1
        rows.append({"module": mod, "layer": layer, "norm": round(norm, 6), "effective_rank": round(effective_rank(s), 3),
                     "rank": int((s > tol).sum()) if tol > 0 else 0, "top_singular_value": round(float(s.max()), 6)})
    rows.sort(key=lambda r: (r["layer"], ad.modules().index(r["module"]) if r["module"] in ad.modules() else 99, r["module"]))
    per_module: dict[str, Any] = {}
    for mod in dict.fromkeys(r["module"] for r in rows):
        mine = [r for r in rows if r["module"] == mod]
        norms = [r["norm"] for r in mine]
        per_module[mod] = {
            "layers": len(mine), "mean_norm": round(sum(norms) / len(norms), 6), "min_norm": min(norms), "max_norm": max(norms),
            "mean_effective_rank": round(sum(r["effective_rank"] for r in mine) / len(mine), 3),
            "zero_layers": [r["layer"] for r in mine if r["norm"] == 0],
        }
    n = len(rows)
    if zero_blocks == n:
        verdict = {"no_op": True, "message": "NO-OP: every lora_B is all zeros, so ΔW = 0 and the adapter changes nothing"}
    elif zero_blocks:
        verdict = {"no_op": False, "message": f"partial: {zero_blocks} of {n} blocks have lora_B = 0 (those layers are unchanged)"}
    else:
        verdict = {"no_op": False, "message": f"live: ΔW ≠ 0 in all {n} blocks (total ‖ΔW‖_F = {math.sqrt(total_sq):.4g})"}
    c = ad.config
    n_params = sum(t.numel() for t in ad.tensors.values())
    return {
        "kind": "peft-adapter",
        "path": str(path),
        "base_model": c.get("base_model_name_or_path"),
        "r": ad.r,
        "lora_alpha": c.get("lora_alpha"),
        "use_rslora": bool(c.get("use_rslora")),
        "effective_scale": ad.scaling,
        "scale_rule": "alpha/sqrt(r) (rsLoRA)" if c.get("use_rslora") else "alpha/r",
        "target_modules": ad.modules(),
        "n_layers": ad.n_layers(),
        "dtype": sorted({str(t.dtype).replace("torch.", "") for t in ad.tensors.values()}),
        "parameters": n_params,
        "bytes": sum(t.numel() * t.element_size() for t in ad.tensors.values()),
        "modules_to_save": c.get("modules_to_save"),
        "use_dora": bool(c.get("use_dora")),
        "description": ad.meta.get("description"),
        "provenance": {k: v for k, v in ad.meta.items() if k != "description"},
        "model_card": (path / "README.md").is_file(),
        "delta_w": {"total_norm": round(math.sqrt(total_sq), 6), "per_module": per_module, "per_layer": rows},
        "verdict": verdict,
    }


def inspect_gguf(path: Path) -> dict[str, Any]:
    """A GGUF LoRA export (t2l merge --export llamacpp|ollama): its header keys and tensor count."""
    info = _gguf_info(path / "adapter.gguf")
    meta = {}
    if (path / "t2l_adapter.json").is_file():
        try:
            meta = json.loads((path / "t2l_adapter.json").read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
    return {"kind": "gguf-adapter", "path": str(path), **info, "modelfile": (path / "Modelfile").is_file(),
            "description": meta.get("description"), "provenance": {k: v for k, v in meta.items() if k != "description"}}


def _gguf_info(file: Path) -> dict[str, Any]:
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(file))
    except Exception as exc:  # a truncated or foreign file
        raise InputError(f"cannot read {file} as GGUF: {exc}") from None

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            return None
        value = f.parts[f.data[0]]
        return bytes(value).decode("utf-8", "replace") if value.dtype.kind == "u" and value.dtype.itemsize == 1 else value.tolist()[0]

    return {"gguf_type": field("general.type"), "adapter_type": field("adapter.type"), "arch": field("general.architecture"),
            "lora_alpha": field("adapter.lora.alpha"), "tensors": len(reader.tensors)}


def inspect_checkpoint(path: Path) -> dict[str, Any]:
    """A native or official T2L checkpoint: variant, size, encoder, base shapes, module order, provenance."""
    from t2lcli.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(str(path))
    d = ckpt.describe()
    frozen = sum(p.numel() for p in ckpt.hypernet.parameters() if not p.requires_grad)
    return {
        "kind": f"t2l-checkpoint ({ckpt.format})",
        **d,
        "module_order": list(ckpt.config.target_modules),
        "frozen_parameters": frozen,
        "base_shapes": {m: {"d_in": s.d_in, "d_out": s.d_out, "path": s.path} for m, s in ckpt.shape.modules.items()},
        "adapter_parameters": ckpt.config.n_layers * sum(ckpt.config.r * (i + o) for i, o in ckpt.config.module_dims.values()),
    }


# ----------------------------------------------------------------------------------------------- runtime compatibility


def compat_check(path: Path, runtime: str) -> dict[str, Any]:
    """A checklist of `runtime`'s known rules for the adapter at `path`; `compatible` is False if any check fails.

    Each check: {check, status: ok|warn|fail, detail, fix (a command, for failures and warnings)}.
    """
    from t2lcli.runtimes import GGUF_ARCH, PEFT_RUNTIME_MODULES, VLLM_MAX_LORA_RANKS, vllm_rank_flag

    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime '{runtime}'", hint=f"choose one of: {', '.join(RUNTIMES)}")
    kind = kind_of(path)
    if kind == "checkpoint":
        raise InputError(f"{path} is a T2L checkpoint, not an adapter; --compat checks adapters",
                         hint=f"generate one first: t2l generate \"...\" -c {path} -o out/x")
    out = f"{path.name or 'adapter'}-{runtime}"
    export = f"t2l merge {path} --export {runtime} -o {out}"
    checks: list[dict[str, Any]] = []

    def add(check: str, status: str, detail: str, fix: str | None = None) -> None:
        checks.append({"check": check, "status": status, "detail": detail, "fix": fix})

    if kind == "gguf-adapter":
        info = _gguf_info(path / "adapter.gguf")
        if runtime in ("llamacpp", "ollama"):
            ok = info["gguf_type"] == "adapter" and info["adapter_type"] == "lora"
            add("format", "ok" if ok else "fail", f"GGUF {info['gguf_type']}/{info['adapter_type']}, arch {info['arch']}, {info['tensors']} tensors",
                None if ok else "re-export from the PEFT folder: t2l merge ADAPTER --export llamacpp -o OUT")
            if runtime == "ollama":
                has = (path / "Modelfile").is_file()
                add("Modelfile", "ok" if has else "fail", "present (FROM base + ADAPTER ./adapter.gguf)" if has else "missing",
                    None if has else "t2l merge ADAPTER --export ollama -o OUT --runtime-base MODEL")
        else:
            add("format", "fail", f"{path} holds a GGUF adapter; {runtime} loads PEFT folders (adapter_config.json + adapter_model.safetensors)",
                "use the PEFT folder this was exported from")
        return _compat_result(path, runtime, checks)

    from t2lcli.engine.adapters import CONFIG_NAME, load_adapter

    ad = load_adapter(path)
    raw = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    c = ad.config
    r = ad.r
    mods = ad.modules() or sorted({_module_and_layer(p)[0] for p in ad.prefixes()})
    cfg = base_config(c.get("base_model_name_or_path"))
    mtype = None if cfg is None else str((cfg.get("text_config") or cfg).get("model_type", cfg.get("model_type")))

    # format
    if runtime in ("vllm", "sglang", "peft"):
        add("format", "ok", "PEFT folder (adapter_config.json + adapter_model.safetensors)")
    elif runtime == "llamacpp":
        add("format", "fail", "llama.cpp loads GGUF LoRA adapters (`--lora adapter.gguf`), not PEFT folders", export)
    else:
        add("format", "ok" if mtype in ("llama", "mistral", "gemma", "gemma2") else "warn",
            "Ollama's ADAPTER imports a PEFT safetensors folder for Llama/Mistral/Gemma bases, or a GGUF adapter",
            None if mtype in ("llama", "mistral", "gemma", "gemma2") else export)
    # rank
    if runtime == "vllm":
        flag = vllm_rank_flag(r)
        if flag is None:
            add("rank", "fail", f"rank {r} is over vLLM's largest max_lora_rank {VLLM_MAX_LORA_RANKS[-1]}",
                f"t2l merge {path} --method svd --rank {VLLM_MAX_LORA_RANKS[-1]} -o {path.name}-r{VLLM_MAX_LORA_RANKS[-1]}")
        else:
            note = "" if r <= 16 else f" (vLLM's default max_lora_rank 16 would refuse it: 'LoRA rank {r} is greater than max_lora_rank 16')"
            add("rank", "ok", f"rank {r}: start vLLM with --enable-lora --max-lora-rank {flag}{note}")
    elif runtime == "sglang":
        add("rank", "ok", f"rank {r}: SGLang sizes its LoRA buffers from the adapters given at start; pass --max-lora-rank {r} or more when adding adapters later")
    else:
        add("rank", "ok", f"rank {r}: no rank limit")
    # target modules
    if runtime == "peft":
        supported: tuple[str, ...] = tuple(mods)
    elif runtime in ("vllm", "sglang"):
        supported = PEFT_RUNTIME_MODULES
    else:
        supported = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    bad = [m for m in mods if m not in supported]
    add("target modules", "fail" if bad else "ok",
        f"{', '.join(mods)}" + (f": {', '.join(bad)} not supported (supported: {', '.join(supported)})" if bad else " (all supported)"),
        f"generate with a checkpoint that targets only {', '.join(supported)}, or fold it into the base: t2l merge {path} --into-base -o {path.name}-merged" if bad else None)
    # rsLoRA
    rs = bool(c.get("use_rslora")) and r != 1
    scale = ad.scaling
    if not rs:
        add("scale", "ok", f"lora_alpha/r = {scale:.4g}, which every runtime applies")
    elif runtime == "peft":
        add("scale", "ok", f"use_rslora: peft applies alpha/sqrt(r) = {scale:.4g}")
    elif runtime == "vllm":
        add("scale", "warn", f"use_rslora: vLLM >= 0.7 (PEFTHelper) applies alpha/sqrt(r) = {scale:.4g}; older vLLM applied alpha/r "
            f"= {float(c['lora_alpha']) / r:.4g} ({math.sqrt(r):.2f}x too weak)", export)
    elif runtime == "sglang":
        add("scale", "warn", f"use_rslora: check that your SGLang version applies alpha/sqrt(r) = {scale:.4g}; "
            f"a runtime that ignores it applies alpha/r = {float(c['lora_alpha']) / r:.4g}", export)
    else:
        add("scale", "fail", f"use_rslora is ignored by {'llama.cpp' if runtime == 'llamacpp' else 'Ollama'}: it would apply alpha/r = "
            f"{float(c['lora_alpha']) / r:.4g} instead of {scale:.4g} ({math.sqrt(r):.2f}x too weak); an adapter written with "
            "`t2l generate ... --scaling folded` has the scale folded into lora_B and passes", export)
    # unsupported keys
    problems = []
    if c.get("modules_to_save"):
        problems.append(f"modules_to_save={c['modules_to_save']}")
    if c.get("use_dora"):
        problems.append("use_dora=true (DoRA)")
    if str(c.get("bias", "none")) != "none":
        problems.append(f"bias={c.get('bias')}")
    if runtime == "peft":
        add("unsupported keys", "ok", "peft reads every LoraConfig key" + (f" ({', '.join(problems)})" if problems else ""))
    else:
        add("unsupported keys", "fail" if problems else "ok",
            f"{', '.join(problems)} not supported by {runtime}" if problems else "no modules_to_save, DoRA or bias terms; only lora_A/lora_B tensors",
            f"t2l merge {path} --into-base -o {path.name}-merged" if problems else None)
    # lora_alpha type (Ollama decodes it as uint32)
    if runtime == "ollama":
        alpha = raw.get("lora_alpha")
        ok = isinstance(alpha, int) and not isinstance(alpha, bool) and alpha >= 0
        add("lora_alpha", "ok" if ok else "fail",
            f"lora_alpha = {alpha!r}" + ("" if ok else ": Ollama decodes it as an unsigned integer; a JSON float such as 16.0 fails"),
            None if ok else export)
    # architecture
    if runtime in ("llamacpp", "ollama"):
        if mtype is None:
            add("architecture", "warn", f"cannot check: the base's config.json ({c.get('base_model_name_or_path')}) is not available offline",
                f"{export} --base-model DIR_WITH_CONFIG_JSON")
        else:
            ok = mtype in GGUF_ARCH and (runtime == "llamacpp" or mtype in ("llama", "mistral", "gemma", "gemma2"))
            add("architecture", "ok" if ok else "fail", f"base model type {mtype}" + ("" if ok else f" has no {runtime} LoRA support"),
                None if ok else f"fold it into the base instead: t2l merge {path} --into-base -o {path.name}-merged")
    # dtype
    dts = sorted({str(t.dtype).replace("torch.", "") for t in ad.tensors.values()})
    add("dtype", "ok", f"{', '.join(dts)}: " + ("cast to the model dtype at load" if runtime != "llamacpp" else "converted to F32 by the export"))
    base = c.get("base_model_name_or_path")
    if not base:
        add("base model", "warn", "adapter_config.json names no base_model_name_or_path; the runtime must be started with the right base",
            None)
    elif runtime == "peft" and str(base).count("/") != 1 and not Path(str(base)).expanduser().is_dir():
        from t2lcli.engine.adapters import hub_base_id

        hub = hub_base_id(str(base))
        add("base model", "fail", f"base_model_name_or_path {base!r} is neither a Hub id (owner/name) nor a folder here: "
            "AutoPeftModelForCausalLM.from_pretrained cannot load the base",
            f"set base_model_name_or_path to {hub!r} in adapter_config.json" if hub != base else "set it to the base's Hub id")
    elif runtime == "peft":
        add("base model", "ok", f"{base} (AutoPeftModelForCausalLM loads it from the Hub or the local cache)")
    return _compat_result(path, runtime, checks)


def _compat_result(path: Path, runtime: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "compat", "path": str(path), "runtime": runtime, "compatible": all(ch["status"] != "fail" for ch in checks),
            "checks": checks}


# ----------------------------------------------------------------------------------------------- many adapters


def expand_adapters(paths: list[str]) -> list[Path]:
    """Adapter folders from the arguments; a folder that holds adapter folders (t2l generate --from-file output) expands."""
    result: list[Path] = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise InputError(f"not found: {p}", hint="pass adapter folders (or a folder of adapter folders)")
        if (path / "adapter_model.safetensors").is_file():
            result.append(path)
            continue
        subs = sorted(d for d in path.iterdir() if d.is_dir() and (d / "adapter_model.safetensors").is_file()) if path.is_dir() else []
        if not subs:
            kind_of(path)  # raises with what was expected
            raise InputError(f"{p} is not a PEFT adapter folder", hint="--similarity and --plot compare PEFT adapter folders")
        result.extend(subs)
    seen: dict[Path, None] = {}
    for folder in result:
        seen.setdefault(folder.resolve(), None)
    if len(seen) < 2:
        raise InputError("--similarity and --plot need at least two adapters", hint="t2l inspect out/a out/b --similarity")
    return list(seen)


def _names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names


def _label_of(path: Path, meta: dict[str, Any]) -> str | None:
    for key in ("task", "label", "cluster"):
        if isinstance(meta.get(key), str):
            return meta[key]
    return None


def similarity(paths: list[str], space: str = "delta_w", trust_remote_code: bool = False) -> dict[str, Any]:
    """Cosine-similarity matrix of the adapters' flattened ΔW (exact, low-rank) or of their description embeddings.

    Raises:
        InputError: fewer than 2 or more than MAX_SIMILARITY adapters, unknown space, missing descriptions.
        ShapeMismatchError: adapters for different bases (same key, different shapes).
    """
    folders = expand_adapters(paths)
    if len(folders) > MAX_SIMILARITY:
        raise InputError(f"{len(folders)} adapters: the similarity matrix is limited to {MAX_SIMILARITY}",
                         hint="for many adapters draw a projection instead: --plot adapters.png")
    if space == "embedding":
        emb, metas, _ = _embeddings(folders, trust_remote_code)
        gram = emb.double() @ emb.double().T
    elif space == "delta_w":
        gram, metas = _delta_gram(folders)
    else:
        raise InputError(f"unknown --space '{space}'", hint="use delta_w (default) or embedding")
    m = _cosine(gram)
    result: dict[str, Any] = {"kind": "similarity", "space": space, "names": _names(folders), "paths": [str(p) for p in folders],
              "matrix": [[round(float(x), 4) for x in row] for row in m]}
    grouping = _task_labels(folders, metas)
    groups = _group_summary(m, _cosine(_center(gram)), *grouping) if grouping else None
    if groups is not None:
        result["groups"] = groups
    return result


def _task_labels(folders: list[Path], metas: list[dict[str, Any]]) -> tuple[list[str], str] | None:
    """Each adapter's task: its card's task/label when every adapter has one, else its folder when the adapters
    come from several folders (`t2l generate --from-file` output per task); None when neither tells them apart."""
    labels = [_label_of(f, m) for f, m in zip(folders, metas, strict=True)]
    if all(lab is not None for lab in labels):
        return [str(lab) for lab in labels], "task"
    if len({f.parent for f in folders}) > 1:
        return [f.parent.name for f in folders], "task folder"
    return None


def _cosine(gram: torch.Tensor) -> torch.Tensor:
    d = gram.diagonal().clamp(min=0).sqrt()
    denom = d[:, None] * d[None, :]
    return torch.where(denom > 0, gram / denom.clamp(min=1e-30), torch.zeros_like(gram)).clamp(-1, 1)


def _center(gram: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of the vectors minus their mean (H G H, H = I - 11ᵀ/n): what sets the adapters apart,
    without the part they all share (for T2L: the bias-HyperInit component every generated adapter carries)."""
    n = gram.shape[0]
    h = torch.eye(n, dtype=gram.dtype) - 1.0 / n
    return h @ gram @ h


def _group_summary(raw: torch.Tensor, centered: torch.Tensor, labels: list[str], by: str) -> dict[str, Any] | None:
    """Mean cosine over pairs from the same group vs pairs from different groups (raw and mean-centred)."""
    n = len(labels)
    same = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    diff = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] != labels[j]]
    if not same or not diff:
        return None

    def mean(mat: torch.Tensor, pairs: list[tuple[int, int]]) -> float:
        return round(sum(float(mat[i, j]) for i, j in pairs) / len(pairs), 4)

    return {"by": by, "labels": labels, "n_groups": len(set(labels)), "pairs_same": len(same), "pairs_different": len(diff),
            "same_mean": mean(raw, same), "different_mean": mean(raw, diff),
            "centered": {"same_mean": mean(centered, same), "different_mean": mean(centered, diff)}}


def _load_blocks(folder: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(folder)
    return _blocks(ad), ad.meta


def _delta_gram(folders: list[Path]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """(G, metas): G[i, j] = <ΔW_i, ΔW_j>_F summed over blocks (a block missing from one adapter contributes 0),
    and each adapter's card metadata."""
    pairs = [_load_blocks(f) for f in folders]
    loaded = [blocks for blocks, _ in pairs]
    for i, blocks in enumerate(loaded[1:], start=1):
        for key in set(blocks) & set(loaded[0]):
            (a0, b0), (a1, b1) = loaded[0][key], blocks[key]
            if a0.shape[1] != a1.shape[1] or b0.shape[0] != b1.shape[0]:
                raise ShapeMismatchError(
                    f"{folders[i]} and {folders[0]} have different shapes at {key} "
                    f"({tuple(b1.shape[:1]) + tuple(a1.shape[1:])} vs {tuple(b0.shape[:1]) + tuple(a0.shape[1:])}): adapters for different bases",
                    hint="compare adapters of the same base model",
                )
    n = len(loaded)
    g = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i, n):
            total = 0.0
            for key in set(loaded[i]) & set(loaded[j]):
                a1, b1 = loaded[i][key]
                a2, b2 = loaded[j][key]
                total += float(((b1.T.double() @ b2.double()) * (a1.double() @ a2.double().T)).sum())
            g[i, j] = g[j, i] = total
    return g, [meta for _, meta in pairs]


def _embeddings(folders: list[Path], trust_remote_code: bool) -> tuple[torch.Tensor, list[dict[str, Any]], str]:
    from dataclasses import replace

    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

    metas = [_read_meta(f) for f in folders]
    missing = [str(f) for f, m in zip(folders, metas, strict=True) if not isinstance(m.get("description"), str)]
    if missing:
        raise InputError(f"{len(missing)} adapter(s) carry no description: {', '.join(missing[:3])}",
                         hint="--space embedding needs adapters written by t2l generate (t2l_adapter.json); use --space delta_w")
    encoders = sorted({str(m.get("encoder") or "all-minilm-l6-v2") for m in metas})
    if len(encoders) > 1:
        console.warn(f"the adapters were generated with different encoders ({', '.join(encoders)}); embedding all with {encoders[0]}")
    spec = replace(encoder_spec_for(encoders[0]), trust_remote_code=trust_remote_code)
    enc = TextEncoder(spec)
    descs = [m["description"] for m in metas]
    emb = torch.cat([enc.embed(descs[i : i + 64]) for i in range(0, len(descs), 64)])
    return emb, metas, encoders[0]


def _read_meta(folder: Path) -> dict[str, Any]:
    f = folder / "t2l_adapter.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _sketch(blocks: dict[str, tuple[torch.Tensor, torch.Tensor]], keys: list[str], seed: int = 0) -> torch.Tensor:
    """Concatenated per-block sketches UᵀΔWV / SKETCH (Gaussian U, V fixed by `seed` and the block's shape):
    E<sketch(X), sketch(Y)> = <X, Y>, computed as (UᵀB)(AV) without forming ΔW."""
    parts: list[torch.Tensor | None] = []
    for key in keys:
        if key not in blocks:
            parts.append(None)
            continue
        a, b = blocks[key]
        g = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
        u = torch.randn(b.shape[0], SKETCH, generator=g)
        v = torch.randn(a.shape[1], SKETCH, generator=g)
        parts.append(((u.T @ b) @ (a @ v)).flatten() / SKETCH)
    width = next(p.numel() for p in parts if p is not None)
    return torch.cat([p if p is not None else torch.zeros(width) for p in parts])


def _pca2(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """2-D PCA coordinates of the rows of x and the explained-variance fractions of the two components."""
    x = x.double() - x.double().mean(0, keepdim=True)
    if x.shape[0] < 2 or float(x.abs().max()) == 0:
        return torch.zeros(x.shape[0], 2), [0.0, 0.0]
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    k = min(2, s.shape[0])
    coords = torch.zeros(x.shape[0], 2, dtype=torch.float64)
    coords[:, :k] = u[:, :k] * s[:k]
    var = (s**2) / float((s**2).sum())
    return coords.float(), [round(float(v), 4) for v in list(var[:2]) + [0.0] * (2 - k)]


def _kmeans(x: torch.Tensor, k: int, iters: int = 50) -> list[int]:
    """Plain k-means with farthest-point initialisation (deterministic)."""
    centers = [x[0]]
    for _ in range(1, k):
        d = torch.stack([((x - c) ** 2).sum(1) for c in centers]).min(0).values
        centers.append(x[int(d.argmax())])
    c = torch.stack(centers)
    assign = torch.zeros(x.shape[0], dtype=torch.long)
    for step in range(iters):
        new = torch.cdist(x, c).argmin(1)
        if step > 0 and bool((new == assign).all()):
            break
        assign = new
        for j in range(k):
            if bool((assign == j).any()):
                c[j] = x[assign == j].mean(0)
    return [int(a) for a in assign]


def plot_projection(paths: list[str], out: Path, space: str = "delta_w", clusters: int | None = None,
                    trust_remote_code: bool = False, seed: int = 0) -> dict[str, Any]:
    """Draw a 2-D PCA projection of many adapters (ΔW sketches or description embeddings), coloured by task or cluster.

    Labels: a `task`/`label` field in each t2l_adapter.json when all have one; else the parent folder when adapters
    come from several folders; else k-means clusters. Over MAX_PLOT adapters a random sample is drawn (and said).

    Raises:
        InputError: matplotlib missing (`pip install 't2lcli[plot]'`), bad space, unwritable output.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed",
                         hint="pip install 't2lcli[plot]'  (or: pip install matplotlib)") from None
    if space not in ("delta_w", "embedding"):
        raise InputError(f"unknown --space '{space}'", hint="use delta_w (default) or embedding")
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {out}: use a .png, .svg or .pdf file name")
    folders = expand_adapters(paths)
    total = len(folders)
    sampled = False
    if total > MAX_PLOT:
        g = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(total, generator=g)[:MAX_PLOT].tolist())
        folders = [folders[i] for i in keep]
        sampled = True
        console.warn(f"{total} adapters: plotting a random sample of {MAX_PLOT} (seed {seed})")
    if space == "embedding":
        feats, metas, enc = _embeddings(folders, trust_remote_code)
        method = f"PCA of description embeddings ({enc})"
    else:
        first, _ = _load_blocks(folders[0])
        keys = sorted(first)
        rows, metas = [], []
        with console.progress(transient=True) as bar:
            task = bar.add_task("sketching ΔW", total=len(folders))
            for f in folders:
                blocks, meta = _load_blocks(f)
                if sorted(blocks) != keys:
                    raise ShapeMismatchError(f"{f} has other blocks than {folders[0]}", hint="plot adapters of the same base and modules")
                rows.append(_sketch(blocks, keys, seed))
                metas.append(meta)
                bar.advance(task)
        feats = torch.stack(rows)
        method = f"PCA of flattened ΔW (Gaussian sketch {SKETCH}x{SKETCH} per block)"
    coords, var = _pca2(feats)
    grouping = _task_labels(folders, metas)
    if grouping:
        labels, label_kind = grouping
    else:
        k = clusters or max(2, min(8, round(math.sqrt(len(folders)))))
        k = min(k, len(folders))
        x = torch.nn.functional.normalize(feats.double(), dim=1).float()
        labels = [f"cluster {c + 1}" for c in _kmeans(x, k)]
        label_kind = f"k-means ({k} clusters, cosine)"
    names = _names(folders)
    _draw(plt, coords, labels, names, var, method, label_kind, out, total, sampled)
    return {"kind": "plot", "path": str(out), "adapters": total, "plotted": len(folders), "sampled": sampled, "space": space,
            "method": method, "labels": label_kind, "explained_variance": var,
            "points": [{"name": n, "label": lab, "x": round(float(c[0]), 5), "y": round(float(c[1]), 5)}
                       for n, lab, c in zip(names, labels, coords, strict=True)]}


def _draw(plt: Any, coords: torch.Tensor, labels: list[str], names: list[str], var: list[float], method: str,
          label_kind: str, out: Path, total: int, sampled: bool) -> None:
    groups = list(dict.fromkeys(labels))
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=150)
    for gi, grp in enumerate(groups):
        idx = [i for i, lab in enumerate(labels) if lab == grp]
        ax.scatter(coords[idx, 0].numpy(), coords[idx, 1].numpy(), s=46 if len(labels) <= 100 else 14, color=cmap(gi % cmap.N),
                   label=f"{grp} ({len(idx)})", alpha=0.85, edgecolors="white", linewidths=0.6)
    if len(names) <= 30:
        for i, name in enumerate(names):
            short = name if len(name) <= 28 else name[:26] + "…"
            ax.annotate(short, (float(coords[i, 0]), float(coords[i, 1])), xytext=(4, 4), textcoords="offset points", fontsize=7, alpha=0.8)
    ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({var[1]:.0%} of variance)")
    shown = f"{len(names)} of {total} adapters (random sample)" if sampled else f"{total} adapters"
    ax.set_title(f"T2L adapters: {shown}\n{method}", fontsize=10)
    ax.grid(True, alpha=0.25)
    ax.legend(title=label_kind, fontsize=8, title_fontsize=8, loc="best", frameon=True,
              ncol=1 if len(groups) <= 12 else 2)
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}", hint="choose a writable location") from None
    finally:
        plt.close(fig)
