"""The shipped recipes: one per training mode, each listed with its mode and each running (smoke here on tiny
models in `make test`, every recipe as shipped on the real small models at a few steps with `-m slow`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"default": "sft", "default-v2": "sft", "smoke": "sft", "user-data": "sft", "lora-multitask": "lora", "lora-oracle": "lora", "recon": "recon"}


def test_every_mode_has_a_shipped_recipe(runner, cli_app):
    from t2lcli.recipe import load_recipe

    rows = json.loads(runner.invoke(cli_app, ["train", "--list-recipes", "--json"]).stdout)
    assert {r["name"]: r["mode"] for r in rows} == SHIPPED
    text = runner.invoke(cli_app, ["train", "--list-recipes"]).stdout
    for name, mode in SHIPPED.items():
        assert any(line.split()[:2] == [name, mode] for line in text.splitlines()), text
        assert load_recipe(name).mode == mode
    oracle = load_recipe("lora-oracle")
    assert len(oracle.data.train_tasks) == 1
    data = load_recipe("user-data").data  # the example data set shipped beside the recipe, found from any folder
    assert Path(data.user_jsonl).is_file() and Path(data.user_descriptions).is_file()


def test_smoke_recipe_trains_a_checkpoint_generate_uses(runner, cli_app, tiny_base_dir, tiny_encoder_dir, tmp_path, monkeypatch):
    """The shipped smoke recipe as written, on the tiny models built in code (the real models: the slow test)."""
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli_app, ["train", "smoke", "-o", "runs/smoke", "--set", f"base_model={tiny_base_dir}",
                                  "--set", f"encoder={tiny_encoder_dir}", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps"] == 30 and summary["final"]
    res = runner.invoke(cli_app, ["generate", "Rewrite the given word in capital letters.", "-c", "runs/smoke/final", "-o", "out/upper"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "upper" / "adapter_model.safetensors").is_file()


def _t2l(args: list[str], cwd: Path, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run([sys.executable, "-m", "t2lcli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"t2l {' '.join(args)}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
def test_every_shipped_recipe_runs_on_the_real_models(tmp_path):
    shutil.copytree(ROOT / "demo", tmp_path / "demo")
    t0 = time.perf_counter()
    _t2l(["train", "smoke", "-o", "runs/smoke"], tmp_path)  # as written: 30 steps
    smoke_s = time.perf_counter() - t0
    print(f"smoke recipe: {smoke_s:.0f} s wall (including the one-time SmolLM2 conversion)")
    _t2l(["generate", "Rewrite the given word in capital letters.", "-c", "runs/smoke/final", "-o", "out/upper"], tmp_path)
    for name in ("user-data", "lora-multitask", "lora-oracle"):
        _t2l(["train", name, "-o", f"runs/{name}", "--max-steps", "3"], tmp_path)
        assert (tmp_path / "runs" / name / "final").is_dir()
    _t2l(["generate", "--from-file", "demo/tasks.jsonl", "-o", "loras/"], tmp_path)  # a folder of PEFT LoRAs
    _t2l(["train", "recon", "-o", "runs/recon", "--max-steps", "3"], tmp_path)
    _t2l(["generate", "Name the capital city.", "-c", "runs/recon/final", "-o", "out/cap"], tmp_path)


def test_default_v2_pins_every_trainable_task_and_keeps_the_heldout_out():
    """default-v2's task list is pinned (not `[]`): every task of the data it was made from except the held-out 6."""
    from t2lcli.recipe import load_recipe

    v1, v2 = load_recipe("default"), load_recipe("default-v2")
    assert v2.data.heldout_tasks == v1.data.heldout_tasks
    assert len(v2.data.train_tasks) == len(set(v2.data.train_tasks)) == 325
    assert not set(v2.data.train_tasks) & set(v2.data.heldout_tasks)
    assert set(v1.data.train_tasks) <= set(v2.data.train_tasks)
    assert v2.data.prompt == "mix" and v2.train.contrastive_weight > 0 and v2.train.init_from
