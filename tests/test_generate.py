"""`t2l generate` end to end on a tiny checkpoint: single, batch, stdin, JSON, determinism, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from numeric import TINY_LLAMA_DEPTH, assert_close


def test_single_adapter_loads_in_peft_and_changes_logits(runner, cli_app, tiny_checkpoint_dir, tiny_base_dir, tmp_path):
    out = tmp_path / "a1"
    res = runner.invoke(cli_app, ["generate", "answer math word problems step by step", "-c", str(tiny_checkpoint_dir), "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.stdout.strip().splitlines()[-1])
    from t2lcli.engine.adapters import tensors_sha256

    assert rec["path"] == str(out) and rec["sha256"] == tensors_sha256(out / "adapter_model.safetensors")
    assert set(rec["timings_ms"]) == {"checkpoint_load", "embed", "hypernet", "write"}
    assert rec["timings_ms"]["checkpoint_load"] > 0 and rec["timings_ms"]["embed"] > 0 and rec["timings_ms"]["hypernet"] > 0
    assert {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    assert "answer math word problems" in (out / "README.md").read_text()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from t2lcli.engine.adapters import load_adapter

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    ids = torch.tensor([[1, 5, 9, 12, 30]])
    with torch.no_grad():
        ref = base(ids).logits
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), str(out))
        got = peft_model(ids).logits
    assert (got - ref).abs().max() > 1e-4
    # expected amount: peft output equals a manual merge W + s * B @ A
    ad = load_adapter(out)
    assert ad.scaling == pytest.approx(16 / 8**0.5)
    merged = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    with torch.no_grad():
        for prefix in ad.prefixes():
            path = prefix.removeprefix("base_model.model.")
            merged.get_submodule(path).weight += ad.delta(prefix)
        assert_close(merged(ids).logits, got, depth=TINY_LLAMA_DEPTH)  # W + ΔW vs. peft's hook: other sums


def test_refuses_existing_output_and_force_replaces(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "x"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = runner.invoke(cli_app, ["generate", "translate english to french", "-c", str(tiny_checkpoint_dir), "-o", str(out)])
    assert res.exit_code == 1
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a previous t2l output: a folder with the user's files is refused (tests/test_output_safety.py)
    res = runner.invoke(cli_app, ["generate", "translate english to french", "-c", str(tiny_checkpoint_dir), "-o", str(out), "--force"])
    assert res.exit_code == 1 and "keep.txt" in res.output
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    ad = tmp_path / "ad"
    for _ in range(2):
        res = runner.invoke(cli_app, ["generate", "translate english to french", "-c", str(tiny_checkpoint_dir), "-o", str(ad), "--force"])
        assert res.exit_code == 0, res.output
    assert (ad / "adapter_model.safetensors").exists()


def test_batch_jsonl_names_and_json_lines(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    src = tmp_path / "tasks.jsonl"
    lines = [
        {"description": "classify sentiment of reviews", "name": "sent"},
        {"description": "translate english to french", "name": "../../evil"},
        {"description": "summarize text", "name": "sent"},
        {"description": "name the capital city of a country"},
    ]
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    out = tmp_path / "batch"
    res = runner.invoke(cli_app, ["generate", "--from-file", str(src), "-o", str(out), "-c", str(tiny_checkpoint_dir), "--json", "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(x) for x in res.stdout.strip().splitlines()]
    assert [r["name"] for r in recs] == ["sent", "evil", "sent-2", "name-the-capital-city-of-a-country"]
    assert sorted(p.name for p in out.iterdir()) == sorted(r["name"] for r in recs)
    assert not (tmp_path.parent / "evil").exists()


def test_batch_stdin_txt(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "stdin"
    res = runner.invoke(cli_app, ["generate", "-f", "-", "-o", str(out), "-c", str(tiny_checkpoint_dir)], input="solve math\nwrite python code\n")
    assert res.exit_code == 0, res.output
    assert len(list(out.iterdir())) == 2


@pytest.mark.parametrize(
    "content,needle",
    [(b'{"description": "ok"}\n{bad json\n', "line 2"), (b"fine\n\xff\xfe bad\n", "line 2"), (b'{"name": "x"}\n', "line 1")],
)
def test_batch_bad_lines(runner, cli_app, tiny_checkpoint_dir, tmp_path, content, needle):
    src = tmp_path / ("b.jsonl" if content.startswith(b"{") else "b.txt")
    src.write_bytes(content)
    out = tmp_path / "o"
    res = runner.invoke(cli_app, ["generate", "-f", str(src), "-o", str(out), "-c", str(tiny_checkpoint_dir)])
    assert res.exit_code == 1 and needle in res.output
    assert not out.exists()  # validated before anything was written
    res = runner.invoke(cli_app, ["generate", "-f", str(src), "-o", str(out), "-c", str(tiny_checkpoint_dir), "--skip-bad"])
    if b"fine" in content or b'"ok"' in content:
        assert res.exit_code == 0, res.output
    else:
        assert res.exit_code == 1


@pytest.mark.parametrize("desc", ["", "   \n\t "])
def test_empty_description(runner, cli_app, tiny_checkpoint_dir, tmp_path, desc):
    res = runner.invoke(cli_app, ["generate", desc, "-o", str(tmp_path / "e"), "-c", str(tiny_checkpoint_dir)])
    assert res.exit_code == 1 and "empty description" in res.output
    assert not (tmp_path / "e").exists()


def test_too_long_description(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    res = runner.invoke(cli_app, ["generate", "a " * 20000, "-o", str(tmp_path / "e"), "-c", str(tiny_checkpoint_dir)])
    assert res.exit_code == 1 and "limit" in res.output


def test_missing_and_corrupt_checkpoint(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    res = runner.invoke(cli_app, ["generate", "x y", "-o", str(tmp_path / "o"), "-c", str(tmp_path / "nope")])
    assert res.exit_code == 1 and "not found" in res.output
    bad = tmp_path / "bad_ckpt"
    bad.mkdir()
    (bad / "t2l_config.json").write_text((tiny_checkpoint_dir / "t2l_config.json").read_text())
    (bad / "hypernet.safetensors").write_bytes((tiny_checkpoint_dir / "hypernet.safetensors").read_bytes()[:100])
    res = runner.invoke(cli_app, ["generate", "x y", "-o", str(tmp_path / "o"), "-c", str(bad)])
    assert res.exit_code == 1 and "safetensors" in res.output
    assert not (tmp_path / "o").exists()


def test_base_model_mismatch(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    from transformers import LlamaConfig

    other = tmp_path / "other_base"
    LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4).save_pretrained(other)
    res = runner.invoke(cli_app, ["generate", "x y", "-o", str(tmp_path / "o"), "-c", str(tiny_checkpoint_dir), "--base-model", str(other)])
    assert res.exit_code == 1 and "layers" in res.output
    assert not (tmp_path / "o").exists()


def test_no_default_checkpoint_message(runner, cli_app, tmp_path, monkeypatch):
    from t2lcli.engine import checkpoint as ck

    monkeypatch.setattr(ck, "shipped_dir", lambda name: tmp_path / "none")
    res = runner.invoke(cli_app, ["generate", "x y", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "default checkpoint" in res.output


def test_never_loads_base_weights(tiny_checkpoint_dir, tiny_base_dir, tmp_path):
    """`t2l generate` as a user runs it opens no weights file of the base model's folder (an audit hook in the real
    process records every Python open, and safetensors' opens are wrapped); the same hooks see the base's weights opened
    by `--preview`, so the check can fail."""
    import subprocess
    import sys

    code = (
        "import sys, runpy\n"
        "base, log = sys.argv[1], open(sys.argv[2], 'w')\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and args[0].startswith(base):\n"
        "        log.write(args[0] + '\\n'); log.flush()\n"
        "sys.addaudithook(hook)\n"
        "import safetensors, safetensors.torch\n"  # safetensors opens files in Rust, unseen by the audit hook: wrap it
        "def logged(fn):\n"
        "    def wrapped(filename, *a, **k):\n"
        "        hook('open', (str(filename),))\n"
        "        return fn(filename, *a, **k)\n"
        "    return wrapped\n"
        "safetensors.safe_open = safetensors.torch.safe_open = logged(safetensors.safe_open)\n"
        "safetensors.torch.load_file = logged(safetensors.torch.load_file)\n"
        "sys.argv = ['t2l', *sys.argv[3:]]\n"
        "try:\n    runpy.run_module('t2lcli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    )

    def opened(*args: str) -> set[str]:
        log = tmp_path / "opened.txt"
        res = subprocess.run([sys.executable, "-c", code, str(tiny_base_dir), str(log), *args], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return {Path(line).name for line in log.read_text().splitlines()}

    ck = str(tiny_checkpoint_dir)
    seen = opened("generate", "summarize text", "-c", ck, "-o", str(tmp_path / "ok"))
    assert (tmp_path / "ok" / "adapter_model.safetensors").exists()
    assert not any(name.endswith((".safetensors", ".bin", ".gguf")) for name in seen), seen
    seen = opened("generate", "summarize text", "-c", ck, "-o", str(tmp_path / "pv"), "--preview", "hello", "--max-new-tokens", "2")
    assert any(name.endswith(".safetensors") for name in seen), seen


def test_embedding_file(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    from safetensors.torch import save_file

    e = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1) * 4
    save_file({"embedding": e}, str(tmp_path / "e.safetensors"))
    res = runner.invoke(cli_app, ["generate", "--embedding-file", str(tmp_path / "e.safetensors"), "-o", str(tmp_path / "emb"), "-c", str(tiny_checkpoint_dir)])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "emb").iterdir())) == 3


def test_scale_and_scaling_recorded(tiny_checkpoint_dir):
    from t2lcli.engine.generate import GenerateOptions, Generator

    gen = Generator.load(str(tiny_checkpoint_dir))
    one = gen.generate(["summarize text"])[0]
    two = gen.generate(["summarize text"], GenerateOptions(scale=2.0, scaling="lora"))[0]
    k = next(k for k in one.tensors if ".lora_B." in k)
    assert_close(two.tensors[k], 2 * one.tensors[k])
    assert two.config["use_rslora"] is False and two.scaling == pytest.approx(16 / 8)
    assert one.scaling == pytest.approx(16 / 8**0.5)


def test_in_memory_apply_and_remove(tiny_checkpoint_dir, tiny_base_dir):
    from transformers import AutoModelForCausalLM

    from t2lcli.engine.generate import Generator

    gen = Generator.load(str(tiny_checkpoint_dir))
    ad = gen.generate(["write python code"])[0]
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir).eval()
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        ref = model(ids).logits
        h = gen.apply(model, ad)
        changed = model(ids).logits
        h.remove()
        back = model(ids).logits
    assert (changed - ref).abs().max() > 1e-4
    assert torch.equal(back, ref)  # bitwise: the same model, kernels and input once the hooks are gone


def test_deterministic_across_processes(tiny_checkpoint_dir, tmp_path):
    outs = []
    for seed in ("0", "123"):
        out = tmp_path / f"d{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "T2L_LOAD_PLUGINS": ""}
        subprocess.run([sys.executable, "-m", "t2lcli", "generate", "solve math", "-o", str(out), "-c", str(tiny_checkpoint_dir)], check=True, env=env, capture_output=True)
        outs.append(out)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md"):  # bitwise: same inputs, kernels, shapes
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_usage_errors_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "t2lcli", "generate", "--bogus"], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([sys.executable, "-m", "t2lcli", "nosuchcommand"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr


def test_version_and_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "t2lcli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("t2l ")
    r = subprocess.run([sys.executable, "-m", "t2lcli", "generate", "x", "-o", str(tmp_path / "o"), "-c", str(tmp_path / "missing")], capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "not found" in r.stderr
    assert Path(tmp_path / "o").exists() is False


def test_ctrl_c_during_batch_leaves_only_complete_adapters(tiny_checkpoint_dir, tmp_path):
    import signal
    import time

    from t2lcli.engine.adapters import load_adapter

    src = tmp_path / "many.txt"
    src.write_text("".join(f"task number {i} solve math\n" for i in range(400)))
    out = tmp_path / "batch"
    env = {**os.environ, "T2L_LOAD_PLUGINS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "t2lcli", "generate", "-f", str(src), "-o", str(out), "-c", str(tiny_checkpoint_dir), "--batch-size", "4"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            # SIGINT as a terminal delivers it, whatever this run inherited: a suite started in the
                            # background of a script (`cmd &`) ignores SIGINT, and so would t2l (exit 0, all 400 written)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len([p for p in out.iterdir() if not p.name.startswith(".")]) < 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    done = list(out.iterdir())
    assert all(not p.name.startswith(".") for p in done), [p.name for p in done]  # temp folders were cleaned up
    assert 3 <= len(done) < 400
    for p in done:
        load_adapter(p)  # every folder present is complete and valid


def test_non_finite_adapter_is_refused_per_item(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    """An overflow in one batch item names that item; --scale overflowing B is caught; nothing is written."""
    from t2lcli.engine.generate import Generator
    from t2lcli.errors import T2LError

    gen = Generator.load(tiny_checkpoint_dir)
    emb = gen.embed(["Sort the words.", "Reverse the words.", "Count the words."])
    ok = gen.adapters_from_embeddings(emb, ["a", "b", "c"])
    assert len(ok) == 3 and all(torch.isfinite(t).all() for ad in ok for t in ad.tensors.values())
    emb[1] = 3e38
    with pytest.raises(T2LError, match="item 2 has NaN/Inf"):
        gen.adapters_from_embeddings(emb, ["a", "b", "c"])
    res = runner.invoke(cli_app, ["generate", "Sort the words.", "-c", str(tiny_checkpoint_dir), "--scale", "1e40", "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "NaN/Inf" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_profile_encoder_dtype_reaches_generation(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    import json

    outs = {}
    for dtype in ("float32", "bfloat16", "auto"):
        out = tmp_path / dtype
        res = runner.invoke(cli_app, ["generate", "answer math word problems step by step", "-c", str(tiny_checkpoint_dir),
                                      "-o", str(out), "--set", f"encoder.dtype={dtype}"])
        assert res.exit_code == 0, res.output
        outs[dtype] = json.loads((out / "t2l_adapter.json").read_text())["encoder_dtype"]
    assert outs == {"float32": "float32", "bfloat16": "bfloat16", "auto": "float32"}  # auto keeps a tiny encoder in fp32


def test_an_over_long_description_is_truncated_and_said(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    """Generator.truncated counts descriptions cut to the encoder's token limit; `t2l generate` warns with it."""
    from t2lcli.engine.generate import Generator

    long = " ".join(["solve the math problem step by step"] * 80)  # ~560 tokens, over the tiny encoder's limit
    gen = Generator.load(str(tiny_checkpoint_dir))
    assert gen.truncated == 0
    gen.generate([long, "answer briefly"])
    assert gen.truncated == 1 and 0 < gen.max_length < 560
    res = runner.invoke(cli_app, ["generate", long, "-c", str(tiny_checkpoint_dir), "-o", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    assert f"1 description(s) exceeded the encoder's {gen.max_length}-token limit and were truncated" in res.stderr
