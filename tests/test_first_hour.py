"""Issue-level checks of the first hour with t2l: file modes, unreadable inputs, one description rule, '-' = stdin,
Hub ids and integer alphas in our adapters."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from numeric import assert_rel_error

from t2lcli.descriptions import description_problem, valid_text
from t2lcli.text import check_description


def _gen(runner, cli_app, ckpt, *args, input=None):
    return runner.invoke(cli_app, ["generate", *args, "-c", str(ckpt)], input=input)


# ------------------------------------------------------------------------------------------- 2. modes and permissions


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_every_written_file_honours_the_umask(runner, cli_app, tiny_checkpoint_dir, tiny_base_dir, tmp_path, umask022):
    ad, conv, merged = tmp_path / "ad", tmp_path / "conv", tmp_path / "merged"
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(ad)).exit_code == 0
    assert runner.invoke(cli_app, ["convert", str(tiny_checkpoint_dir), "-o", str(conv), "--dtype", "bf16"]).exit_code == 0
    res = runner.invoke(cli_app, ["merge", str(ad), "--into-base", "-m", str(tiny_base_dir), "-o", str(merged)])
    assert res.exit_code == 0, res.output
    for root in (ad, conv, merged):
        modes = _modes(root)
        assert modes and all(m == 0o644 for m in modes.values()), (root, {k: oct(v) for k, v in modes.items()})
    os.umask(0o077)
    private = tmp_path / "private"
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(private)).exit_code == 0
    assert set(_modes(private).values()) == {0o600}


def test_write_safetensors_is_the_one_writer():
    """No engine module calls safetensors' save_file directly (it writes 0600): all go through write_safetensors."""
    root = Path(__file__).resolve().parents[1] / "t2lcli"
    offenders = [str(p) for p in root.rglob("*.py") if "save_file(" in p.read_text() and p.name != "atomic.py"]
    assert not offenders


def test_unreadable_input_says_permission_denied(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch):
    ad = tmp_path / "ad"
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(ad)).exit_code == 0
    weights = str(ad / "adapter_model.safetensors")
    real_open = open

    def deny(file, *a, **k):  # root reads any file, so the refusal a normal user gets is simulated
        if str(file) == weights:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    res = runner.invoke(cli_app, ["inspect", str(ad)])
    assert res.exit_code == 1 and "permission denied" in res.output and "adapter_model.safetensors" in res.output, res.output
    assert "no such file" not in res.output.lower() and "missing" not in res.output
    batch = tmp_path / "b.txt"
    batch.write_text("x\n")
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", str(f)))
                        if str(f) == str(batch) else real_open(f, *a, **k))
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "--from-file", str(batch), "-o", str(tmp_path / "o"))
    assert res.exit_code == 1 and "permission denied" in res.output and "not found" not in res.output, res.output


def test_unreadable_adapter_as_another_user(request):
    """A real permission check: a 0600 adapter read by an unprivileged user (needs root to switch users)."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    try:
        import pwd

        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="t2l-perm-"))  # pytest's tmp_path is private to root
    os.chmod(tmp_path, 0o755)
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 1, "lora_alpha": 1, "target_modules": ["q_proj"]}))
    (ad / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    os.chmod(ad / "adapter_model.safetensors", 0o600)
    for p in [tmp_path, *tmp_path.parents]:
        if not os.access(p, os.X_OK) or not (p.stat().st_mode & stat.S_IXOTH):
            pytest.skip(f"{p} is not searchable by other users")
    try:
        res = subprocess.run([sys.executable, "-m", "t2lcli", "inspect", str(ad)], capture_output=True, text=True, timeout=120,
                             user=nobody.pw_uid, group=nobody.pw_gid, cwd=tmp_path,
                             env={**os.environ, "HOME": str(tmp_path), "T2L_HOME": str(tmp_path / "h")})
    except PermissionError:
        pytest.skip("this Python is not executable by other users")
    if "ModuleNotFoundError" in res.stderr or "site-packages" in res.stderr:
        pytest.skip("the virtual environment is not readable by other users")
    assert res.returncode == 1 and "permission denied" in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------- 7. one description rule


INVISIBLE = ["\x01\x02\x03", "\u200b\u200b", "\u200d\ufeff\u2060", "...", "?!", " \t\u3000 ", "\u0301\u0301", "\x7f"]
VISIBLE = ["2+2", "日本語に翻訳する", "😀 emoji tasks", "x", "Solve math."]


@pytest.mark.parametrize("text", INVISIBLE)
def test_invisible_descriptions_refused(text):
    assert description_problem(text) is not None
    with pytest.raises(Exception, match="no visible text|empty description"):
        check_description(text)


@pytest.mark.parametrize("text", VISIBLE)
def test_visible_descriptions_accepted(text):
    assert description_problem(text) is None
    assert valid_text(text) == text


@pytest.mark.parametrize("text", ["\x01\x02\x03", "\u200b", "..."])
def test_every_entry_point_refuses_invisible(runner, cli_app, tiny_checkpoint_dir, tmp_path, text):
    out = tmp_path / "o"
    res = _gen(runner, cli_app, tiny_checkpoint_dir, text, "-o", str(out))
    assert res.exit_code == 1 and "no visible text" in res.output and not out.exists(), res.output
    assert res.output.count("\n") <= 3 and "Traceback" not in res.output
    f = tmp_path / "b.txt"
    f.write_text(f"good task\n{text}\n", encoding="utf-8")
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "--from-file", str(f), "-o", str(out))
    assert res.exit_code == 1 and "line 2" in res.output and "no visible text" in res.output, res.output
    res = runner.invoke(cli_app, ["merge", "-c", str(tiny_checkpoint_dir), "--description", "good task", "--description", text, "-o", str(out)])
    assert res.exit_code == 1 and "no visible text" in res.output, res.output
    res = runner.invoke(cli_app, ["eval", "--tasks", "gsm8k", "--conditions", "desc-prompt", "--description", text, "-o", str(tmp_path / "e")])
    assert res.exit_code == 1 and "no visible text" in res.output, res.output
    from t2lcli.engine.generate import Generator

    with pytest.raises(Exception, match="no visible text"):
        Generator.load(str(tiny_checkpoint_dir)).generate(text)


def test_generator_generate_takes_a_string(tiny_checkpoint_dir):
    from t2lcli.engine.adapters import Adapter
    from t2lcli.engine.generate import Generator

    gen = Generator.load(str(tiny_checkpoint_dir))
    one = gen.generate("answer math word problems")
    assert isinstance(one, Adapter) and one.meta["description"] == "answer math word problems"
    many = gen.generate(["answer math word problems", "translate to french"])
    assert isinstance(many, list) and len(many) == 2


# ------------------------------------------------------------------------------------------- 6. '-' is standard input


def test_dash_reads_descriptions_from_stdin(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    out = tmp_path / "o"
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "-", "-o", str(out), input="classify sentiment\ntranslate to french\n")
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"classify-sentiment", "translate-to-french"}
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "-", "--from-file", "x.txt", "-o", str(out))
    assert res.exit_code != 0 and "not both" in res.output


def test_dash_for_descriptions_file_and_recipe(monkeypatch):
    import io

    from t2lcli.engine.evaluate import read_descriptions_file
    from t2lcli.recipe import load_recipe

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"gsm8k": ["Solve math word problems."]}')))
    assert read_descriptions_file("-") == {"gsm8k": ["Solve math word problems."]}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"train:\n  steps: 7\n")))
    assert load_recipe("-").train.steps == 7


# ------------------------------------------------------------------------------------------- 4. Hub ids, integer alpha


def test_adapter_records_hub_id_and_integer_alpha(tmp_path):
    from t2lcli.engine.adapters import alpha_value, hub_base_id, peft_config

    cfg = peft_config(8, 16.0, ["q_proj"], "smollm2-135m-instruct")
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg["lora_alpha"] == 16 and isinstance(cfg["lora_alpha"], int)
    assert alpha_value(22.5) == 22.5
    assert hub_base_id("/some/local/folder") == "/some/local/folder"
    assert hub_base_id("huggingfacetb/smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_compat_peft_and_ollama_pass_on_our_output(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    import torch

    from t2lcli.engine.adapters import Adapter, peft_config, save_adapter

    ad = tmp_path / "ad"
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(ad)).exit_code == 0
    cfg = json.loads((ad / "adapter_config.json").read_text())
    assert isinstance(cfg["lora_alpha"], int)
    res = runner.invoke(cli_app, ["inspect", str(ad), "--compat", "peft", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["compatible"], res.output
    ollama = json.loads(runner.invoke(cli_app, ["inspect", str(ad), "--compat", "ollama", "--json"]).stdout)
    status = {c["check"]: c["status"] for c in ollama["checks"]}
    # the default (rsLoRA, the reference's format) fails Ollama on the scale alone: Ollama applies alpha/r
    assert status["lora_alpha"] == "ok" and [k for k, v in status.items() if v == "fail"] == ["scale"], status
    assert "--scaling folded" in {c["check"]: c["detail"] for c in ollama["checks"]}["scale"]
    # --scaling folded: the trained scale folded into lora_B, lora_alpha = r; every check passes for peft and Ollama
    fo = tmp_path / "folded"
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "--scaling", "folded", "-o", str(fo))
    assert res.exit_code == 0, res.output
    fcfg = json.loads((fo / "adapter_config.json").read_text())
    assert (fcfg["lora_alpha"], fcfg["use_rslora"]) == (fcfg["r"], False) and isinstance(fcfg["lora_alpha"], int)
    for runtime in ("peft", "ollama", "vllm", "sglang"):
        res = runner.invoke(cli_app, ["inspect", str(fo), "--compat", runtime, "--json"])
        rep = json.loads(res.stdout)
        assert res.exit_code == 0 and rep["compatible"], (runtime, res.output)
        assert all(c["status"] == "ok" for c in rep["checks"] if c["check"] == "scale"), (runtime, rep["checks"])
    # ... and the same delta W as the rsLoRA adapter, as peft applies it (scaling x B @ A per module)
    from t2lcli.engine.adapters import load_adapter

    rs, fd = load_adapter(ad), load_adapter(fo)
    assert fd.scaling == 1.0 and rs.scaling == pytest.approx(16 / 8**0.5) and rs.prefixes() == fd.prefixes()
    for pre in rs.prefixes():
        a, b = rs.tensors[f"{pre}.lora_A.weight"].double(), rs.tensors[f"{pre}.lora_B.weight"].double()
        want = rs.scaling * b @ a
        got = fd.tensors[f"{pre}.lora_B.weight"].double() @ fd.tensors[f"{pre}.lora_A.weight"].double()
        # float64 products, so the only difference is the float32 rounding of s*B: relative to the terms' magnitude
        terms = float((rs.scaling * b.abs() @ a.abs()).max())
        assert torch.equal(fd.tensors[f"{pre}.lora_A.weight"], rs.tensors[f"{pre}.lora_A.weight"])  # bitwise: A is copied
        assert_rel_error(float((got - want).abs().max()) / terms, depth=1, msg=pre)
    exp = tmp_path / "ollama"
    res = runner.invoke(cli_app, ["merge", str(ad), "--export", "ollama", "--runtime-base", "smollm2:135m", "-o", str(exp)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli_app, ["inspect", str(exp), "--compat", "ollama", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["compatible"], res.output
    # an adapter for the embedded default names the base by its Hub id; a bare registry name is flagged for peft
    t = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
         "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2)}
    hub = save_adapter(Adapter(peft_config(2, 4.0, ["q_proj"], "smollm2-135m-instruct"), t), tmp_path / "hub")
    cfg = json.loads((hub / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and cfg["lora_alpha"] == 4
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in (hub / "README.md").read_text()
    res = runner.invoke(cli_app, ["inspect", str(hub), "--compat", "peft", "--json"])
    assert res.exit_code == 0, res.output
    cfg["base_model_name_or_path"] = "smollm2-135m-instruct"
    (hub / "adapter_config.json").write_text(json.dumps(cfg))
    res = runner.invoke(cli_app, ["inspect", str(hub), "--compat", "peft", "--json"])
    fails = {c["check"]: c for c in json.loads(res.stdout)["checks"] if c["status"] == "fail"}
    assert res.exit_code == 1 and "HuggingFaceTB/SmolLM2-135M-Instruct" in fails["base model"]["fix"]


@pytest.mark.slow
def test_hub_id_of_the_default_base_resolves_offline():
    from t2lcli.engine.base_model import resolve_model

    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == resolve_model("smollm2-135m-instruct")


def test_import_t2lcli_is_light_and_load_base_is_public():
    code = ("import sys, t2lcli; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(t2lcli.load_base) and 'torch' not in sys.modules; "
            "G = t2lcli.Generator; assert G.__name__ == 'Generator'; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# ------------------------------------------------------------------------------------------- 5. consistency

COMMANDS = ["generate", "inspect", "eval", "bench", "merge", "convert", "train"]


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_errors_exit_2_in_every_command(runner, cli_app, command):
    for args in ([command, "--no-such-flag"], [command, "--profile"]):  # an unknown flag; a flag without its value
        res = runner.invoke(cli_app, args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output


@pytest.mark.parametrize("args", [["generate"], ["generate", "x", "--from-file", "f.txt"], ["generate", "x", "--preview-all"],
                                  ["train"], ["train", "default", "-o", "r", "--resume", "--force"]])
def test_argument_combinations_are_usage_errors(runner, cli_app, args):
    res = runner.invoke(cli_app, args)
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output, res.output


# (arguments, exit code, part of the one error line): a flag value out of range or not among its choices and flags that
# contradict each other are usage errors (2); a missing file or folder a flag names is an error (1). Either way the
# check runs before torch is imported: a typo never waits for the engine.
CHEAP_CHECKS = [
    (["bench", "--runs", "0"], 2, "--runs must be at least 1"),
    (["bench", "--batch-size", "1,x"], 2, "--batch must be comma-separated integers"),
    (["bench", "--shapes", "gpt-5"], 2, "unknown shapes"),
    (["bench", "--checkpoint", "no/such"], 1, "checkpoint not found"),
    (["generate", "x", "--batch-size", "0"], 2, "--batch-size must be at least 1"),
    (["generate", "x", "--max-new-tokens", "0"], 2, "--max-new-tokens must be at least 1"),
    (["generate", "x", "--scaling", "none"], 2, "--scaling must be one of rslora, lora, folded"),
    (["generate", "--from-file", "no-such.jsonl"], 1, "batch file not found"),
    (["generate", "--embedding-file", "no-such.safetensors"], 1, "embedding file not found"),
    (["generate", "x", "-c", "no-such-ckpt"], 1, "checkpoint not found"),
    (["merge", "a", "b"], 2, "give an output folder"),
    (["merge", "a", "b", "-o", "m", "--method", "average"], 2, "unknown method"),
    (["merge", "a", "b", "-o", "m", "--weights", "1,x"], 2, "is not a number"),
    (["merge", "a", "b", "-o", "m", "--method", "cat", "--rank", "4"], 2, "--rank does not apply to --method cat"),
    (["merge", "no-such-a", "no-such-b", "-o", "m"], 1, "adapter folder not found"),
    (["inspect", "no-such-adapter"], 1, "not found: no-such-adapter"),
    (["inspect", "x", "--compat", "tgi"], 2, "unknown runtime"),
    (["inspect", "a", "b", "--similarity", "--space", "pixels"], 2, "unknown --space"),
    (["inspect", "x", "--clusters", "0"], 2, "--clusters must be at least 1"),
    (["convert", "no-such-ckpt", "-o", "c"], 1, "checkpoint not found"),
    (["eval", "-t", "gsm8k", "--limit", "0"], 2, "--limit must be a positive"),
    (["eval", "-t", "gsm8k", "--num-fewshot", "-1"], 2, "--num-fewshot"),
    (["eval", "-t", "gsm8k", "--conditions", "base,oracle"], 2, "unknown condition"),
    (["eval", "-t", "gsm8k,gsm9k", "--limit", "1"], 2, "unknown task: gsm9k"),
    (["merge", "a", "b", "-o", "m", "--method", "ties", "--weights", "0,0"], 2, "all weights are zero"),
    (["train", "smoke", "-o", "r", "--max-steps", "0"], 2, "--max-steps must be at least 1"),
    (["train", "smoke", "-o", "r", "--set", "train.no_such_key=1"], 2, "unknown key 'train.no_such_key'"),
    (["train", "smoke", "-o", "r", "--set", "train.steps=many"], 2, "train.steps: expected int"),
    (["train", "smoke", "-o", "r", "--time-budget", "0"], 2, "--time-budget must be a positive"),
    (["serve", "--port", "70000"], 2, "--port must be at most 65535"),
    (["serve", "--max-batch", "0"], 2, "--max-batch must be at least 1"),
    (["serve", "-c", "no-such-ckpt"], 1, "checkpoint not found"),
]


@pytest.mark.parametrize(("args", "code", "needle"), CHEAP_CHECKS, ids=[" ".join(a) for a, _, _ in CHEAP_CHECKS])
def test_bad_values_fail_before_torch_with_the_right_code(tmp_path, args, code, needle):
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['t2l', *{args!r}]\n"
        "try:\n    runpy.run_module('t2lcli', run_name='__main__')\n"
        "except SystemExit as e:\n    sys.stderr.write(f'\\nEXIT:{e.code}\\n')\n"
        "sys.stderr.write('HEAVY:' + ','.join(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))\n"
    )
    env = {**os.environ, "T2L_HOME": str(tmp_path / "home")}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    err = res.stderr
    assert f"EXIT:{code}" in err, err
    assert "Traceback" not in err and needle in err, err
    assert err.split("HEAVY:")[1].strip() == "", f"t2l {' '.join(args)} imported {err.split('HEAVY:')[1]} before refusing"
    assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == 1, err


def test_the_cli_copies_of_engine_lists_are_equal():
    """The command modules check names against copies of the engine's lists (the engine modules import torch)."""
    from t2lcli.commands import inspect as inspect_cmd
    from t2lcli.commands import merge as merge_cmd

    from t2lcli.engine import inspect
    from t2lcli.engine.checkpoint import SHIPPED
    from t2lcli.engine.merge import algebra as merge
    from t2lcli.engine.merge import export
    from t2lcli.options import SHIPPED_CHECKPOINTS

    assert merge_cmd.METHODS == merge.METHODS and merge_cmd.EXPORTS == export.RUNTIMES
    assert inspect_cmd.COMPAT_RUNTIMES == inspect.RUNTIMES and tuple(SHIPPED) == SHIPPED_CHECKPOINTS


def test_short_flags_mean_the_same_everywhere():
    """-b is the batch size and -n the document limit wherever they exist; -o output, -c checkpoint, -m base model."""
    import click
    import typer.main

    from t2lcli.cli import app

    group = typer.main.get_command(app)
    meaning: dict[str, set[str]] = {}
    for cmd in group.commands.values():
        for p in cmd.params:
            if isinstance(p, click.Option):
                for short in [o for o in p.opts if len(o) == 2]:
                    meaning.setdefault(short, set()).add(max(p.opts, key=len))
    assert all(len(v) == 1 for v in meaning.values()), meaning


def test_one_dtype_spelling_table(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    from t2lcli.hw_profiles import load_profile

    for spelling, canonical in (("bf16", "bfloat16"), ("bfloat16", "bfloat16"), ("fp16", "float16"), ("float32", "float32")):
        assert load_profile("cpu", [f"base.dtype={spelling}"]).base.dtype == canonical
    for i, spelling in enumerate(("bf16", "bfloat16")):
        res = _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(tmp_path / f"g{i}"), "--dtype", spelling)
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli_app, ["convert", str(tiny_checkpoint_dir), "-o", str(tmp_path / f"c{i}"), "--dtype", spelling, "--json"])
        assert res.exit_code == 0 and json.loads(res.stdout)["dtype"] == "bfloat16", res.output


def test_inspect_default_checkpoint(runner, cli_app):
    res = runner.invoke(cli_app, ["inspect", "default", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kind"].startswith("t2l-checkpoint")


def test_preview_of_a_batch_names_its_adapter(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    f = tmp_path / "b.txt"
    f.write_text("answer math questions\ntranslate to french\n")
    out = tmp_path / "o"
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "--from-file", str(f), "-o", str(out), "--preview", "hi", "--max-new-tokens", "2")
    assert res.exit_code == 0, res.output
    assert f"adapter: {out / 'answer-math-questions'} (the first of the batch" in res.stdout
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "--from-file", str(f), "-o", str(out), "--force", "--preview", "hi",
               "--preview-all", "--max-new-tokens", "2", "--json")
    assert res.exit_code == 0, res.output
    previews = [json.loads(line)["preview"]["adapter"] for line in res.stdout.splitlines() if '"preview"' in line]
    assert previews == [str(out / "answer-math-questions"), str(out / "translate-to-french")]


def test_bench_plan_defaults_to_the_profiles_model(runner, cli_app):
    cpu = json.loads(runner.invoke(cli_app, ["bench", "--plan", "--json"]).stdout)
    assert cpu["shapes"] == "smollm2-135m" and cpu["gpu"] is False
    assert not any("CUDA" in line["item"] for line in cpu["lines"]) and cpu["host_gib"] > 0
    gpu = json.loads(runner.invoke(cli_app, ["bench", "--plan", "--profile", "gpu-16gb", "--json"]).stdout)
    assert gpu["shapes"] == "llama-3.1-8b" and any("CUDA" in line["item"] for line in gpu["lines"])
    text = runner.invoke(cli_app, ["bench", "--plan"]).stdout
    assert "host GiB" in text and "CUDA" not in text
