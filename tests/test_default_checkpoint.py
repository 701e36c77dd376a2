"""The shipped default checkpoint (t2lcli/checkpoints/default) and its multi-task LoRA baseline: present, small,
with full training provenance, usable with no flags, and consistent with the shipped recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "t2lcli"
DEFAULT = PKG / "checkpoints" / "default"
LORA = PKG / "checkpoints" / "default-lora"


def test_default_is_shipped_small_and_documented():
    files = {p.name: p.stat().st_size for p in DEFAULT.iterdir()}
    assert {"t2l_config.json", "hypernet.safetensors", "heldout_descriptions.json"} <= set(files), files
    assert sum(files.values()) + sum(p.stat().st_size for p in LORA.iterdir()) <= 25 * 2**20
    cfg = json.loads((DEFAULT / "t2l_config.json").read_text())
    tr = cfg["training"]
    assert tr["mode"] == "sft" and tr["steps"] >= 100 and tr["seconds"] > 0
    assert tr["recipe"]["base_model"] == "smollm2-135m-instruct" and tr["recipe"]["encoder"] == "all-minilm-l6-v2"
    assert cfg["base_model"] == "smollm2-135m-instruct"


def test_heldout_descriptions_match_the_recipe():
    from t2lcli.recipe import load_recipe

    cfg = json.loads((DEFAULT / "t2l_config.json").read_text())
    held = json.loads((DEFAULT / "heldout_descriptions.json").read_text())
    recipe = cfg["training"]["recipe"]
    assert sorted(k[4:] for k in held if not k.startswith("_")) == sorted(recipe["data"]["heldout_tasks"])
    assert recipe["data"]["heldout_tasks"] == load_recipe("default").data.heldout_tasks  # shipped recipe = trained recipe
    assert len(recipe["data"]["heldout_tasks"]) >= 5
    assert all(len(v) >= 3 for k, v in held.items() if not k.startswith("_"))


def test_recipe_pins_the_trained_task_list():
    """`train_tasks: []` means every task in sni_dir: the data grew (89 -> 331 tasks), so the recipe names its tasks
    and `make train-default` trains on what the shipped checkpoint was trained on."""
    from t2lcli.recipe import load_recipe

    trained = json.loads((DEFAULT / "t2l_config.json").read_text())["training"]["train_tasks"]
    data = load_recipe("default").data
    assert data.train_tasks == trained and len(trained) == 83
    assert not set(trained) & set(data.heldout_tasks)
    sni = PKG.parent / data.sni_dir
    if sni.is_dir():  # ../shared beside the checkout, as in CI
        missing = [t for t in trained if not any((sni / f"{t}{ext}").exists() for ext in (".jsonl", ".jsonl.gz"))]
        assert not missing, missing


def test_recipe_and_provenance_pin_the_data(monkeypatch):
    """The recipe's resolved task list and its data hash are the shipped checkpoint's and the multi-task LoRA's
    (`make train-default` / `train-default-lora` reproduce them); where ../shared is there, the files still hash to it."""
    import hashlib

    from t2lcli.engine.train.batches import data_fingerprint, resolve_task_names
    from t2lcli.recipe import load_recipe

    recipe = load_recipe("default")
    names, held = resolve_task_names(recipe)
    for prov in (json.loads((DEFAULT / "t2l_config.json").read_text())["training"],
                 json.loads((LORA / "t2l_adapter.json").read_text())["training"]):
        assert names == prov["train_tasks"] and held == prov["heldout_tasks"]
        assert prov["data"]["data_sha256"] == recipe.data.data_sha256
        assert prov["data"]["train_tasks_sha256"] == hashlib.sha256("\n".join(names).encode()).hexdigest()
    monkeypatch.chdir(PKG.parent)  # the recipe's data paths are relative to the repository root
    if Path(recipe.data.sni_dir).is_dir():
        got = data_fingerprint(recipe)
        assert got["data_sha256"] == recipe.data.data_sha256 and got["files"] == 262, got


def test_generate_with_no_flags_uses_the_default(runner, cli_app, tmp_path, monkeypatch):
    from t2lcli.engine.adapters import load_adapter

    monkeypatch.chdir(tmp_path)
    res = runner.invoke(cli_app, ["generate", "Given a country, name the country's capital city.", "-o", "out"])
    assert res.exit_code == 0, res.output
    ad = load_adapter(tmp_path / "out")
    assert ad.config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub id (resolved offline)
    assert ad.meta["checkpoint_format"] == "native" and Path(ad.meta["checkpoint"]).resolve() == DEFAULT.resolve()
    assert any(float(t.abs().max()) > 0 for k, t in ad.tensors.items() if ".lora_B." in k)


def test_default_adapters_depend_on_the_description():
    """Two tasks' descriptions give adapters that differ more than two phrasings of one task."""
    import torch

    from t2lcli.engine.generate import Generator

    held = json.loads((DEFAULT / "heldout_descriptions.json").read_text())
    tasks = [k for k in held if not k.startswith("_")][:2]
    gen = Generator.load("default")
    ads = gen.generate([held[tasks[0]][0], held[tasks[0]][1], held[tasks[1]][0]])
    flat = [torch.cat([t.flatten() for k, t in sorted(a.tensors.items()) if ".lora_B." in k]) for a in ads]
    same = float(torch.dist(flat[0], flat[1]))
    other = float(torch.dist(flat[0], flat[2]))
    assert other > 0 and same < other


def test_multitask_lora_baseline_is_a_peft_adapter():
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(LORA)
    assert ad.config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub id (resolved offline)
    assert ad.meta["training"]["mode"] == "lora"
    assert ad.meta["training"]["steps"] == json.loads((DEFAULT / "t2l_config.json").read_text())["training"]["steps"]


@pytest.mark.slow
def test_demo_preview_changes_the_answer(tmp_path):
    """make demo's command on the real SmolLM2: base vs adapted output on an input of a held-out task (disfl. QA)."""
    import os
    import subprocess
    import sys

    demo = PKG.parent / "demo"
    r = subprocess.run(
        [sys.executable, "-m", "t2lcli", "generate", (demo / "description.txt").read_text().strip(), "-o", str(tmp_path / "d"),
         "--preview", (demo / "input.txt").read_text().strip(), "--max-new-tokens", "24", "--json"],
        capture_output=True, text=True, env={**os.environ, "T2L_LOAD_PLUGINS": ""}, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    prev = doc["preview"]
    assert prev["base"] != prev["adapted"]
    assert "largest city of australia" in prev["adapted"].lower()  # the held-out task done: the fluent question
