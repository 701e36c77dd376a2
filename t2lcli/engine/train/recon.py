"""Reconstruction (`mode: recon`): distil a library of per-task LoRAs into the hypernetwork, L1 on A/B (`factorized`)
or on ΔW = B@A (`delta_w`). Needs no base weights (shapes come from the base's config.json)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.atomic import atomic_write_bytes
from t2lcli.engine.data import load_sni_task
from t2lcli.engine.train.state import RUN_NAME, TrainResult, check_output, recipe_fingerprint
from t2lcli.errors import DataError, T2LError
from t2lcli.recipe import Recipe

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]
Target = tuple[str, Factors, list[str]]


def recon_targets(recipe: Recipe, shape: Any, folders: list[Path]) -> list[Target]:
    """(task name, per-module layer-stacked A/B factors, descriptions) of every target folder. A folder's name is its
    task, whose descriptions come from the SNI data when it is there, else from the adapter's card."""
    from t2lcli.engine.adapters import load_adapter

    hs, d = recipe.hypernet, recipe.data
    targets: list[Target] = []
    for folder in folders:
        ad = load_adapter(folder)
        if ad.r != hs.r:
            raise DataError(f"{folder}: rank {ad.r} differs from hypernet.r={hs.r}")
        fac = {}
        for m, s in shape.modules.items():
            a = torch.stack([ad.tensors[f"base_model.model.{s.path.format(l=layer)}.lora_A.weight"].float() for layer in range(shape.n_layers)])
            b = torch.stack([ad.tensors[f"base_model.model.{s.path.format(l=layer)}.lora_B.weight"].float() for layer in range(shape.n_layers)])
            fac[m] = (a, b)
        descs: list[str] = []
        sni = Path(d.sni_dir)
        if (sni / f"{folder.name}.meta.json").is_file():
            descs = load_sni_task(sni, folder.name, Path(d.descriptions_dir) if d.descriptions_dir else None, 1).descriptions[: d.n_train_descs]
        if not descs and ad.meta.get("description"):
            descs = [str(ad.meta["description"])]
        if not descs:
            raise DataError(f"target {folder} has no descriptions (not an SNI task name and no description in its card)")
        targets.append((folder.name, fac, descs))
    return targets


def recon_loss(out: Factors, targets: list[Target], picks: list[int], kind: str) -> torch.Tensor:
    """Mean over modules of the L1 distance of the generated factors to the picked targets' (`delta_w`: of ΔW)."""
    loss = torch.zeros(())
    for m, (a, b) in out.items():
        ta = torch.stack([targets[i][1][m][0] for i in picks])
        tb = torch.stack([targets[i][1][m][1] for i in picks])
        if kind == "delta_w":
            loss = loss + (b @ a - tb @ ta).abs().mean()
        else:
            loss = loss + ((a - ta).abs().mean() + (b - tb).abs().mean()) / 2
    return loss / len(out)


def run_recon(recipe: Recipe, output: Path, force: bool = False, max_steps: int | None = None,
              on_metrics: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Distil the PEFT folders of `recon.targets` (globs allowed) into a fresh hypernetwork; writes metrics.jsonl and
    `output/final`, a native checkpoint that generates as SFT does."""
    import glob
    import random

    from t2lcli.engine.base_model import read_config, resolve_model, shape_from_config
    from t2lcli.engine.checkpoint import build_checkpoint, save_checkpoint
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

    tr, hs = recipe.train, recipe.hypernet
    folders = sorted({Path(p) for pat in recipe.recon.targets for p in (glob.glob(pat) or [pat])})
    if not folders:
        raise DataError("recon.targets lists no adapter folders", hint="set recon.targets to PEFT folders (globs allowed)")
    check_output(output, recipe, resume=False, force=force)
    shape = shape_from_config(read_config(resolve_model(recipe.base_model)), hs.target_modules)
    ckpt = build_checkpoint(shape, encoder_spec_for(recipe.encoder), recipe.base_model, variant=hs.variant, latent=hs.latent,
                            head_in=hs.head_in, r=hs.r, lora_alpha=hs.lora_alpha, seed=tr.seed, dropout=hs.dropout)
    targets = recon_targets(recipe, shape, folders)
    encoder = TextEncoder(encoder_spec_for(recipe.encoder))
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output / RUN_NAME, json.dumps({"fingerprint": recipe_fingerprint(recipe), "recipe": recipe.to_dict()}, indent=2).encode())
    torch.manual_seed(tr.seed)
    rng = random.Random(tr.seed)
    net = ckpt.hypernet.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=tr.lr, weight_decay=tr.weight_decay)
    steps = min(tr.steps, max_steps) if max_steps else tr.steps
    cache: dict[str, torch.Tensor] = {}
    t0, last = time.perf_counter(), float("nan")
    with open(output / "metrics.jsonl", "a") as mf:
        for step in range(1, steps + 1):
            picks = rng.sample(range(len(targets)), min(tr.n_tasks_per_step, len(targets)))
            descs = [rng.choice(targets[i][2]) for i in picks]
            new = [x for x in dict.fromkeys(descs) if x not in cache]
            if new:
                cache.update(zip(new, encoder.embed(new), strict=True))
            out = net(torch.stack([cache[x] for x in descs]))
            loss = recon_loss(out, targets, picks, recipe.recon.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), tr.grad_clip or float("inf"))
            opt.step()
            last = float(loss.detach())
            if not math.isfinite(last):
                raise T2LError(f"reconstruction loss became NaN at step {step}", hint="lower train.lr")
            if step % recipe.log.every == 0 or step == 1 or step == steps:
                m = {"step": step, "loss": last, "elapsed_s": round(time.perf_counter() - t0, 1)}
                mf.write(json.dumps(m) + "\n")
                if on_metrics:
                    on_metrics({**m, "lr": tr.lr, "step_s": 0.0})
    seconds = time.perf_counter() - t0
    ckpt.config.training_task = "sft"  # outputs are raw A/B already (no z-scoring, no offset): generate as SFT does
    prov = {"mode": "recon", "recipe": recipe.to_dict(), "steps": steps, "seconds": round(seconds, 1),
            "targets": [str(f) for f in folders], "loss": recipe.recon.loss}
    final = save_checkpoint(ckpt, output / "final", force=True, training=prov)
    return TrainResult(output, steps, final, output / "metrics.jsonl", last, seconds, "steps")
