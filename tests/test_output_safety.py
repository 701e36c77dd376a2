"""`--force` replaces only a previous t2l output, in every writer (the rule lives in t2lcli.engine.atomic)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from t2lcli.engine.atomic import TMP_MARK, check_output_free, check_report_free, t2l_output_kind
from t2lcli.errors import OutputExistsError


def _user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine\n")
    (path / "sub").mkdir()
    (path / "sub" / "data.csv").write_text("a,b\n")
    return path


def _intact(path: Path) -> None:
    assert (path / "notes.txt").read_text() == "mine\n"
    assert (path / "sub" / "data.csv").read_text() == "a,b\n"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(TMP_MARK)]


def _one_line_refusal(res, needle: str) -> None:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert needle in res.output, res.output
    assert "pass --force" not in res.output  # the hint never offers what would be refused


def _gen(runner, cli_app, ckpt, *args):
    return runner.invoke(cli_app, ["generate", *args, "-c", str(ckpt)])


def test_rule_kinds_and_refusals(tmp_path):
    assert t2l_output_kind(tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert t2l_output_kind(tmp_path / "empty") == "an empty folder"
    user = _user_folder(tmp_path / "user")
    with pytest.raises(OutputExistsError, match=r"notes\.txt, sub/"):
        check_output_free(user, force=True)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_free(tmp_path / "file.txt", force=True)
    # a marker with a wrong payload does not count (run.json / results.json are common names)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(json.dumps({"accuracy": 1}))
    with pytest.raises(OutputExistsError, match="did not write"):
        check_output_free(tmp_path / "r", force=True)
    (tmp_path / "r" / "results.json").write_text(json.dumps({"format": "t2l-eval-results"}))
    check_output_free(tmp_path / "r", force=True)
    with pytest.raises(OutputExistsError, match="replaces only"):
        check_output_free(tmp_path / "r", force=True, replaces=("a t2l adapter",))
    with pytest.raises(OutputExistsError) as exc:
        check_output_free(tmp_path / "r", force=False)
    assert "--force" in (exc.value.hint or "")


def test_generate_force_refuses_user_folder_and_file(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    user = _user_folder(tmp_path / "mine")
    _one_line_refusal(_gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(user), "--force"), "notes.txt")
    _intact(user)
    f = tmp_path / "file.bin"
    f.write_bytes(b"keep")
    _one_line_refusal(_gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(f), "--force"), "is a file")
    assert f.read_bytes() == b"keep"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_MARK)]
    # a previous adapter is replaced; one holding a nested batch is not
    ad = tmp_path / "ad"
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "answer math questions", "-o", str(ad)).exit_code == 0
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "translate to french", "-o", str(ad), "--force").exit_code == 0
    assert "translate to french" in (ad / "README.md").read_text()
    (ad / "nested").mkdir()
    (ad / "nested" / "x.txt").write_text("x")
    _one_line_refusal(_gen(runner, cli_app, tiny_checkpoint_dir, "answer math", "-o", str(ad), "--force"), "nested/")
    assert (ad / "nested" / "x.txt").is_file()


def test_default_layout_single_beside_batch(runner, cli_app, tiny_checkpoint_dir, tmp_path, monkeypatch):
    """A single adapter with the default -o goes to out/<slug>/, a batch to out/<name>/: following the --force hint
    replaces only that one adapter."""
    monkeypatch.chdir(tmp_path)
    res = _gen(runner, cli_app, tiny_checkpoint_dir, "Answer math word problems.")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "answer-math-word-problems" / "adapter_model.safetensors").is_file()
    (tmp_path / "batch.txt").write_text("classify sentiment\ntranslate english to french\n")
    assert runner.invoke(cli_app, ["generate", "--from-file", "batch.txt", "-c", str(tiny_checkpoint_dir)]).exit_code == 0
    batch = {p.name for p in (tmp_path / "out").iterdir()}
    assert batch == {"answer-math-word-problems", "classify-sentiment", "translate-english-to-french"}
    again = _gen(runner, cli_app, tiny_checkpoint_dir, "Answer math word problems.")
    assert again.exit_code == 1 and "pass --force" in again.output
    assert _gen(runner, cli_app, tiny_checkpoint_dir, "Answer math word problems.", "--force").exit_code == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == batch
    # a batch into an adapter folder is refused (it would nest output inside an adapter)
    res = runner.invoke(cli_app, ["generate", "--from-file", "batch.txt", "-c", str(tiny_checkpoint_dir), "-o", "out/classify-sentiment"])
    assert res.exit_code == 1 and "a t2l adapter" in res.output


def test_merge_force_refuses_user_folder(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for p, d in ((a, "answer math"), (b, "translate french")):
        assert _gen(runner, cli_app, tiny_checkpoint_dir, d, "-o", str(p)).exit_code == 0
    user = _user_folder(tmp_path / "mine")
    _one_line_refusal(runner.invoke(cli_app, ["merge", str(a), str(b), "-o", str(user), "--force"]), "notes.txt")
    _intact(user)
    out = tmp_path / "merged"
    assert runner.invoke(cli_app, ["merge", str(a), str(b), "-o", str(out)]).exit_code == 0
    assert runner.invoke(cli_app, ["merge", str(a), str(b), "-o", str(out), "--force"]).exit_code == 0


def test_convert_force_refuses_user_folder(runner, cli_app, tiny_checkpoint_dir, tmp_path):
    user = _user_folder(tmp_path / "mine")
    _one_line_refusal(runner.invoke(cli_app, ["convert", str(tiny_checkpoint_dir), "-o", str(user), "--force"]), "notes.txt")
    _intact(user)
    out = tmp_path / "conv"
    assert runner.invoke(cli_app, ["convert", str(tiny_checkpoint_dir), "-o", str(out)]).exit_code == 0
    assert t2l_output_kind(out) == "a t2l checkpoint"
    assert runner.invoke(cli_app, ["convert", str(tiny_checkpoint_dir), "-o", str(out), "--force"]).exit_code == 0
    # an adapter folder is not a checkpoint folder, but both are t2l's: replaced only on --force
    f = tmp_path / "f"
    f.write_text("x")
    _one_line_refusal(runner.invoke(cli_app, ["convert", str(tiny_checkpoint_dir), "-o", str(f), "--force"]), "is a file")


def test_train_force_refuses_user_folder(tmp_path):
    from t2lcli.engine.train import RUN_NAME, check_output

    user = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        check_output(user, None, resume=False, force=True)  # type: ignore[arg-type]
    _intact(user)
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_NAME).write_text(json.dumps({"fingerprint": "x", "recipe": {}}))
    (run / "checkpoints").mkdir()
    assert check_output(run, None, resume=False, force=True) is False  # type: ignore[arg-type]
    assert not run.exists()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output(f, None, resume=False, force=True)  # type: ignore[arg-type]


def test_eval_output_refuses_user_folder(tmp_path):
    from t2lcli.engine.evaluate import EvalRequest, _resolve_output

    user = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        _resolve_output(EvalRequest(tasks="gsm8k", output=user, force=True))
    _intact(user)
    (tmp_path / "empty").mkdir()
    assert _resolve_output(EvalRequest(tasks="gsm8k", output=tmp_path / "empty")) == tmp_path / "empty"
    prev = tmp_path / "prev"
    prev.mkdir()
    (prev / "results.json").write_text(json.dumps({"format": "t2l-eval-results", "rows": {}}))
    with pytest.raises(OutputExistsError, match="already holds results"):
        _resolve_output(EvalRequest(tasks="gsm8k", output=prev))
    assert _resolve_output(EvalRequest(tasks="gsm8k", output=prev, force=True)) == prev
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        _resolve_output(EvalRequest(tasks="gsm8k", output=f, force=True))


def test_bench_output_replaces_only_a_report(runner, cli_app, tmp_path):
    mine = tmp_path / "notes.json"
    mine.write_text('{"mine": 1}\n')
    res = runner.invoke(cli_app, ["bench", "--plan", "--shapes", "llama-3.1-8b", "-o", str(mine)])
    assert res.exit_code == 1 and "did not write" in res.output, res.output
    assert mine.read_text() == '{"mine": 1}\n'
    rep = tmp_path / "plan.json"
    assert runner.invoke(cli_app, ["bench", "--plan", "--shapes", "llama-3.1-8b", "-o", str(rep)]).exit_code == 0
    assert json.loads(rep.read_text())["schema"].startswith("t2l-bench")
    check_report_free(rep)  # an earlier report may be replaced
    assert runner.invoke(cli_app, ["bench", "--plan", "--shapes", "llama-3.1-8b", "-o", str(rep)]).exit_code == 0
