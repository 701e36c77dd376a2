"""`t2l inspect --similarity`: expand adapter folders and compare them (cosine of flattened ΔW, or of their
description embeddings), with a same-task vs different-task summary when the adapters' tasks are known.

<ΔW₁, ΔW₂>_F = Σ (B₁ᵀB₂) ⊙ (A₁A₂ᵀ) (r×r), so ΔW is never formed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from t2lcli import console
from t2lcli.engine.inspect.reports import Blocks, _blocks, kind_of
from t2lcli.errors import InputError, ShapeMismatchError

MAX_SIMILARITY = 64  # exact pairwise matrix; more adapters: use --plot (sketched)


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
    """Display names: folder names, with the parent folder when two would read the same."""
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names


def _label_of(path: Path, meta: dict[str, Any]) -> str | None:
    """The task label a card carries (task, label or cluster), if any."""
    for key in ("task", "label", "cluster"):
        if isinstance(meta.get(key), str):
            return meta[key]
    return None


SPACES = ("delta_w", "embedding")  # commands/inspect.py checks the same names before torch is imported (a test)


def check_space(space: str) -> None:
    if space not in SPACES:
        raise InputError(f"unknown --space '{space}'", hint="use delta_w (default) or embedding")


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
        check_space(space)
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
    """Cosine similarities from a Gram matrix (0 where a vector is zero)."""
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


def _load_blocks(folder: Path) -> tuple[Blocks, dict[str, Any]]:
    """An adapter folder's ΔW blocks and its card metadata."""
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
    """The adapters' descriptions embedded with their (first) encoder: (embeddings, metas, encoder name)."""
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
    """t2l_adapter.json as a dict ({} when missing or unreadable)."""
    f = folder / "t2l_adapter.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}
