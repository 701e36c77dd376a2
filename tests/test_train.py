"""`t2l train` on a tiny base and a tiny SNI-format dataset built in code: loss falls, exact resume after a real
kill, the 2-process (gloo DDP) run matches 1 process with the combined batch, the LoRA baseline, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from numeric import TINY_LLAMA_DEPTH, assert_close

WORDS = ["cat", "dog", "sun", "moon", "tree", "rock", "fish", "bird", "star", "rain"]
TASKS = {
    "task001_reverse": ("Reverse the order of the words.", lambda ws: " ".join(reversed(ws))),
    "task002_first": ("Return only the first word.", lambda ws: ws[0]),
    "task003_last": ("Return only the last word.", lambda ws: ws[-1]),
    "task004_count": ("Count the words and answer with a digit.", lambda ws: str(len(ws))),
    "task005_upper": ("Write the words in capital letters.", lambda ws: " ".join(w.upper() for w in ws)),
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    sni, descs = root / "sni", root / "tasks"
    sni.mkdir()
    for k, (name, (definition, fn)) in enumerate(TASKS.items()):
        rows = []
        for i in range(60):
            ws = [WORDS[(i * 3 + j * 7 + k) % len(WORDS)] for j in range(2 + i % 3)]
            rows.append({"id": f"{name}-{i}", "input": " ".join(ws), "output": [fn(ws)]})
        (sni / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        lol = f"lol_{k:03d}"
        meta = {"task_name": name, "Definition": [definition], "Categories": ["Test"], "t2l_task_id": lol, "in_t2l_train_list": True}
        (sni / f"{name}.meta.json").write_text(json.dumps(meta))
        (descs / lol).mkdir(parents=True)
        d = [f"{definition} (phrasing {j})" for j in range(6)]
        (descs / lol / "metadata.yaml").write_text(yaml.safe_dump({"descriptions": d}))
    return root


@pytest.fixture(scope="module")
def train_base_dir(tmp_path_factory, tiny_base_dir) -> Path:
    """The tiny base with larger random weights, so that a q/v LoRA can move its logits noticeably."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("train_base")
    cfg = AutoConfig.from_pretrained(tiny_base_dir)
    cfg.initializer_range = 0.3
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_base_dir).save_pretrained(out)
    return out


def write_recipe(path: Path, data: Path, base: Path, enc: Path, **overrides) -> Path:
    recipe = {
        "mode": "sft",
        "base_model": str(base),
        "encoder": str(enc),
        "hypernet": {"variant": "L", "latent": 16, "head_in": 32, "r": 4, "lora_alpha": 8, "dropout": 0.0},
        "data": {"sni_dir": str(data / "sni"), "descriptions_dir": str(data / "tasks"), "heldout_tasks": ["task005_upper"],
                 "max_len": 64, "n_train_descs": 4},
        "train": {"steps": 30, "n_tasks_per_step": 4, "lr": 2e-2, "warmup_steps": 2, "lora_dropout": 0.0, "seed": 0, "threads": 1},
        "log": {"every": 1, "val_every": 10, "val_examples": 8, "ckpt_every": 10},
    }
    for key, value in overrides.items():
        section, _, sub = key.partition(".")
        if sub:
            recipe[section][sub] = value
        else:
            recipe[section] = value
    path.write_text(yaml.safe_dump(recipe))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "T2L_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_tiny_sft_loss_decreases_and_checkpoint_generates(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    # lr 5e-3 x 60 steps: at 2e-2 x 30 the batch loss fell > 20% on one CPU and 7% on another (AVX-512 kernels give
    # another trajectory; that lr is at the edge of stability); here it falls 33-38% on seeds 0-2
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **{"train.lr": 5e-3, "train.steps": 60})
    out = tmp_path / "run"
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 60 and summary["final"]
    m = _metrics(out)
    first = sum(x["loss"] for x in m[:5]) / 5
    last = sum(x["loss"] for x in m[-5:]) / 5
    assert last < first * 0.8, (first, last)
    assert any("val_unseen" in x for x in m)
    cfg = json.loads((out / "final" / "t2l_config.json").read_text())
    assert cfg["training"]["heldout_tasks"] == ["task005_upper"] and cfg["training"]["steps"] == 60
    held = json.loads((out / "heldout_descriptions.json").read_text())
    assert held["sni:task005_upper"] == [f"{TASKS['task005_upper'][0]} (phrasing {j})" for j in (4, 5)]  # n_train_descs=4
    res = runner.invoke(cli_app, ["generate", "Reverse the order of the words.", "-c", str(out / "final"), "-o", str(tmp_path / "ad")])
    assert res.exit_code == 0, res.output
    # the held-out comparison of the default checkpoint's README table, on the tiny run: input-only SNI prompts,
    # unseen descriptions from the run, the control from the other SNI task's descriptions
    tasks = ",".join(f"sni:{tiny_data / 'sni' / n}.jsonl" for n in ("task005_upper", "task001_reverse") if n in TASKS)
    ev = tmp_path / "ev"
    res = runner.invoke(cli_app, ["eval", "--tasks", tasks, "-c", str(out / "final"), "-m", str(train_base_dir),
                                  "--conditions", "base,desc-prompt,t2l,t2l-control", "--sni-prompt", "input",
                                  "--descriptions-file", str(out / "heldout_descriptions.json"), "--limit", "2",
                                  "--max-new-tokens", "4", "-o", str(ev)])
    assert res.exit_code == 0, res.output
    doc = json.loads((ev / "results.json").read_text())
    p = doc["provenance"]
    assert p["sni_prompt"] == "input"
    assert p["descriptions"]["sni:task005_upper"] == held["sni:task005_upper"]
    ctl = p["control"]["sni:task005_upper"]
    assert ctl["from_task"] != "sni:task005_upper" and ctl["from_task"].startswith("sni:")


def test_lora_mode_writes_a_peft_adapter(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, mode="lora")
    out = tmp_path / "mt"
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out), "--max-steps", "12"])
    assert res.exit_code == 0, res.output
    from t2lcli.engine.adapters import load_adapter

    ad = load_adapter(out / "final")
    assert ad.r == 4 and any(t.abs().max() > 0 for k, t in ad.tensors.items() if "lora_B" in k)
    m = _metrics(out)
    assert m[-1]["loss"] < m[0]["loss"]


def test_resume_after_kill_is_exact(tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                          **{"train.steps": 20, "hypernet.dropout": 0.05, "train.lora_dropout": 0.05, "log.ckpt_every": 10, "log.val_every": 0})
    cmd = [sys.executable, "-m", "t2lcli", "train", str(recipe)]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, "-o", str(ref)], check=True, env=_env(), capture_output=True)

    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "-o", str(run)], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "latest").is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a real kill, somewhere after the step-10 checkpoint
    proc.wait()
    assert (run / "latest").read_text().strip() == "step-0000010"
    assert not (run / "final").exists()
    subprocess.run([*cmd, "-o", str(run), "--resume"], check=True, env=_env(), capture_output=True)

    from safetensors.torch import load_file

    a = load_file(str(ref / "final" / "hypernet.safetensors"))
    b = load_file(str(run / "final" / "hypernet.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # resumed = uninterrupted: the same kernels on the same data (the old 1e-6 bound, now relative)
        assert_close(b[k], a[k], msg=k)


def _launcher(name: str) -> list[str]:
    """The 2-process launch command on a port free right now (a fixed port collides with another suite running)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    return {
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port],
        # accelerate's CPU multi-process launch (it hands over to torchrun with RANK/WORLD_SIZE set)
        "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                       "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port],
    }[name]


@pytest.mark.parametrize("launcher, parallel", [("torchrun", "ddp"), ("accelerate", "ddp"), ("torchrun", "fsdp")])
def test_two_process_ddp_matches_one_process(tiny_data, train_base_dir, tiny_encoder_dir, tmp_path, launcher, parallel):
    """2 gloo processes (DDP, or FSDP2 with the hypernetwork sharded) = 1 process with the combined batch."""
    if launcher == "accelerate":
        pytest.importorskip("accelerate")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                          **{"train.steps": 6, "log.val_every": 0, "log.ckpt_every": 0})
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "t2lcli", "train", str(recipe), "-o", str(one)], check=True, env=_env(), capture_output=True)
    r = subprocess.run([*_launcher(launcher), "-m", "t2lcli", "train", str(recipe), "-o", str(two), "--set", f"train.distributed={parallel}"],
                       env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    la = [m["loss"] for m in _metrics(one)]
    lb = [m["loss"] for m in _metrics(two)]  # rank 0 logs the all-reduced loss of the combined batch
    assert len(la) == len(lb) == 6
    assert max(abs(x - y) / abs(x) for x, y in zip(la, lb, strict=True)) < 1e-3, (la, lb)
    assert la[-1] < la[0]
    from safetensors.torch import load_file

    a = load_file(str(one / "final" / "hypernet.safetensors"))
    b = load_file(str(two / "final" / "hypernet.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 2e-3, worst  # Adam normalises updates, so float-summation differences show up at ~1e-4


def test_existing_run_needs_resume_or_force(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir)
    out = tmp_path / "run"
    assert runner.invoke(cli_app, ["train", str(recipe), "-o", str(out), "--max-steps", "2"]).exit_code == 0
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out), "--max-steps", "2"])
    assert res.exit_code == 1 and "--resume" in res.output
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "x.txt").write_text("keep")
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(other)])
    assert res.exit_code == 1 and (other / "x.txt").read_text() == "keep"
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(other), "--force"])  # not a t2l run: refused
    assert res.exit_code == 1 and "x.txt" in res.output and (other / "x.txt").read_text() == "keep"
    # resuming a finished run returns at once: no base model, encoder or data is loaded
    import t2lcli.engine.base_model as bm

    def boom(*a, **k):
        raise AssertionError("loaded the base model for a finished run")

    real = bm.load_base_model
    bm.load_base_model = boom
    try:
        res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out), "--max-steps", "2", "--resume", "--json"])
    finally:
        bm.load_base_model = real
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["steps"] == 2 and "nothing to resume" in res.stderr


def test_list_recipes_json_shows_modes(runner, cli_app):
    res = runner.invoke(cli_app, ["train", "--list-recipes", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {"name", "mode", "description"} <= set(rows[0]) and "default" in {r["name"] for r in rows}


@pytest.mark.parametrize(
    "mutate,needle",
    [
        ({"data.bogus": 1, "train.lr": "fast"}, "2 problems"),
        ({"mode": "magic"}, "mode"),
        ({"data.sni_dir": "/no/such/dir"}, "not found"),
        ({"data.max_len": 3}, "max_len"),
    ],
)
def test_bad_recipes(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path, mutate, needle):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **mutate)
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_task_without_descriptions(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(tiny_data, data)
    meta = json.loads((data / "sni" / "task001_reverse.meta.json").read_text())
    meta["Definition"] = []
    (data / "sni" / "task001_reverse.meta.json").write_text(json.dumps(meta))
    shutil.rmtree(data / "tasks" / "lol_000")
    recipe = write_recipe(tmp_path / "r.yaml", data, train_base_dir, tiny_encoder_dir)
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no descriptions" in res.output


def test_data_pin_refuses_other_data_and_provenance_records_it(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    """`data.data_sha256` pins every file a run reads and provenance records the same hash, so a recipe whose
    `train_tasks: []` would silently resolve to a grown task folder (or an edited file) refuses to train."""
    import shutil

    from t2lcli.engine.train import recipe_fingerprint
    from t2lcli.engine.train.batches import data_fingerprint, resolve_task_names
    from t2lcli.recipe import load_recipe

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    plain = write_recipe(tmp_path / "r.yaml", data, train_base_dir, tiny_encoder_dir, **{"train.steps": 2, "log.val_every": 0})
    fp = data_fingerprint(load_recipe(str(plain)))
    assert fp["files"] == 3 * len(TASKS)  # data, meta and descriptions of 4 training tasks and 1 held out
    out = tmp_path / "run"
    res = runner.invoke(cli_app, ["train", str(plain), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "final" / "t2l_config.json").read_text())["training"]["data"] == fp
    pinned = write_recipe(tmp_path / "p.yaml", data, train_base_dir, tiny_encoder_dir,
                          **{"train.steps": 2, "log.val_every": 0, "data.data_sha256": fp["data_sha256"]})
    assert recipe_fingerprint(load_recipe(str(pinned))) == recipe_fingerprint(load_recipe(str(plain)))  # a check: runs still resume
    res = runner.invoke(cli_app, ["train", str(pinned), "-o", str(tmp_path / "ok")])
    assert res.exit_code == 0, res.output
    # a task added to the folder: the empty train_tasks list resolves to one more task and the hash moves
    sni = data / "sni"
    shutil.copy(sni / "task004_count.jsonl", sni / "task006_count_again.jsonl")
    shutil.copy(sni / "task004_count.meta.json", sni / "task006_count_again.meta.json")
    assert resolve_task_names(load_recipe(str(pinned)))[0] == ["task001_reverse", "task002_first", "task003_last", "task004_count",
                                                               "task006_count_again"]
    grown = data_fingerprint(load_recipe(str(pinned)))
    assert grown["data_sha256"] != fp["data_sha256"] and grown["train_tasks_sha256"] != fp["train_tasks_sha256"]
    res = runner.invoke(cli_app, ["train", str(pinned), "-o", str(tmp_path / "refused")])
    assert res.exit_code == 1 and "data.data_sha256" in res.output, res.output
    # the same task names with an edited file: refused as well
    (sni / "task006_count_again.jsonl").unlink()
    (sni / "task006_count_again.meta.json").unlink()
    assert data_fingerprint(load_recipe(str(pinned))) == fp
    with open(sni / "task002_first.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "extra", "input": "cat dog", "output": ["cat"]}) + "\n")
    res = runner.invoke(cli_app, ["train", str(pinned), "-o", str(tmp_path / "edited"), "--set", 'data.data_sha256=""'])
    assert res.exit_code == 0, res.output  # the pin cleared: trains on the data as they are
    res = runner.invoke(cli_app, ["train", str(pinned), "-o", str(tmp_path / "refused2")])
    assert res.exit_code == 1 and "data.data_sha256" in res.output, res.output


def test_list_and_show_recipes(runner, cli_app):
    res = runner.invoke(cli_app, ["train", "--list-recipes"])
    assert res.exit_code == 0 and "default" in res.stdout.split()
    res = runner.invoke(cli_app, ["train", "--show-recipe", "default"])
    assert res.exit_code == 0 and "heldout_tasks" in res.stdout
    from t2lcli.recipe import load_recipe

    r = load_recipe("default")
    assert len(r.data.heldout_tasks) >= 5


def test_nan_loss_stops_and_keeps_last_checkpoint(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path, monkeypatch):
    from t2lcli.engine.train import trainer as tr  # where the step looks the loss up

    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **{"log.ckpt_every": 2, "log.val_every": 0})
    orig = tr.answer_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = orig(*a, **k)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(tr, "answer_loss", poisoned)
    out = tmp_path / "nan"
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out)])
    assert res.exit_code == 1 and "NaN" in res.output
    assert (out / "latest").read_text().strip() == "step-0000004"
    assert not (out / "final").exists()
    torch.load(out / "checkpoints" / "step-0000004" / "trainer_state.pt", weights_only=True)


def test_recon_distils_lora_library(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    """Two LoRA targets (tasks with different descriptions) are reconstructed; the result tells them apart."""
    from t2lcli.engine.adapters import Adapter, load_adapter, peft_config, save_adapter
    from t2lcli.engine.base_model import read_config, shape_from_config

    shape = shape_from_config(read_config(train_base_dir), ["q_proj", "v_proj"])
    g = torch.Generator().manual_seed(0)
    lib = tmp_path / "lib"
    for name in ("task001_reverse", "task002_first"):
        tensors = {}
        for s in shape.modules.values():
            for layer in range(shape.n_layers):
                p = "base_model.model." + s.path.format(l=layer)
                tensors[f"{p}.lora_A.weight"] = torch.randn(4, s.d_in, generator=g) * 0.1
                tensors[f"{p}.lora_B.weight"] = torch.randn(s.d_out, 4, generator=g) * 0.1
        save_adapter(Adapter(peft_config(4, 8, ["q_proj", "v_proj"], str(train_base_dir)), tensors, {}), lib / name)
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, mode="recon",
                          recon={"targets": [str(lib / "*")], "loss": "factorized"}, **{"train.steps": 150, "train.lr": 5e-3})
    out = tmp_path / "recon"
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out)])
    assert res.exit_code == 0, res.output
    m = _metrics(out)
    assert m[-1]["loss"] < 0.5 * m[0]["loss"]
    res = runner.invoke(cli_app, ["generate", "Reverse the order of the words. (phrasing 1)", "-c", str(out / "final"), "-o", str(tmp_path / "g")])
    assert res.exit_code == 0, res.output
    got = load_adapter(tmp_path / "g").tensors
    errs = {n: sum(float((got[k] - t).abs().mean()) for k, t in load_adapter(lib / n).tensors.items()) for n in ("task001_reverse", "task002_first")}
    assert errs["task001_reverse"] < errs["task002_first"], errs


def test_answer_loss_equals_full_logits_loss(train_base_dir):
    """The answer-positions-only head projection gives the same loss and gradients as the full logits."""
    from transformers import AutoModelForCausalLM

    from t2lcli.engine.train import answer_loss, sample_loss

    model = AutoModelForCausalLM.from_pretrained(train_base_dir).float()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 5:] = ids[0, 5:]
    labels[1, 9:] = ids[1, 9:]
    labels[2, 3:8] = ids[2, 3:8]
    x = torch.zeros(1, requires_grad=True)
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o + x)
    full = sample_loss(model(input_ids=ids, attention_mask=mask).logits, labels, 0.1)
    (g_full,) = torch.autograd.grad(full, x)
    fast = answer_loss(model, ids, mask, labels, 0.1)
    (g_fast,) = torch.autograd.grad(fast, x)
    hook.remove()
    # the LM head on answer rows only vs. on every row: other matrix shapes, other kernels
    assert_close(fast, full, depth=TINY_LLAMA_DEPTH)
    assert_close(g_fast, g_full, depth=2 * TINY_LLAMA_DEPTH)  # forward and backward
    assert float(fast) > 0


def test_fsdp_checkpoint_resumes_to_the_same_weights(tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):
    """FSDP saves gathered (unsharded) states: a run stopped at step 3 and resumed under FSDP ends where an
    uninterrupted FSDP run ends, and its checkpoint loads and generates like any other."""
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                          **{"train.steps": 6, "log.val_every": 0, "log.ckpt_every": 3, "train.distributed": "fsdp"})
    cmd = [*_launcher("torchrun"), "-m", "t2lcli", "train", str(recipe)]
    full, part = tmp_path / "full", tmp_path / "part"
    for args in (["-o", str(full)], ["-o", str(part), "--max-steps", "3"], ["-o", str(part), "--resume"]):
        r = subprocess.run([*cmd, *args], env=_env(), capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
    assert (part / "checkpoints" / "step-0000003").is_dir()
    from safetensors.torch import load_file

    a = load_file(str(full / "final" / "hypernet.safetensors"))
    b = load_file(str(part / "final" / "hypernet.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert_close(b[k], a[k], msg=k)
    from t2lcli.engine.generate import Generator

    ads = Generator.load(part / "final").generate(["Write the words in capital letters."])
    assert any(float(t.abs().max()) > 0 for t in ads[0].tensors.values())
