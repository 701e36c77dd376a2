"""A training run's folder: what it holds (run.json with the recipe's fingerprint, checkpoints/step-N with the
trainer state, `latest`, final/), whether an existing folder may be resumed or replaced, and reading back the
files this trainer wrote (`torch.load(weights_only=True)`, damage as one T2LError)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.atomic import TMP_MARK, check_output_free, t2l_output_kind
from t2lcli.errors import T2LError
from t2lcli.recipe import Recipe

STATE_NAME = "trainer_state.pt"
RUN_NAME = "run.json"


@dataclass
class TrainResult:
    output: Path
    steps: int
    final: Path | None
    metrics_path: Path
    last_loss: float
    seconds: float
    stopped: str


def load_pt(path: Path) -> Any:
    """A file this trainer wrote, read back with `torch.load(weights_only=True)`: a pickle that would run code is
    refused; damage is one T2LError."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise T2LError(f"{path} was refused: it references objects other than tensors and plain data, which could run code",
                       hint="nothing from it was executed; start over with --force") from None
    except Exception as exc:
        raise T2LError(f"{path} is damaged or truncated: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
                       hint="start over with --force") from None


def rng_to_list(state: Any) -> list[Any]:
    version, internal, gauss = state
    return [int(version), [int(x) for x in internal], gauss]


def rng_from_list(data: list[Any]) -> Any:
    return (int(data[0]), tuple(int(x) for x in data[1]), data[2])


def recipe_fingerprint(recipe: Recipe) -> str:
    import hashlib

    d = recipe.to_dict()
    for volatile in ("steps", "time_budget_s", "threads"):
        d["train"].pop(volatile, None)
    if d["train"].get("distributed") == "ddp":  # the default leaves the fingerprints of earlier runs unchanged
        d["train"].pop("distributed")
    for section, key, default in (("train", "contrastive_weight", 0.0), ("train", "contrastive_margin", 0.5),
                                  ("train", "contrastive_examples", 0), ("train", "init_from", ""), ("data", "definition_frac", 0.5),
                                  ("data", "label_task_weight", 1.0), ("train", "contrastive_loss", "hinge"),
                                  ("train", "contrastive_negatives", 1), ("train", "contrastive_temperature", 0.5)):
        if d[section].get(key) == default:  # options added later: at their defaults, earlier runs still resume
            d[section].pop(key)
    d.pop("log", None)
    d["data"].pop("data_sha256", None)  # a check on the data, not a setting: pinning it does not change the run
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def check_output(output: Path, recipe: Recipe, resume: bool, force: bool) -> bool:
    """Decide what to do with an existing output folder. Returns True when a run is to be resumed."""
    run = output / RUN_NAME
    if output.is_dir() and not output.is_symlink() and not any(p for p in output.iterdir() if not p.name.startswith(TMP_MARK)):
        return False  # empty, or only the temporaries of a run killed before it wrote run.json
    if not output.exists() and not output.is_symlink():
        return False
    try:
        info = json.loads(run.read_text(encoding="utf-8")) if run.is_file() else None
    except (ValueError, OSError, RecursionError):
        info = "damaged"  # a run killed while writing it, or a corrupted disk: still t2l's run
    if info is None or (info != "damaged" and t2l_output_kind(output) != "a t2l training run"):
        check_output_free(output, force=True)  # refuses a folder t2l did not write, naming what is there
        if not force:
            raise T2LError(f"{output} holds {t2l_output_kind(output)}, not a training run",
                           hint="choose another --output, or pass --force to replace it")
        shutil.rmtree(output)
        return False
    if force:
        shutil.rmtree(output)
        return False
    if not resume:
        raise T2LError(f"{output} already holds a training run", hint="pass --resume to continue it or --force to start over")
    if not isinstance(info, dict):
        raise T2LError(f"{run} is damaged; this run cannot be resumed", hint="start over with --force")
    if info.get("fingerprint") != recipe_fingerprint(recipe):
        raise T2LError(f"{output} holds a run of a different recipe", hint="use the same recipe (steps/time budget may change) or --force")
    return True


def finished_result(output: Path, total_steps: int) -> TrainResult | None:
    """The result of a run that already reached `total_steps` and wrote final/, or None."""
    try:
        name = (output / "latest").read_text(encoding="utf-8").strip()
        step = int(name.removeprefix("step-"))
    except (OSError, ValueError):
        return None
    final = output / "final"
    if step < total_steps or t2l_output_kind(final) not in ("a t2l checkpoint", "a t2l adapter"):
        return None
    last_loss, seconds = float("nan"), 0.0
    try:
        lines = (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else {}
        last_loss, seconds = float(last.get("loss", last_loss)), float(last.get("elapsed_s", 0.0))
    except (OSError, ValueError):
        pass
    return TrainResult(output, step, final, output / "metrics.jsonl", last_loss, seconds, "steps")

