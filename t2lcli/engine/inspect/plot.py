"""`t2l inspect --plot`: a 2-D PCA projection of many adapters (Gaussian ΔW sketches or description embeddings),
coloured by task, folder or k-means cluster."""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import torch

from t2lcli import console
from t2lcli.engine.inspect.reports import Blocks
from t2lcli.engine.inspect.similarity import _embeddings, _load_blocks, _names, _task_labels, check_space, expand_adapters
from t2lcli.errors import InputError, ShapeMismatchError

MAX_PLOT = 1000  # points drawn; more are sampled (and the user is told)
SKETCH = 16  # per-block sketch U^T ΔW V of SKETCH x SKETCH for projections of many adapters


def _sketch(blocks: Blocks, keys: list[str], seed: int = 0) -> torch.Tensor:
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
    check_space(space)
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
    """The scatter plot, one colour per group, written to `out` (png, svg or pdf)."""
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
