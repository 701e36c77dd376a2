"""`run_train`, the entry point of `t2l train`: decide whether the output folder is a new run, a resume or a finished
run, build the trainer, loop over steps (metrics, validation, checkpoints, the time budget, a NaN stop) and write
final/. Reconstruction runs go to `recon.run_recon`. Runs under torchrun (DDP/FSDP, gloo/nccl) unchanged."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t2lcli import console
from t2lcli.engine.atomic import atomic_write_bytes
from t2lcli.engine.train.recon import run_recon
from t2lcli.engine.train.state import RUN_NAME, TrainResult, check_output, finished_result, recipe_fingerprint
from t2lcli.engine.train.trainer import Trainer
from t2lcli.errors import T2LError
from t2lcli.recipe import Recipe


@dataclass
class _LoopEnd:
    stopped: str  # steps | time_budget | nan
    last_loss: float
    last_ckpt_step: int
    seconds: float


def run_train(recipe: Recipe, output: Path, resume: bool = False, force: bool = False, max_steps: int | None = None,
              time_budget_s: float | None = None, device: str = "cpu", base_dtype: str = "float32",
              on_metrics: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train per the recipe into `output` (checkpoints/, metrics.jsonl, final/). See the package docstring."""
    tr = recipe.train
    if tr.threads:
        torch.set_num_threads(tr.threads)
    if recipe.mode == "recon":
        if resume:
            raise T2LError("--resume is not supported for reconstruction runs (they are short)", hint="rerun with --force")
        return run_recon(recipe, output, force=force, max_steps=max_steps, on_metrics=on_metrics)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = int(os.environ.get("RANK", "0"))
    total_steps = min(tr.steps, max_steps) if max_steps else tr.steps
    resuming = check_output(output, recipe, resume, force) if rank == 0 else resume
    if resuming and world == 1:
        done = finished_result(output, total_steps)
        if done is not None:  # nothing left to do: return before loading the base, the encoder and the data
            console.log(f"{output} is already complete at step {done.steps}; nothing to resume")
            return done
    if world > 1:
        torch.distributed.barrier()
    output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_bytes(output / RUN_NAME, json.dumps({"fingerprint": recipe_fingerprint(recipe), "recipe": recipe.to_dict()}, indent=2).encode())
    trainer = _build_trainer(recipe, output, device, base_dtype, rank)
    elapsed0 = trainer.load_state() if resuming else 0.0
    if resuming:
        console.log(f"resuming from step {trainer.step}")
    console.log(
        f"{len(trainer.tasks)} training tasks, {len(trainer.heldout)} held out, {trainer.too_long} over-long examples skipped"
        + (f", dropped: {', '.join(trainer.dropped)}" if trainer.dropped else "")
    )
    trainer.load_embedding_cache()
    budget = time_budget_s if time_budget_s is not None else tr.time_budget_s
    metrics_path = output / "metrics.jsonl"
    end = _loop(trainer, total_steps, budget, elapsed0, metrics_path, rank, on_metrics)
    final = None
    if end.stopped != "nan":
        state = trainer.save_state(end.seconds) if trainer.step != end.last_ckpt_step else None
        if trainer.step >= total_steps:
            if trainer.fsdp and state is None:  # gathering is a collective under FSDP; done once
                state = trainer.full_state()[0]
            if rank == 0:
                final = trainer.save_artifact(output / "final", end.seconds, force=True, state=state)
    if world > 1:
        torch.distributed.barrier()
    return TrainResult(output, trainer.step, final, metrics_path, end.last_loss, end.seconds, end.stopped)


run_training = run_train  # the name before the engine/train/ package (commands and scripts outside may use it)


def _build_trainer(recipe: Recipe, output: Path, device: str, base_dtype: str, rank: int) -> Trainer:
    """The frozen base, the text encoder (not for mode lora) and the Trainer; rank 0 writes heldout_descriptions.json."""
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.hardware import ComponentSettings

    model, tok = load_base_model(recipe.base_model, ComponentSettings(device=device, dtype=base_dtype, attn_implementation="sdpa"))
    encoder = None
    if recipe.mode != "lora":
        from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

        encoder = TextEncoder(encoder_spec_for(recipe.encoder), device=device)
    trainer = Trainer(recipe, output, model, tok, encoder, device)
    if rank == 0 and trainer.heldout:
        atomic_write_bytes(output / "heldout_descriptions.json", json.dumps(trainer.heldout_descriptions(), indent=1, ensure_ascii=False).encode())
    return trainer


def _loop(trainer: Trainer, total_steps: int, budget: float | None, elapsed0: float, metrics_path: Path, rank: int,
          on_metrics: Callable[[dict[str, Any]], None] | None) -> _LoopEnd:
    """Steps until `total_steps`, the time budget or a NaN loss; metrics every `log.every` steps (and at validation),
    a checkpoint every `log.ckpt_every`."""
    lg = trainer.recipe.log
    t_start = time.perf_counter()
    last_loss, stopped = float("nan"), "steps"
    last_ckpt_step = trainer.step
    with console.progress() as bar, open(metrics_path, "a") as mf:
        task = bar.add_task("training", total=total_steps, completed=trainer.step)
        while trainer.step < total_steps:
            t0 = time.perf_counter()
            try:
                m = trainer.train_step()
            except FloatingPointError:
                stopped = "nan"
                console.error(f"loss became NaN/Inf at step {trainer.step + 1}; stopping (the last good checkpoint is kept)",
                              "lower train.lr or raise train.warmup_steps")
                break
            m["step_s"] = round(time.perf_counter() - t0, 3)
            m["elapsed_s"] = round(elapsed0 + time.perf_counter() - t_start, 1)
            last_loss = m["loss"]
            if lg.val_every and trainer.step % lg.val_every == 0:
                m.update(trainer.validate())
            if rank == 0 and (trainer.step % lg.every == 0 or "val_seen" in m or trainer.step == 1):
                mf.write(json.dumps(m) + "\n")
                mf.flush()
                if on_metrics:
                    on_metrics(m)
            bar.update(task, completed=trainer.step, description=f"training loss {m['loss']:.3f}")
            if lg.ckpt_every and trainer.step % lg.ckpt_every == 0:
                trainer.save_state(m["elapsed_s"])
                last_ckpt_step = trainer.step
            if budget and time.perf_counter() - t_start > budget:
                stopped = "time_budget"
                break
    return _LoopEnd(stopped, last_loss, last_ckpt_step, elapsed0 + time.perf_counter() - t_start)
