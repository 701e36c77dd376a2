"""The pure factor algebra of `t2l merge`: combining compatible LoRA adapters at scale 1.0 (no I/O, no CLI).

Every source's effective scale s is folded into its B first (`adapters.folded`), so the maths works on
ΔW_i = s_i · B_i @ A_i. Methods, per target module, with weights w_i:
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

import math
from typing import Any

import torch

from t2lcli.engine.adapters import Adapter, folded
from t2lcli.errors import InputError
from t2lcli.runtimes import MERGE_METHODS

METHODS = MERGE_METHODS
DEFAULT_DENSITY = {"ties": 0.2, "dare": 0.5}
RANK_TOL = 1e-6  # linear: singular values below RANK_TOL·σ_max are numerically zero


def _check_weights(method: str, weights: list[float]) -> None:
    """Refuse weights the method cannot use (all zero; negative or non-positive total for ties)."""
    if all(w == 0 for w in weights):
        raise InputError("all weights are zero: the result would be an empty adapter", hint="give at least one non-zero weight")
    if method == "ties":
        if any(w < 0 for w in weights):
            raise InputError("ties uses weights as relative importances: they must be >= 0", hint="use --method linear or dare for negative weights")
        if sum(weights) <= 0:
            raise InputError("ties needs a positive total weight")


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
    """TIES on dense ΔWs: trim each to its top `density`, elect signs, w-weighted mean of the agreeing entries."""
    trimmed = torch.stack([_trim(d, density) for d in deltas])
    w = torch.tensor(weights, dtype=trimmed.dtype).view(-1, 1, 1)
    elected = torch.sign((w * trimmed).sum(0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    num = (w * trimmed * agree).sum(0)
    den = (w * agree).sum(0)
    return torch.where(den > 0, num / den.clamp(min=1e-30), torch.zeros_like(num))


def dare_merge(deltas: list[torch.Tensor], weights: list[float], density: float, seed: int, salt: int) -> torch.Tensor:
    """DARE on dense ΔWs: drop entries with probability 1-density (seeded per module and source), rescale, Σ w_i."""
    out = torch.zeros_like(deltas[0])
    for i, (d, w) in enumerate(zip(deltas, weights, strict=True)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + salt * 1009 + i)
        keep = torch.rand(d.shape, generator=g) < density
        out += w * d * keep / density
    return out


Factors = dict[str, torch.Tensor]


def _weighted_cat(adapters: list[Adapter], weights: list[float], p: str) -> tuple[torch.Tensor, torch.Tensor]:
    """[A_1; …; A_n] and [w_1 s_1 B_1, …, w_n s_n B_n] at module prefix `p`: their product is exactly Σ w_i ΔW_i."""
    fs = [folded(a, p) for a in adapters]
    return torch.cat([f[0] for f in fs], 0), torch.cat([w * f[1] for w, f in zip(weights, fs, strict=True)], 1)


def _cat(adapters: list[Adapter], weights: list[float]) -> tuple[Factors, int, dict[str, Any]]:
    out: Factors = {}
    for p in adapters[0].prefixes():
        a_cat, b_cat = _weighted_cat(adapters, weights, p)
        out[f"{p}.lora_A.weight"], out[f"{p}.lora_B.weight"] = a_cat.contiguous(), b_cat.contiguous()
    return out, sum(a.r for a in adapters), {}


def _linear(adapters: list[Adapter], weights: list[float]) -> tuple[Factors, int, dict[str, Any]]:
    svds = {}
    for p in adapters[0].prefixes():
        a_cat, b_cat = _weighted_cat(adapters, weights, p)
        svds[p] = svd_from_factors(b_cat, a_cat)
    smax = max((float(s.max()) if s.numel() else 0.0) for _u, s, _v in svds.values())
    num_rank = max(int((s > RANK_TOL * max(float(s.max()), 1e-30)).sum()) for _u, s, _v in svds.values() if s.numel())
    if smax == 0.0:
        num_rank = 1
    out: Factors = {}
    for p, (u, s, vh) in svds.items():
        a_new, b_new = split_usv(u, s, vh, num_rank)
        out[f"{p}.lora_A.weight"], out[f"{p}.lora_B.weight"] = a_new.contiguous(), b_new.contiguous()
    return out, num_rank, {"numerical_rank": num_rank}


def _truncated(
    adapters: list[Adapter], weights: list[float], method: str, rank: int, dens: float, seed: int,
) -> tuple[Factors, int, dict[str, Any]]:
    """svd / ties / dare: a factored (svd) or dense (ties, dare) target per module, truncated to `rank` directions."""
    out: Factors = {}
    worst = 0.0
    for i, p in enumerate(adapters[0].prefixes()):
        fs = [folded(a, p) for a in adapters]
        d_out, d_in = fs[0][1].shape[0], fs[0][0].shape[1]
        if rank > min(d_out, d_in):
            raise InputError(f"--rank {rank} exceeds the smallest dimension ({min(d_out, d_in)}) of {p}")
        if method == "svd":
            a_cat, b_cat = _weighted_cat(adapters, weights, p)
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
    stats: dict[str, Any] = {"max_relative_error": worst}
    if method in ("ties", "dare"):
        stats["density"] = dens
    if method == "dare":
        stats["seed"] = seed
    return out, rank, stats


def combine(
    adapters: list[Adapter], weights: list[float], method: str, rank: int | None = None, density: float | None = None, seed: int = 0,
) -> tuple[Factors, int, dict[str, Any]]:
    """Combine (already compatible) adapters. Returns (PEFT tensors at scale 1.0, rank, stats)."""
    if method not in METHODS:
        raise InputError(f"unknown method '{method}'", hint=f"use one of: {', '.join(METHODS)}")
    _check_weights(method, weights)
    if method == "cat":
        if rank is not None:
            raise InputError("--rank does not apply to --method cat (its rank is the sum of the sources' ranks)", hint="use --method svd --rank R")
        return _cat(adapters, weights)
    if method == "linear":
        if rank is not None:
            raise InputError("--rank does not apply to --method linear (it is lossless)", hint="use --method svd --rank R to truncate")
        return _linear(adapters, weights)
    rank = rank or max(a.r for a in adapters)
    if rank < 1:
        raise InputError("--rank must be at least 1")
    if density is not None and not (0.0 < density <= 1.0):
        raise InputError(f"--density must be in (0, 1], got {density}")
    return _truncated(adapters, weights, method, rank, density if density is not None else DEFAULT_DENSITY.get(method, 1.0), seed)
