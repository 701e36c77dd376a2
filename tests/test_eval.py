"""`t2l eval` on the tiny model: every condition, the correctness traps, bad input; a slow SmolLM2 run."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from numeric import TINY_LLAMA_DEPTH, assert_close, assert_rel_error, close

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine spinning OpenMP workers make each small
    matmul wait for a descheduled sibling (measured here: 30 s instead of 2 s for one test)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cli(args: list[str]):
    from conftest import CliRunner

    return CliRunner().invoke(None, ["eval", *args])


def _samples(out: Path, row: str, task: str, i: int = 0) -> list[dict]:
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in row)
    path = out / "samples" / f"{name}__{task}__{i}.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _make_adapters(ckpt_dir: Path, tmp: Path) -> dict[str, Path]:
    """A generated adapter, a second one (the 'multi-task LoRA'), and an all-zero one, as PEFT folders."""
    from t2lcli.engine.adapters import Adapter, save_adapter
    from t2lcli.engine.generate import Generator

    gen = Generator.load(ckpt_dir)
    a, b = gen.generate(["classify sentiment of reviews", "translate english to french"])
    paths = {"gen": tmp / "ad_sent", "mt": tmp / "mt_lora", "zero": tmp / "zero"}
    gen.save(a, paths["gen"])
    gen.save(b, paths["mt"])
    save_adapter(Adapter(dict(a.config), {k: torch.zeros_like(v) for k, v in a.tensors.items()}, {"description": "zeros"}), paths["zero"])
    return paths


@pytest.fixture(scope="module")
def full_run(tiny_checkpoint_dir, tmp_path_factory):
    """One run with every condition on two tasks (one generative, one multiple-choice), samples logged."""
    tmp = tmp_path_factory.mktemp("eval_full")
    ads = _make_adapters(tiny_checkpoint_dir, tmp)
    out = tmp / "res"
    args = ["--tasks", "gsm8k,arc_easy", "-c", str(tiny_checkpoint_dir), "--limit", "3", "--max-new-tokens", "6",
            "--conditions", "base,desc-prompt,t2l,t2l-control,adapter,lora",
            "--description", "gsm8k=answer math word problems step by step", "--description", "arc_easy=answer the question",
            "--description", "arc_easy=name the capital city of a country",
            "--adapter", str(ads["gen"]), "--adapter", str(ads["zero"]), "--lora", str(ads["mt"]),
            "-o", str(out), "--log-samples", "--json", "--seed", "3"]
    res = _cli(args)
    assert res.exit_code == 0, res.output
    return {"out": out, "res": res, "adapters": ads, "ckpt": tiny_checkpoint_dir}


def test_every_condition_is_a_row(full_run):
    doc = json.loads((full_run["out"] / "results.json").read_text())
    assert doc["status"] == "complete"
    assert doc["order"] == ["base", "desc-prompt", "t2l", "t2l-control", "adapter:ad_sent", "adapter:zero", "lora"]
    for name in doc["order"]:
        row = doc["rows"][name]
        assert set(row["tasks"]) == {"gsm8k", "arc_easy"}, name
        for task, cell in row["tasks"].items():
            assert cell["n"] == 3 and 0.0 <= cell["score"] <= 1.0, (name, task)
            if cell["n_variants"] == 1:  # one run: the cell is lm-eval's own score and standard error
                assert cell["score"] == cell["variants"][0]["score"] and cell["stderr"] == pytest.approx(cell["variants"][0]["stderr"])
        assert row["average"] == pytest.approx((row["tasks"]["gsm8k"]["score"] + row["tasks"]["arc_easy"]["score"]) / 2)
    # descriptions: scoped per task; two for arc_easy -> two variants averaged
    assert doc["rows"]["desc-prompt"]["tasks"]["arc_easy"]["n_variants"] == 2
    assert doc["rows"]["t2l"]["tasks"]["gsm8k"]["n_variants"] == 1
    cell = doc["rows"]["t2l"]["tasks"]["arc_easy"]
    assert cell["score"] == pytest.approx(sum(v["score"] for v in cell["variants"]) / 2)
    # the control uses another benchmark's shipped descriptions (3), never this task's
    from t2lcli.engine.eval.datasets import CONTROL_OF, default_descriptions

    ctrl = doc["provenance"]["control"]["gsm8k"]
    assert ctrl["from_task"] == CONTROL_OF["gsm8k"] != "gsm8k"
    assert ctrl["descriptions"] == default_descriptions()[CONTROL_OF["gsm8k"]]
    assert [v["info"]["description"] for v in doc["rows"]["t2l-control"]["tasks"]["gsm8k"]["variants"]] == ctrl["descriptions"]


def test_provenance_csv_table_and_json_stdout(full_run):
    out, res = full_run["out"], full_run["res"]
    doc = json.loads((out / "results.json").read_text())
    p = doc["provenance"]
    ck_sha = hashlib.sha256((full_run["ckpt"] / "hypernet.safetensors").read_bytes()).hexdigest()
    assert p["checkpoint"]["sha256"] == ck_sha
    assert p["tool_version"] and p["lm_eval_version"] == "0.4.13" and p["date"]
    assert p["seed"] == 3 and p["limits"] == {"gsm8k": 3, "arc_easy": 3}
    assert p["model"]["dtype"] == "float32" and p["model"]["chat_template"] is True
    assert p["descriptions"]["gsm8k"] == ["answer math word problems step by step"]
    assert p["adapters"]["adapter:ad_sent"][0]["sha256"] == hashlib.sha256((full_run["adapters"]["gen"] / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert doc["tasks"]["gsm8k"]["source"]["test"]["sha256"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["condition"], r["task"]) for r in rows} >= {("base", "gsm8k"), ("lora", "arc_easy"), ("t2l", "average")}
    assert all(r["checkpoint_sha256"] == ck_sha and r["seed"] == "3" for r in rows)
    table = (out / "table.txt").read_text()
    assert "t2l-control" in table and "gsm8k (exact_match, n=3)" in table and "±" in table
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["output"] == str(out)
    assert summary["rows"]["base"]["tasks"]["arc_easy"]["score"] == doc["rows"]["base"]["tasks"]["arc_easy"]["score"]


def test_zero_adapter_scores_exactly_like_base_and_others_differ(full_run):
    out = full_run["out"]
    for task in ("arc_easy", "gsm8k"):
        base, zero = _samples(out, "base", task), _samples(out, "adapter:zero", task)
        assert [s["resps"] for s in base] == [s["resps"] for s in zero], task
    doc = json.loads((out / "results.json").read_text())
    assert doc["rows"]["adapter:zero"]["tasks"] == {k: {**v, "seconds": doc["rows"]["adapter:zero"]["tasks"][k]["seconds"],
                                                        "variants": doc["rows"]["adapter:zero"]["tasks"][k]["variants"]}
                                                    for k, v in doc["rows"]["base"]["tasks"].items()}
    # a real adapter does change the log-likelihoods (so the comparison above can fail)
    gen = _samples(out, "adapter:ad_sent", "arc_easy")
    assert [s["resps"] for s in gen] != [s["resps"] for s in _samples(out, "base", "arc_easy")]


def test_description_is_prepended_once_through_the_chat_template(full_run):
    out = full_run["out"]
    base = _samples(out, "base", "arc_easy")[0]["arguments"]
    desc = _samples(out, "desc-prompt", "arc_easy", 1)[0]["arguments"]
    b_ctx, d_ctx = base[0][0], desc[0][0]
    assert b_ctx.startswith("<s>user: Question: ") and b_ctx.count("<s>") == 1 and b_ctx.endswith("assistant:")
    assert d_ctx == b_ctx.replace("<s>user: ", "<s>user: name the capital city of a country\n\n", 1)
    gsm = _samples(out, "desc-prompt", "gsm8k")[0]["arguments"][0][0]
    assert gsm.startswith("<s>user: answer math word problems step by step\n\nQuestion: ") and gsm.count("<s>") == 1


def test_no_double_bos_reaches_the_model(tiny_base_dir, tmp_path, monkeypatch):
    """The template emits <s> and the tokenizer would add another: exactly one BOS per sequence must reach the model."""
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.eval import EvalRequest, run_eval

    seen: list[torch.Tensor] = []
    real = load_base_model

    def spy(*a, **k):
        model, tok = real(*a, **k)
        def record(m, args, kwargs):
            if kwargs.get("past_key_values") is None:  # a pass that starts a sequence (not one continuing a KV cache)
                seen.append((kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).clone())

        model.register_forward_pre_hook(record, with_kwargs=True)
        return model, tok

    monkeypatch.setattr("t2lcli.engine.base_model.load_base_model", spy)
    sni = _sni_task(tmp_path)  # generation with short prompts (GSM8K questions overflow the tiny model's 256 positions)
    doc = run_eval(EvalRequest(tasks=f"arc_easy,sni:{sni}", conditions=["base"], base_model=str(tiny_base_dir), limit=2,
                               max_new_tokens=3, output=tmp_path / "o"), _profile())
    assert doc["status"] == "complete" and seen
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base_dir)
    assert tok("x").input_ids[0] == tok.bos_token_id  # the tokenizer alone WOULD add a BOS
    for ids in seen:
        for row in ids:
            assert int((row == tok.bos_token_id).sum()) == 1, tok.decode(row.tolist())
            assert int(row[row != tok.pad_token_id][0]) == tok.bos_token_id  # and it is the first real token


def _profile():
    from t2lcli.hardware import load_profile

    return load_profile("cpu")


def test_fewshot_examples_reach_the_prompt(tiny_base_dir, tmp_path):
    from t2lcli.engine.eval.datasets import _load_local, package_data_dir

    out = tmp_path / "fs"
    res = _cli(["--tasks", "gsm8k,arc_easy", "--conditions", "base", "-m", str(tiny_base_dir), "--limit", "1", "--num-fewshot", "2",
                "--max-new-tokens", "3", "-o", str(out), "--log-samples"])
    assert res.exit_code == 0, res.output
    pool, _ = _load_local(str(package_data_dir()), "gsm8k", "train")
    prompt = _samples(out, "base", "gsm8k")[0]["arguments"][0][0]
    shots = [d for d in pool if d["question"] in prompt]
    assert len(shots) == 2  # two training questions in the prompt ...
    for d in shots:  # ... each answered by its worked solution (the reference silently dropped these)
        assert "#### " + d["answer"].split("####")[-1].strip() in prompt
    assert prompt.count("<s>user:") == 3 and prompt.count("<s>assistant:") == 2  # multi-turn few-shot, template once per turn
    test_doc, _ = _load_local(str(package_data_dir()), "gsm8k", "test")
    assert prompt.count(test_doc[0]["question"]) == 1
    arc_pool, _ = _load_local(str(package_data_dir()), "arc_easy", "train")
    arc_prompt = _samples(out, "base", "arc_easy")[0]["arguments"][0][0]
    assert sum(d["question"] in arc_prompt for d in arc_pool) == 2


@pytest.mark.parametrize(
    "text, expected",
    [("The answer is 1,234.", "1234"), ("so she has -5 apples", "-5"), ("It costs $12.50 in total", "12.5"), ("#### 72", "72"),
     ("3 + 4 = 7.0", "7"), ("she paid $1,000.00.", "1000"), ("no number here", "[invalid]"), ("−8 degrees", "-8")],
)
def test_gsm8k_number_extraction(text, expected):
    from t2lcli.engine.eval.configs import extract_number

    assert extract_number(text) == expected


def test_gsm8k_scoring_through_lm_eval(tmp_path):
    """Responses with commas, signs and currency are scored right by the real lm-eval pipeline (filters + exact_match)."""
    from lm_eval.api.model import LM

    from t2lcli.engine.eval.configs import _build_gsm8k
    from t2lcli.engine.eval.datasets import EvalTask, TaskOptions
    from t2lcli.engine.eval.run import run_lm_eval

    docs = [{"question": "q1", "answer": "work <<1+1=2>>\n#### 1234"}, {"question": "q2", "answer": "#### -5"},
            {"question": "q3", "answer": "#### 12.5"}, {"question": "q4", "answer": "#### 1,000"}, {"question": "q5", "answer": "#### 3"}]
    replies = {"q1": "So the total is 1,234.", "q2": "The answer is -5", "q3": "That costs $12.50.", "q4": "1000 people", "q5": "4 apples"}

    class Fixed(LM):
        def loglikelihood(self, requests):
            raise AssertionError

        def loglikelihood_rolling(self, requests):
            raise AssertionError

        def generate_until(self, requests):
            return [next(v for k, v in replies.items() if f"Question: {k}\n" in r.args[0]) for r in requests]

    task = EvalTask("gsm8k", "gsm8k", "generate_until", "exact_match", "flexible-extract", "test",
                    splits={"test": docs, "train": docs}, builder=_build_gsm8k)
    res = run_lm_eval(Fixed(), task.config(TaskOptions(chat=False)), None, 0, chat=False)
    r = res["results"]["gsm8k"]
    assert r["exact_match,flexible-extract"] == pytest.approx(0.8)
    assert r["exact_match,strict-match"] == pytest.approx(0.2)  # only "The answer is -5" uses an answer marker


def test_adapter_scaling_matches_generate_and_training(tiny_checkpoint_dir, tiny_base_dir, tmp_path):
    """The in-memory adapter eval applies equals peft loading the folder `t2l generate` wrote (rsLoRA alpha/sqrt(r))."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from t2lcli.engine.checkpoint import load_checkpoint
    from t2lcli.engine.eval.plan import plan_rows
    from t2lcli.engine.eval.request import EvalRequest
    from t2lcli.engine.eval.tasks import load_tasks
    from t2lcli.engine.generate import Generator
    from t2lcli.engine.lora_hooks import apply_adapter

    desc = "answer math word problems step by step"
    gen = Generator.load(tiny_checkpoint_dir)
    rows, _ = plan_rows(EvalRequest(tasks="arc_easy", descriptions=[desc]), ["t2l"], load_tasks(["arc_easy"]), gen)
    adapter = rows[0].variants["arc_easy"][0].adapter
    ck = load_checkpoint(tiny_checkpoint_dir)
    assert adapter.scaling == pytest.approx(16 / 8**0.5) == pytest.approx(ck.config.scaling)  # training hooks use config.scaling
    res = _cli_generate(desc, tiny_checkpoint_dir, tmp_path / "g")
    assert res.exit_code == 0, res.output
    ids = torch.tensor([[1, 5, 9, 12, 30, 44]])
    model = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    with torch.no_grad():
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), str(tmp_path / "g"))(ids).logits
        with apply_adapter(model, adapter):
            got = model(ids).logits
        plain = model(ids).logits
    assert_close(got, ref, depth=TINY_LLAMA_DEPTH)  # our hooks vs. peft's: other sums
    assert not close(plain, ref, depth=TINY_LLAMA_DEPTH)


def _cli_generate(desc, ckpt, out):
    from conftest import CliRunner

    return CliRunner().invoke(None, ["generate", desc, "-c", str(ckpt), "-o", str(out)])


def test_interrupted_run_keeps_finished_rows(tiny_base_dir, tmp_path, monkeypatch):
    from t2lcli.engine.eval import run as eval_run

    calls = {"n": 0}
    real = eval_run.run_lm_eval

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # base (arc_easy) done, desc-prompt in progress
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(eval_run, "run_lm_eval", flaky)
    out = tmp_path / "int"
    with pytest.raises(KeyboardInterrupt):
        eval_run.run_eval(eval_run.EvalRequest(tasks="arc_easy", conditions=["base", "desc-prompt"], descriptions=["a", "b"],
                                               base_model=str(tiny_base_dir), limit=2, output=out), _profile())
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "interrupted" and list(doc["rows"]) == ["base"] and doc["rows"]["base"]["tasks"]["arc_easy"]["n"] == 2
    assert "base" in (out / "table.txt").read_text() and "interrupted" in (out / "table.txt").read_text()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["condition"] for r in rows} == {"base"}


def _sni_task(tmp: Path, n: int = 20) -> Path:
    meta = {"task_name": "task9999_toy_copy", "Definition": ["Repeat the input word."],
            "Positive Examples": [{"input": "apple", "output": "apple", "explanation": "copy"}]}
    (tmp / "task9999_toy_copy.meta.json").write_text(json.dumps(meta))
    rows = [{"id": f"i{i}", "input": f"cat {i}", "output": [f"cat {i}", "cat"]} for i in range(n)]
    with gzip.open(tmp / "task9999_toy_copy.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp / "task9999_toy_copy.jsonl.gz"


def test_sni_task_heldout_tail_and_rouge(tiny_checkpoint_dir, tmp_path):
    from t2lcli.engine.eval.configs import rouge_l

    path = _sni_task(tmp_path)
    out = tmp_path / "sni"
    res = _cli(["--tasks", f"sni:{path}", "--conditions", "base,t2l", "-c", str(tiny_checkpoint_dir), "-o", str(out),
                "--log-samples", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    name = "sni:task9999_toy_copy"
    assert doc["tasks"][name]["metric"] == "rougeL" and doc["tasks"][name]["n_docs"] == 2  # the last 10% of 20
    assert doc["provenance"]["descriptions"][name] == ["Repeat the input word."]  # default: the SNI definition
    samples = _samples(out, "base", "sni-task9999_toy_copy")
    assert sorted(s["doc"]["id"] for s in samples) == ["i18", "i19"]
    prompt = samples[0]["arguments"][0][0]
    assert "Repeat the input word. Please complete the task without any explanation.\n\ncat 1" in prompt and prompt.count("<s>") == 1
    for s in samples:
        assert s["rougeL"] == pytest.approx(rouge_l(s["resps"][0][0].strip(), s["doc"]["output"]))
    assert rouge_l("cat 18", ["dog", "cat 18"]) == 1.0 and rouge_l("the cats", ["cat"]) == pytest.approx(2 / 3)
    assert 0 < rouge_l("a cat", ["cat 18"]) < 1


def test_shipped_data_loads_for_every_benchmark_but_hellaswag():
    from t2lcli.engine.eval.datasets import TaskOptions
    from t2lcli.engine.eval.tasks import SPECS, load_tasks

    names = [n for n in SPECS if n != "hellaswag"]
    tasks = load_tasks(names)
    counts = {t.name: t.n_docs for t in tasks}
    assert counts == {"gsm8k": 1319, "arc_easy": 2376, "arc_challenge": 1172, "boolq": 3270, "piqa": 1838, "winogrande": 1267,
                      "openbookqa": 500, "humaneval": 164, "mbpp": 500}
    for t in tasks:
        cfg = t.config(TaskOptions())
        assert cfg["task"] == t.name and cfg["num_fewshot"] == 0
        assert len(t.default_descriptions) == 3
    notice = (Path(__file__).resolve().parents[1] / "t2lcli" / "data" / "benchmarks" / "NOTICE").read_text()
    for name in names:
        assert f"{name}/" in notice
    assert "MIT" in notice and "CC-BY-SA-4.0" in notice


def test_canonical_solutions_pass_and_bad_code_fails():
    """The code-task programs are assembled right: the reference solutions pass; junk, loops and sockets fail."""
    from t2lcli.engine import code_exec
    from t2lcli.engine.eval.datasets import TaskOptions
    from t2lcli.engine.eval.tasks import load_tasks

    he, mb = load_tasks(["humaneval", "mbpp"])
    code_exec.allow(True)
    try:
        for chat in (True, False):
            pr = he.config(TaskOptions(chat=chat))["process_results"]
            doc = he.splits["test"][0]
            assert pr(doc, [doc["canonical_solution"]]) == {"pass@1": 1.0}
            assert pr(doc, ["    return None\n"]) == {"pass@1": 0.0}
            pm = mb.config(TaskOptions(chat=chat))["process_results"]
            d = mb.splits["test"][0]
            assert pm(d, [d["code"] + ("\n```" if chat else "\n[DONE]")]) == {"pass@1": 1.0}
        assert code_exec.run_program("while True: pass", timeout=2) is False
        assert code_exec.run_program("import socket\nsocket.create_connection(('127.0.0.1', 9))") is False
        assert code_exec.run_program("import socket\nsocket.socket()") is False
        assert code_exec.run_program("assert 1 + 1 == 2") is True
    finally:
        code_exec.allow(False)
    with pytest.raises(Exception, match="allow-code-exec"):
        code_exec.run_program("print(1)")


def _t2l_descriptions(folder: Path) -> list[str]:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [str(x).strip() for x in (yaml.load(folder.joinpath("metadata.yaml").read_text(), Loader=loader) or {}).get("descriptions") or []]


def test_default_descriptions_are_three_per_benchmark_and_not_copied():
    """Three of our own per benchmark; none equal to, or a near copy of, T2L's training descriptions of that benchmark."""
    import difflib

    from t2lcli.engine.eval.datasets import default_descriptions
    from t2lcli.engine.eval.tasks import SPECS

    descs = default_descriptions()
    assert set(descs) == set(SPECS)
    assert all(len(v) == 3 and len(set(v)) == 3 for v in descs.values())
    folder = SHARED / "data" / "t2l-task-descriptions" / "tasks"
    if not folder.is_dir():
        pytest.skip("the T2L training descriptions are not available on this machine")
    checked = 0
    for name, mine in descs.items():
        if not (folder / name / "metadata.yaml").is_file():
            continue
        for theirs in _t2l_descriptions(folder / name):
            checked += 1
            for d in mine:
                assert difflib.SequenceMatcher(None, d.lower(), theirs.lower()).ratio() < 0.8, (d, theirs)
    assert checked > 1000


@pytest.mark.slow
def test_default_descriptions_appear_in_no_training_task():
    from t2lcli.engine.eval.datasets import default_descriptions

    folder = SHARED / "data" / "t2l-task-descriptions" / "tasks"
    if not folder.is_dir():
        pytest.skip("the T2L training descriptions are not available on this machine")
    theirs = {d.lower() for meta in folder.glob("*/metadata.yaml") for d in _t2l_descriptions(meta.parent)}
    assert len(theirs) > 10_000
    assert not {d.strip().lower() for v in default_descriptions().values() for d in v} & theirs


# ------------------------------------------------------------------------------------------------ bad input


def _one_line_error(res, needle: str) -> None:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], res.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--tasks", "gsm8k,nope"], "unknown task: nope"),
        (["--tasks", "hellaswag", "--conditions", "base"], "hellaswag"),
        (["--tasks", "arc_easy", "--limit", "0"], "--limit must be a positive"),
        (["--tasks", "arc_easy", "--limit", "-3"], "--limit must be a positive"),
        (["--tasks", "arc_easy", "--limit", "arc_easy=0"], "--limit must be a positive"),
        (["--tasks", "arc_easy", "--limit", "gsm8k=5"], "not evaluated: gsm8k"),
        (["--tasks", "arc_easy", "--num-fewshot", "-1"], "--num-fewshot"),
        (["--tasks", "arc_easy", "--max-descriptions", "0"], "--max-descriptions"),
        (["--tasks", "arc_easy", "--gen-batch-size", "0"], "--gen-batch-size"),
        (["--tasks", "arc_easy", "--limit", "ten"], "--limit expects N or TASK=N"),
        (["--tasks", "arc_easy", "--conditions", "base,desc-prompt", "--description", "  "], "empty --description"),
        (["--tasks", "arc_easy", "--conditions", "base,adapter"], "needs at least one --adapter"),
        (["--tasks", "arc_easy", "--conditions", "base", "--adapter", "x"], "does not include 'adapter'"),
        (["--tasks", "arc_easy", "--conditions", "base", "--checkpoint", "x"], "neither t2l nor t2l-control"),
        (["--tasks", "arc_easy", "--conditions", "base", "--description", "do it"], "no condition uses descriptions"),
        (["--tasks", "arc_easy", "--conditions", "base,oracle"], "unknown condition 'oracle'"),
        (["--tasks", "humaneval", "--conditions", "base"], "--allow-code-exec"),
        (["--tasks", "arc_easy", "--conditions", "base", "--backend", "vllm"], "--backend vllm runs on a CUDA GPU"),
        (["--tasks", "arc_easy", "--conditions", "base", "--backend", "tgi"], "unknown backend"),
        (["--tasks", "arc_easy", "--conditions", "base", "--data-dir", "hub"], "hub is disabled"),
        (["--tasks", "arc_easy", "--conditions", "base", "--data-dir", "/nonexistent/dir"], "data folder not found"),
        (["--tasks", "sni:/nonexistent/task.jsonl", "--conditions", "base"], "SNI task not found"),
        (["--tasks", "arc_easy", "--conditions", "base", "--sni-prompt", "none"], "--sni-prompt must be one of"),
        (["--tasks", "arc_easy", "--conditions", "base", "--descriptions-file", "/nonexistent.json"], "cannot read --descriptions-file"),
    ],
)
def test_bad_input_is_one_line(args, needle, tmp_path):
    _one_line_error(_cli([*args, "-o", str(tmp_path / "o")]), needle)
    assert not (tmp_path / "o").exists()


def test_descriptions_scoping_and_max_descriptions():
    from t2lcli.engine.eval.datasets import default_descriptions
    from t2lcli.engine.eval.plan import plan_rows
    from t2lcli.engine.eval.request import EvalRequest
    from t2lcli.engine.eval.tasks import load_tasks

    tasks = load_tasks(["gsm8k", "arc_easy", "arc_challenge"])
    req = EvalRequest(tasks="gsm8k,arc", descriptions=["arc=Pick the right science answer.", "Compute x=5 plus y."], max_descriptions=2)
    rows, prov = plan_rows(req, ["desc-prompt"], tasks, None)
    got = {t: [v.description for v in vs] for t, vs in rows[0].variants.items()}
    assert got == {"gsm8k": ["Compute x=5 plus y."], "arc_easy": ["Pick the right science answer."], "arc_challenge": ["Pick the right science answer."]}
    rows, prov = plan_rows(EvalRequest(tasks="gsm8k", max_descriptions=2), ["desc-prompt"], tasks[:1], None)
    assert [v.description for v in rows[0].variants["gsm8k"]] == default_descriptions()["gsm8k"][:2] == prov["descriptions"]["gsm8k"]


def test_lora_rows_global_and_per_task(tiny_checkpoint_dir, tmp_path):
    from t2lcli.engine.eval.plan import plan_rows
    from t2lcli.engine.eval.request import EvalRequest
    from t2lcli.engine.eval.tasks import load_tasks

    ads = _make_adapters(tiny_checkpoint_dir, tmp_path)
    tasks = load_tasks(["gsm8k", "arc_easy"])
    rows, _ = plan_rows(EvalRequest(tasks="gsm8k,arc_easy", loras=[f"arc_easy={ads['gen']}"]), ["lora"], tasks, None)
    assert list(rows[0].variants) == ["arc_easy"] and rows[0].variants["arc_easy"][0].info["kind"] == "per-task"
    rows, _ = plan_rows(EvalRequest(tasks="gsm8k,arc_easy", loras=[str(ads["mt"]), f"gsm8k={ads['gen']}"]), ["lora"], tasks, None)
    assert rows[0].variants["gsm8k"][0].adapter_path == str(ads["gen"]) and rows[0].variants["arc_easy"][0].adapter_path == str(ads["mt"])
    with pytest.raises(Exception, match="at most one --lora DIR"):
        plan_rows(EvalRequest(tasks="gsm8k", loras=[str(ads["mt"]), str(ads["gen"])]), ["lora"], tasks[:1], None)


def test_sni_folder_gives_one_task_each(tmp_path):
    from t2lcli.engine.eval.configs import sni_heldout_start
    from t2lcli.engine.eval.tasks import load_tasks, parse_task_names

    _sni_task(tmp_path, n=30)
    meta = json.loads((tmp_path / "task9999_toy_copy.meta.json").read_text())
    meta["task_name"] = "task9998_other"
    (tmp_path / "task9998_other.meta.json").write_text(json.dumps(meta))
    (tmp_path / "task9998_other.jsonl").write_text("\n".join(json.dumps({"input": f"x{i}", "output": ["y"]}) for i in range(7)) + "\n")
    tasks = load_tasks(parse_task_names(f"sni:{tmp_path}"))
    assert [t.name for t in tasks] == ["sni:task9998_other", "sni:task9999_toy_copy"]
    assert [t.n_docs for t in tasks] == [1, 3]  # the last 10% (at least one instance)
    assert [sni_heldout_start(n) for n in (1, 7, 10, 30, 6499)] == [0, 6, 9, 27, 5849]


def test_one_base_load_for_all_conditions(tiny_checkpoint_dir, tmp_path, monkeypatch):
    import transformers

    from t2lcli.engine.eval import EvalRequest, run_eval

    ads = _make_adapters(tiny_checkpoint_dir, tmp_path)
    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    doc = run_eval(EvalRequest(tasks="arc_easy", conditions=["base", "t2l", "adapter", "lora"], checkpoint=str(tiny_checkpoint_dir),
                               descriptions=["answer the question"], adapters=[str(ads["gen"])], loras=[str(ads["mt"])],
                               limit=1, output=tmp_path / "o"), _profile())
    assert list(doc["rows"]) == ["base", "t2l", "adapter:ad_sent", "lora"] and len(loads) == 1


def test_checkpoint_for_another_base_is_refused(tiny_checkpoint_dir, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other_base"
    cfg = LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(other)
    from t2lcli.engine.checkpoint import load_checkpoint

    shutil.copy(Path(load_checkpoint(tiny_checkpoint_dir).base_model) / "tokenizer.json", other / "tokenizer.json")
    shutil.copy(Path(load_checkpoint(tiny_checkpoint_dir).base_model) / "tokenizer_config.json", other / "tokenizer_config.json")
    res = _cli(["--tasks", "arc_easy", "--conditions", "base,t2l", "-c", str(tiny_checkpoint_dir), "-m", str(other), "--limit", "1",
                "-o", str(tmp_path / "o")])
    _one_line_error(res, "does not fit the base model")
    assert "generated by checkpoint" in res.stderr


def test_unknown_task_lists_valid_names(tmp_path):
    res = _cli(["--tasks", "gsm9k", "-o", str(tmp_path / "o")])
    _one_line_error(res, "gsm9k")
    assert "valid: arc, arc_challenge, arc_easy, boolq, gsm8k, hellaswag, humaneval, mbpp, openbookqa, piqa, winogrande, sni:PATH" in res.stderr


def test_hellaswag_runs_when_its_data_is_provided(tiny_base_dir, tmp_path):
    d = tmp_path / "data" / "hellaswag"
    d.mkdir(parents=True)
    rows = [{"ctx_a": "A man sits.", "ctx_b": "he", "activity_label": "Sitting", "endings": ["stands up.", "eats [title] soup.", "x", "y"], "label": "0"}] * 2
    (d / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "o"
    res = _cli(["--tasks", "hellaswag", "--conditions", "base", "-m", str(tiny_base_dir), "--data-dir", str(tmp_path / "data"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["rows"]["base"]["tasks"]["hellaswag"]["n"] == 2
    assert doc["tasks"]["hellaswag"]["source"]["validation"]["file"].endswith("hellaswag/validation.jsonl")


def test_adapter_for_another_base_is_refused(tiny_base_dir, tmp_path):
    from t2lcli.engine.adapters import Adapter, peft_config, save_adapter

    key = "base_model.model.model.layers.0.self_attn.q_proj"
    cfg = peft_config(8, 16, ["q_proj"], "other-model")
    save_adapter(Adapter(cfg, {f"{key}.lora_A.weight": torch.zeros(8, 48), f"{key}.lora_B.weight": torch.zeros(48, 8)}), tmp_path / "other")
    res = _cli(["--tasks", "arc_easy", "--conditions", "base,adapter", "--adapter", str(tmp_path / "other"), "-m", str(tiny_base_dir),
                "--limit", "1", "-o", str(tmp_path / "o")])
    _one_line_error(res, "does not fit the base model")
    assert "32->32 in the base but 48->48 in the adapter" in res.stderr


def test_existing_results_are_refused_without_force(tiny_base_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    prev = '{"format": "t2l-eval-results", "rows": {}}'
    (out / "results.json").write_text(prev)
    _one_line_error(_cli(["--tasks", "arc_easy", "--conditions", "base", "-m", str(tiny_base_dir), "-o", str(out)]), "already holds results")
    assert (out / "results.json").read_text() == prev
    # a results.json t2l did not write is never replaced, not even with --force (t2lcli.engine.atomic's one rule)
    (out / "results.json").write_text("{}")
    _one_line_error(_cli(["--tasks", "arc_easy", "--conditions", "base", "-m", str(tiny_base_dir), "-o", str(out), "--force"]),
                    "did not write")
    assert (out / "results.json").read_text() == "{}"


def test_data_dir_env_points_elsewhere(tiny_base_dir, tmp_path, monkeypatch):
    src = Path(__file__).resolve().parents[1] / "t2lcli" / "data" / "benchmarks" / "piqa"
    shutil.copytree(src, tmp_path / "d" / "piqa")
    monkeypatch.setenv("T2L_DATA_DIR", str(tmp_path / "d"))
    out = tmp_path / "o"
    res = _cli(["--tasks", "piqa", "--conditions", "base", "-m", str(tiny_base_dir), "--limit", "2", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["tasks"]["piqa"]["source"]["validation"]["file"].startswith(str(tmp_path / "d"))
    _one_line_error(_cli(["--tasks", "arc_easy", "--conditions", "base", "-m", str(tiny_base_dir), "-o", str(tmp_path / "o2")]), "not available")


# ------------------------------------------------------------------------------------------------ real model


def _smollm2_checkpoint(out: Path) -> Path:
    """A random-but-nonzero native checkpoint for SmolLM2 shapes (heads randomised so adapters change outputs)."""
    from t2lcli.engine.base_model import read_config, resolve_model, shape_from_config
    from t2lcli.engine.checkpoint import build_checkpoint, save_checkpoint
    from t2lcli.engine.encoder import encoder_spec_for

    shape = shape_from_config(read_config(resolve_model("smollm2-135m-instruct")), ["q_proj", "v_proj"])
    ck = build_checkpoint(shape, encoder_spec_for("all-minilm-l6-v2"), "smollm2-135m-instruct", seed=0)
    from conftest import random_heads

    return save_checkpoint(random_heads(ck, 1, 0.01), out)


@pytest.mark.slow
def test_smollm2_generated_adapter_gsm8k_arc_sni(tmp_path, monkeypatch):
    from conftest import REAL_T2L_HOME

    monkeypatch.setenv("T2L_HOME", REAL_T2L_HOME)
    sni = SHARED / "data" / "sni" / "task1146_country_capital.jsonl"
    if not sni.is_file():  # a small SNI-format task of our own when the shared data is absent
        sni = _sni_task(tmp_path)
    ckpt = _smollm2_checkpoint(tmp_path / "ck")
    out = tmp_path / "res"
    res = _cli(["--tasks", f"gsm8k,arc_easy,sni:{sni}", "-c", str(ckpt), "--conditions", "base,desc-prompt,t2l",
                "--limit", "gsm8k=3", "--limit", "arc_easy=8", "--limit", "4", "--max-new-tokens", "48",
                "--description", "Answer the question correctly and concisely.", "-o", str(out), "--log-samples", "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    assert "t2l eval" in res.stdout and "results:" in res.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["status"] == "complete" and doc["provenance"]["model"]["spec"] == "smollm2-135m-instruct"
    sni_name = next(t for t in doc["tasks"] if t.startswith("sni:"))
    for row in ("base", "desc-prompt", "t2l"):
        cells = doc["rows"][row]["tasks"]
        assert cells["gsm8k"]["n"] == 3 and cells["arc_easy"]["n"] == 8 and cells[sni_name]["n"] == 4
    base_prompt = _samples(out, "base", "arc_easy")[0]["arguments"][0][0]
    assert base_prompt.startswith("<|im_start|>system\n") and base_prompt.count("<|im_start|>system") == 1
    # the generated adapter is live: log-likelihoods move
    assert [s["resps"] for s in _samples(out, "t2l", "arc_easy")] != [s["resps"] for s in _samples(out, "base", "arc_easy")]
    assert (out / "table.txt").read_text().count("t2l") >= 2 and (out / "results.csv").is_file()


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_backend_matches_hf_on_gpu(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    from conftest import REAL_T2L_HOME

    monkeypatch.setenv("T2L_HOME", REAL_T2L_HOME)
    ckpt = _smollm2_checkpoint(tmp_path / "ck")
    scores = {}
    for backend in ("hf", "vllm"):
        out = tmp_path / backend
        res = _cli(["--tasks", "arc_easy", "-c", str(ckpt), "--conditions", "base,t2l", "--limit", "20", "--backend", backend,
                    "--profile", "gpu-24gb", "--description", "Answer science questions.", "-o", str(out)])
        assert res.exit_code == 0, res.output
        scores[backend] = json.loads((out / "results.json").read_text())["rows"]
    for row in ("base", "t2l"):
        assert abs(scores["hf"][row]["tasks"]["arc_easy"]["score"] - scores["vllm"][row]["tasks"]["arc_easy"]["score"]) <= 0.1


# ------------------------------------------------------------------------------------------------ speed paths = lm-eval's


def _tiny_lm(tiny_base_dir):
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.eval.backends import _hf_lm_class

    model, tok = load_base_model(str(tiny_base_dir))
    return _hf_lm_class()(pretrained=model, tokenizer=tok, batch_size=3, device="cpu")


def test_shared_prefix_loglikelihoods_equal_hflm(tiny_base_dir):
    lm = _tiny_lm(tiny_base_dir)
    enc = lm.tokenizer
    ctx_a = enc("<s>user: the cat sat on the mat\nassistant:", add_special_tokens=False).input_ids
    ctx_b = enc("<s>user: add two numbers", add_special_tokens=False).input_ids
    conts = [enc(x, add_special_tokens=False).input_ids for x in (" paris", " the capital of france", " 12", " on the mat 3 9")]
    long_ctx = (ctx_a * 40)[: lm.max_length - 2]  # does not fit with a 4-token continuation: HFLM's own path
    reqs = [(("a", str(i)), ctx_a, c) for i, c in enumerate(conts)] + [(("b", "x"), ctx_b, conts[2]), (("c", "y"), [ctx_b[0]], conts[1]),
                                                                     (("d", "z"), long_ctx, conts[3])]
    fast = lm._loglikelihood_tokens(reqs)
    lm.share_prefix = False
    ref = lm._loglikelihood_tokens(reqs)
    assert len(fast) == len(ref) == 7
    for (f, fg), (r, rg) in zip(fast, ref, strict=True):
        # a cached shared prefix vs. the full sequence: other shapes, other kernels; relative to the logits' size
        assert_rel_error(abs(f - r) / max(1.0, abs(r)), depth=TINY_LLAMA_DEPTH)
        assert fg == rg


def test_greedy_generate_equals_hf_generate(tiny_base_dir, monkeypatch):
    from lm_eval.api.instance import Instance

    from t2lcli.engine.eval import decode

    calls = []
    real = decode.greedy_generate
    monkeypatch.setattr(decode, "greedy_generate", lambda *a, **k: calls.append(a[2].shape) or real(*a, **k))
    lm = _tiny_lm(tiny_base_dir)
    prompts = ["<s>user: the cat\nassistant:", "<s>user: name the capital city of a country given the question\nassistant:",
               "<s>user: 1 3 9\nassistant:", "<s>user: math\nassistant:", "<s>user: sat on the mat mat mat\nassistant:"]
    gen = {"until": ["the", "\n\n"], "max_gen_toks": 20, "do_sample": False}
    reqs = [Instance("generate_until", {}, (p, dict(gen)), i) for i, p in enumerate(prompts)]
    fast = lm.generate_until(reqs)
    lm.fast_generate = False
    ref = lm.generate_until([Instance("generate_until", {}, (p, dict(gen)), i) for i, p in enumerate(prompts)])
    assert fast == ref
    assert calls and sum(shape[0] for shape in calls) == len(prompts)  # the fast path really ran
    assert any(len(x) > 0 for x in ref)
    long = {"until": [], "max_gen_toks": 12, "do_sample": False}  # no stop strings: same tokens to the cap
    lm.fast_generate = True
    a = lm.generate_until([Instance("generate_until", {}, (p, dict(long)), i) for i, p in enumerate(prompts)])
    lm.fast_generate = False
    b = lm.generate_until([Instance("generate_until", {}, (p, dict(long)), i) for i, p in enumerate(prompts)])
    assert a == b


@pytest.mark.parametrize(
    "content, needle",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"gsm8k": "one string"}', "'gsm8k' must map to a non-empty list"),
        ('{"gsm8k": ["ok", ""]}', "'gsm8k' must map to a non-empty list"),
        ('{"_note": "only a note"}', "has no task entries"),
    ],
)
def test_bad_descriptions_file_is_one_line(content, needle, tmp_path):
    f = tmp_path / "d.json"
    f.write_text(content)
    _one_line_error(_cli(["--tasks", "gsm8k", "--conditions", "base,desc-prompt", "--descriptions-file", str(f), "-o", str(tmp_path / "o")]), needle)
    assert not (tmp_path / "o").exists()


def test_descriptions_file_and_sni_control_rotation(tmp_path):
    """File descriptions apply per task (SNI names without the sni: prefix too); --description TASK=... wins; the
    control of an SNI task evaluated with other SNI tasks uses the next SNI task's descriptions."""
    from t2lcli.engine.eval.datasets import EvalTask
    from t2lcli.engine.eval.plan import plan_rows
    from t2lcli.engine.eval.request import EvalRequest, read_descriptions_file
    from t2lcli.engine.eval.tasks import control_task_for

    f = tmp_path / "d.json"
    f.write_text(json.dumps({"_note": "x", "task1_a": ["A one", "A two"], "sni:task2_b": ["B one"], "gsm8k": ["G"]}))
    file_descs = read_descriptions_file(f)
    assert file_descs == {"sni:task1_a": ["A one", "A two"], "sni:task2_b": ["B one"], "gsm8k": ["G"]}
    def mk(n):
        return EvalTask(name=n, family="sni", output_type="generate_until", metric="rougeL", filter="none", eval_split="test", default_descriptions=[f"def of {n}"])
    tasks = [mk("sni:task1_a"), mk("sni:task2_b"), mk("sni:task3_c")]
    assert [control_task_for(t, tasks) for t in tasks] == ["sni:task2_b", "sni:task3_c", "sni:task1_a"]
    assert control_task_for(tasks[0], tasks[:1]) == "gsm8k"

    class Gen:
        def generate(self, descs, opts):
            return [type("A", (), {"scaling": 2.0})() for _ in descs]

    req = EvalRequest(tasks="x", descriptions=["sni:task2_b=B cli"], file_descriptions=file_descs)
    rows, prov = plan_rows(req, ["desc-prompt", "t2l-control"], tasks, Gen())
    assert prov["descriptions"] == {"sni:task1_a": ["A one", "A two"], "sni:task2_b": ["B cli"], "sni:task3_c": ["def of sni:task3_c"]}
    ctl = {t: [v.info["description"] for v in vs] for t, vs in rows[1].variants.items()}
    assert ctl == {"sni:task1_a": ["B cli"], "sni:task2_b": ["def of sni:task3_c"], "sni:task3_c": ["A one", "A two"]}


def test_sni_prompt_input_only():
    from t2lcli.engine.eval.configs import _build_sni
    from t2lcli.engine.eval.datasets import EvalTask, TaskOptions

    t = EvalTask(name="sni:t", family="sni", output_type="generate_until", metric="rougeL", filter="none", eval_split="test", meta={"definition": "Do X."})
    assert _build_sni(t, TaskOptions(sni_prompt="input"))["doc_to_text"]({"input": "hello"}) == "hello"
    assert _build_sni(t, TaskOptions())["doc_to_text"]({"input": "hello"}).startswith("Do X.")


def _fake_vllm(monkeypatch, request, calls: dict) -> None:
    """Just enough of the `vllm` package for lm-eval's VLLM wrapper: an LLM that records its arguments and requests."""
    import importlib.machinery
    import sys
    import types

    from transformers import AutoTokenizer

    def module(name: str, **attrs) -> types.ModuleType:
        m = types.ModuleType(name)
        m.__spec__ = importlib.machinery.ModuleSpec(name, None)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)
        return m

    class LLM:
        def __init__(self, **kwargs):
            calls["engines"].append(kwargs)
            self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=256))

        def generate(self, prompts, sampling_params=None, use_tqdm=False, lora_request=None):
            calls["generate"].append(lora_request)
            done = types.SimpleNamespace(text=" 7", token_ids=[1], logprobs=None)
            return [types.SimpleNamespace(outputs=[done], prompt_logprobs=None) for _ in prompts]

    class LoRARequest:
        def __init__(self, name, lora_id, path):
            self.lora_name, self.lora_int_id, self.lora_path = name, lora_id, path

    module("vllm", LLM=LLM, SamplingParams=lambda **kw: kw, TokensPrompt=lambda **kw: kw)
    module("vllm.lora")
    module("vllm.lora.request", LoRARequest=LoRARequest)
    module("vllm.tokenizers", get_tokenizer=lambda name, **kw: AutoTokenizer.from_pretrained(name))
    module("vllm.renderers")
    module("vllm.renderers.hf", resolve_chat_template=lambda **kw: None)
    module("vllm.entrypoints")
    module("vllm.entrypoints.chat_utils", resolve_hf_chat_template=lambda **kw: None)
    import importlib.metadata

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.6.0" if name == "vllm" else real_version(name))
    wrapper = "lm_eval.models.vllm_causallms"
    previous = sys.modules.pop(wrapper, None)
    # lm-eval's wrapper is imported under the stand-in; afterwards it must not stay in sys.modules bound to it
    request.addfinalizer(lambda: sys.modules.update({wrapper: previous}) if previous else sys.modules.pop(wrapper, None))


def test_vllm_backend_one_engine_lora_requests_and_rank_check(tiny_checkpoint_dir, tiny_base_dir, tmp_path, monkeypatch, request):
    """The vllm backend's plumbing, with a stand-in `vllm` (the real one needs a CUDA GPU): one engine whose LoRA
    rank and cache sizes come from the adapters, every adapter a LoRA request on that engine (generated ones written
    once as PEFT folders), base = no request, and a rank vLLM cannot serve refused before any engine starts."""
    from t2lcli.engine.adapters import Adapter
    from t2lcli.engine.eval.backends import VLLMBackend
    from t2lcli.engine.eval.plan import load_dir_adapter
    from t2lcli.engine.eval.request import Variant
    from t2lcli.engine.generate import Generator
    from t2lcli.errors import T2LError
    from t2lcli.hardware import load_profile

    calls: dict = {"engines": [], "generate": []}
    _fake_vllm(monkeypatch, request, calls)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gen = Generator.load(tiny_checkpoint_dir)
    a, b = gen.generate(["classify sentiment of reviews", "translate english to french"])
    profile = load_profile("gpu-24gb")
    backend = VLLMBackend(tiny_base_dir, profile, [a, b], 0, False, tmp_path / "work")
    assert len(calls["engines"]) == 1
    engine = calls["engines"][0]
    assert engine["enable_lora"] is True and engine["max_lora_rank"] == 8 >= a.r and engine["max_loras"] == 1
    assert engine["max_cpu_loras"] == 2 and engine["model"] == str(tiny_base_dir)

    requests = []
    for variant in (Variant("a", adapter=a), Variant("b", adapter=b), Variant("a again", adapter=a)):
        handle = backend.activate(variant)
        req = backend.lm.lora_request
        requests.append((req.lora_name, req.lora_int_id, req.lora_path))
        backend.lm._model_generate([[1, 2, 3]], generate=False)  # the scoring path (generation passes the same request)
        assert calls["generate"][-1] is req  # the request reaches the engine's generate call
        handle.remove()
        assert backend.lm.lora_request is None
    assert requests[0] == requests[2] and requests[0][1] != requests[1][1]  # one id per adapter, reused
    for _, _, path in requests:
        loaded = load_dir_adapter(path)
        assert loaded.r == a.r and set(loaded.tensors) == set(a.tensors)
    assert backend.activate(Variant("base")).remove() is None and backend.lm.lora_request is None

    big = Adapter({**a.config, "r": 1024, "lora_alpha": 1024}, a.tensors, {})
    with pytest.raises(T2LError, match="vLLM supports LoRA ranks up to 512"):
        VLLMBackend(tiny_base_dir, profile, [big], 0, False, tmp_path / "work2")
    assert len(calls["engines"]) == 1  # refused before an engine started
