"""`t2l train`: train a T2L hypernetwork (sft/recon) or a LoRA baseline from a YAML recipe."""

from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.errors import UsageError
from t2lcli.options import JsonOpt, ProfileOpt, at_least

EXAMPLES = """[b]Examples[/b]

  t2l train --list-recipes                                       # name, mode and description of each
  t2l train smoke -o runs/smoke                                  # 30 steps on the shipped example tasks (< 2 min)
  t2l train --show-recipe default > my.yaml                      # print a shipped recipe to edit
  t2l train default -o runs/default                              # the shipped default checkpoint's recipe
  t2l train my.yaml -o runs/x --set train.steps=200 --set train.lr=1e-4
  t2l train my.yaml -o runs/x --resume                           # continue an interrupted run exactly
  t2l train my.yaml -o runs/mt --set mode=lora                   # multi-task LoRA baseline (one adapter)
  torchrun --nproc-per-node 2 -m t2lcli train my.yaml -o runs/ddp   # distributed (DDP)
  accelerate launch --cpu --num_processes 2 -m t2lcli train my.yaml -o runs/ddp   # the same under accelerate
"""


def train(
    recipe: Annotated[str | None, typer.Argument(help="A shipped recipe name, a recipe YAML path, or '-' (standard input).")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Run folder (checkpoints/, metrics.jsonl, final/).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. --set train.steps=200 or --set base_model=DIR (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output from its latest checkpoint.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier t2l run (or other t2l output) in --output and start over; never a folder t2l did not write.")] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop after this many steps (overrides the recipe's train.steps if lower).")] = None,
    time_budget: Annotated[float | None, typer.Option("--time-budget", help="Stop (with a checkpoint) after this many seconds.")] = None,
    list_recipes: Annotated[bool, typer.Option("--list-recipes", help="List the shipped recipes and exit.")] = False,
    show_recipe: Annotated[str | None, typer.Option("--show-recipe", help="Print a shipped recipe (for editing) and exit.")] = None,
    profile: ProfileOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Train a hypernetwork (SFT or reconstruction) or a LoRA baseline from a recipe."""
    from t2lcli import recipe as recipes

    if list_recipes:
        rows = recipes.recipe_summaries()
        if json_out:
            console.emit_json(rows)
        else:
            for row in rows:
                console.emit(f"{row['name']:<16} {row['mode']:<5} {row['description']}")
        return
    if show_recipe:
        console.emit(recipes.locate_recipe(show_recipe).read_text(encoding="utf-8").rstrip())
        return
    if recipe is None or output is None:
        raise UsageError("give a RECIPE and --output DIR", hint="t2l train --list-recipes shows the shipped recipes")
    at_least("--max-steps", max_steps, 1)
    if time_budget is not None and not time_budget > 0:
        raise UsageError(f"--time-budget must be a positive number of seconds, got {time_budget:g}")
    if resume and force:
        raise UsageError("--resume and --force contradict each other")
    rec = recipes.load_recipe(recipe, set_)
    from t2lcli.hw_profiles import load_profile

    prof = load_profile(profile)
    from t2lcli.engine.base_model import resolve_device
    from t2lcli.engine.train import run_train

    device = resolve_device(prof.base.device)
    res = run_train(rec, output, resume=resume, force=force, max_steps=max_steps, time_budget_s=time_budget, device=device,
                    on_metrics=None if json_out else _print_metrics)
    summary = {"output": str(res.output), "steps": res.steps, "final": str(res.final) if res.final else None,
               "last_loss": res.last_loss, "seconds": round(res.seconds, 1), "stopped": res.stopped, "metrics": str(res.metrics_path)}
    if json_out:
        console.emit_json(summary)
    else:
        console.emit(f"{res.stopped}: {res.steps} steps in {res.seconds:.0f}s; final: {summary['final'] or '(not yet: resume to finish)'}")
    if res.stopped == "nan":
        raise typer.Exit(1)


def _print_metrics(m: dict) -> None:
    parts = [f"step {m['step']}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}", f"{m['step_s']:.2f}s/step"]
    parts += [f"{k} {m[k]:.4f}" for k in ("val_seen", "val_unseen") if k in m]
    console.log("  ".join(parts))


train.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
