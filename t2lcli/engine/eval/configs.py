"""Benchmark definitions for `t2l eval`: where each task's data comes from and the lm-eval task config built from it.

Data is read offline by default from the splits shipped in `t2lcli/data/benchmarks` (gzip JSONL, see the NOTICE
there); `--data-dir DIR` / `T2L_DATA_DIR` point at another folder of the same layout (`DIR/<task>/<split>.jsonl`
or `.jsonl.gz`, e.g. `../shared/data/benchmarks`), and `--data-dir hub` loads from the Hugging Face hub (online only).

Every task becomes an lm-eval task config (a dict, no YAML) whose documents come from memory (`custom_dataset`), so
lm-eval's prompt building, few-shot sampling, filters and metrics are used as-is. Where lm-eval's stock task would
get a trap wrong, the config fixes it explicitly:

* GSM8K: the gold answer and the extracted prediction are both canonicalised as numbers (`1,234` = `1234`,
  `$12.50` = `12.5`, `-5`), and few-shot targets carry the worked solution (for the answer format) while the scored
  target is the number.
* Code (HumanEval, MBPP): generated programs run only with `--allow-code-exec`, in a subprocess with a timeout,
  resource limits and sockets disabled (not a security sandbox).
* SNI tasks (`sni:PATH`): greedy output scored by ROUGE-L F1 (Porter stemmer, best over the references), on the
  held-out tail of the task: instances at positions >= int(0.9 * n) — disjoint from a training split that takes the
  first 90% (the split `t2l train` uses).
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from t2lcli.engine.eval.datasets import SNI_HELDOUT_FROM, SNI_SUFFIX, EvalTask, TaskOptions, read_jsonl
from t2lcli.errors import DataError

# ------------------------------------------------------------------------------------------------ GSM8K numbers

# a number as models write it: optional sign and currency, thousands separators, decimals
NUMBER = r"[-−]?\s?\$?\s?[-−]?\d[\d,]*(?:\.\d+)?"
_STRICT = re.compile(r"(?:####|[Tt]he (?:final )?answer is:?)\s*(" + NUMBER + ")")
_ANY = re.compile(NUMBER)


def canonical_number(text: str) -> str:
    """'1,234' -> '1234', '$12.50' -> '12.5', '-5' -> '-5', '7.0' -> '7'; text that is not a number is returned stripped."""
    s = str(text).strip().replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    if s.count("-") == 1 and not s.startswith("-"):
        s = "-" + s.replace("-", "")
    try:
        d = Decimal(s)
    except InvalidOperation:
        return str(text).strip()
    if not d.is_finite():
        return str(text).strip()
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def extract_number(response: str, strict: bool = False) -> str:
    """The answer number of a GSM8K response: after '####' / 'The answer is' (strict), else the last number."""
    if strict:
        m = _STRICT.findall(response or "")
        return canonical_number(m[0]) if m else "[invalid]"
    m = _ANY.findall(response or "")
    return canonical_number(m[-1]) if m else "[invalid]"


def gsm8k_gold(doc: dict[str, Any]) -> str:
    return canonical_number(str(doc["answer"]).split("####")[-1])


def _gsm8k_solution(doc: dict[str, Any]) -> str:
    """A few-shot target: the worked solution without the calculator annotations, ending in '#### N'."""
    return re.sub(r"<<[^>]*>>", "", str(doc["answer"])).strip()


def _strict_filter(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    return [[extract_number(r, strict=True) for r in rs] for rs in resps]


def _flexible_filter(resps: list[list[str]], docs: list[dict[str, Any]]) -> list[list[str]]:
    return [[extract_number(r) for r in rs] for rs in resps]


def _build_gsm8k(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    em = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True, "ignore_punctuation": False}
    return {
        **_common(task), "output_type": "generate_until",
        "training_split": "train", "fewshot_split": "train", "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": gsm8k_gold,
        "fewshot_config": {"sampler": "default", "doc_to_target": _gsm8k_solution},
        "generation_kwargs": {"until": ["Question:", "</s>", "<|im_end|>"], "do_sample": False, "max_gen_toks": 256},
        "filter_list": [
            {"name": "flexible-extract", "filter": [{"function": "custom", "filter_fn": _flexible_filter}, {"function": "take_first"}]},
            {"name": "strict-match", "filter": [{"function": "custom", "filter_fn": _strict_filter}, {"function": "take_first"}]},
        ],
        "metric_list": [em],
        "num_fewshot": 0,
    }


# ------------------------------------------------------------------------------------------------ multiple choice

_ACC = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}, {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]


def _common(task: EvalTask) -> dict[str, Any]:
    ds = task.datasets()
    return {"task": task.name, "custom_dataset": lambda **_: ds, "metadata": {"version": 1.0}}


def _arc_target(doc: dict[str, Any]) -> int:
    labels = list(doc["choices"]["label"])
    key = str(doc["answerKey"]).strip()
    return labels.index(key)


def _build_arc(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    return {
        **_common(task), "output_type": "multiple_choice",
        "training_split": "train", "fewshot_split": "train", "test_split": "test",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices.text}}",
        "doc_to_target": _arc_target,
        "metric_list": _ACC, "num_fewshot": 0,
    }


def _build_boolq(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    return {
        **_common(task), "output_type": "multiple_choice",
        "fewshot_split": "validation", "test_split": "validation",
        "doc_to_text": "{{passage}}\nQuestion: {{question}}?\nAnswer:",
        "doc_to_choice": ["no", "yes"],
        "doc_to_target": lambda doc: int(bool(doc["answer"])),
        "metric_list": _ACC[:1], "num_fewshot": 0,
    }


def _build_piqa(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    return {
        **_common(task), "output_type": "multiple_choice",
        "fewshot_split": "validation", "test_split": "validation",
        "doc_to_text": "Question: {{goal}}\nAnswer:",
        "doc_to_choice": "{{[sol1, sol2]}}",
        "doc_to_target": lambda doc: int(doc["label"]),
        "metric_list": _ACC, "num_fewshot": 0,
    }


def _wg_text(doc: dict[str, Any]) -> int:
    return {"1": 0, "2": 1}[str(doc["answer"]).strip()]


def _wg_target(doc: dict[str, Any]) -> str:
    idx = doc["sentence"].index("_") + 1
    return doc["sentence"][idx:].strip()


def _wg_choice(doc: dict[str, Any]) -> list[str]:
    idx = doc["sentence"].index("_")
    return [doc["sentence"][:idx] + opt for opt in (doc["option1"], doc["option2"])]


def _build_winogrande(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    # lm-eval's "partial evaluation": score the sentence end after each filled-in option (multiple inputs)
    return {
        **_common(task), "output_type": "multiple_choice",
        "training_split": "train", "fewshot_split": "train", "test_split": "validation",
        "doc_to_text": _wg_text, "doc_to_target": _wg_target, "doc_to_choice": _wg_choice,
        "metric_list": _ACC[:1], "num_fewshot": 0,
    }


def _build_openbookqa(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    return {
        **_common(task), "output_type": "multiple_choice",
        "training_split": "train", "fewshot_split": "train", "test_split": "test",
        "doc_to_text": lambda doc: doc["question"]["stem"],
        "doc_to_choice": lambda doc: [c["text"] for c in doc["question"]["choices"]],
        "doc_to_target": lambda doc: [c["label"] for c in doc["question"]["choices"]].index(str(doc["answerKey"]).strip()),
        "metric_list": _ACC, "num_fewshot": 0,
    }


def _hs_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hs_query(doc: dict[str, Any]) -> str:
    ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize() if "ctx_a" in doc else doc.get("ctx", "")
    label = doc.get("activity_label")
    return _hs_clean(f"{label}: {ctx}" if label else ctx)


def _build_hellaswag(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    return {
        **_common(task), "output_type": "multiple_choice",
        "fewshot_split": "validation", "test_split": "validation",
        "doc_to_text": _hs_query,
        "doc_to_choice": lambda doc: [_hs_clean(e) for e in doc["endings"]],
        "doc_to_target": lambda doc: int(doc["label"] if "label" in doc else doc["expected_index"]),
        "metric_list": _ACC, "num_fewshot": 0,
    }


# ------------------------------------------------------------------------------------------------ code


def _code_block(text: str) -> str:
    """The code before a closing fence (the prompt opened one)."""
    cut = text.find("```")
    return text if cut < 0 else text[:cut]


def _humaneval_program(doc: dict[str, Any], completion: str, chat: bool) -> str:
    return doc["prompt"] + _code_block(completion) + "\n\n" + doc["test"] + f"\n\ncheck({doc['entry_point']})\n"


def _build_humaneval(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    from t2lcli.engine.code_exec import run_program

    chat = opt.chat

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        return {"pass@1": float(run_program(_humaneval_program(doc, results[0], chat)))}

    cfg = {
        **_common(task), "output_type": "generate_until", "test_split": "test", "unsafe_code": True,
        "doc_to_target": "{{test}}", "process_results": process_results,
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"until": ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "```"], "do_sample": False, "max_gen_toks": 512},
        "num_fewshot": 0,
    }
    if chat:  # lm-eval's humaneval_instruct: ask, then pre-fill the answer with the function header
        cfg["doc_to_text"] = "Write a solution to the following problem and make sure that it passes the tests:\n```python\n{{prompt}}\n```\n"
        cfg["gen_prefix"] = "Here is the completed function:\n```python\n{{prompt}}"
    else:
        cfg["doc_to_text"] = "{{prompt}}"
    return cfg


def _mbpp_tests(doc: dict[str, Any]) -> str:
    return "\n".join(doc["test_list"])


def _build_mbpp(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    from t2lcli.engine.code_exec import run_program

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        code = _code_block(results[0])
        if "[DONE]" in code:
            code = code[: code.index("[DONE]")]
        program = (doc.get("test_setup_code") or "") + "\n" + code + "\n\n" + _mbpp_tests(doc) + "\n"
        return {"pass@1": float(run_program(program))}

    ask = "You are an expert Python programmer, and here is your task: {{text}} Your code should pass these tests:\n\n{{test_list | join('\n')}}\n"
    cfg = {
        **_common(task), "output_type": "generate_until", "test_split": "test", "unsafe_code": True,
        "fewshot_split": "prompt", "fewshot_config": {"sampler": "first_n"},
        "doc_to_target": lambda doc: doc["code"] + ("\n```" if opt.chat else "\n[DONE]"),
        "process_results": process_results, "target_delimiter": "",
        "metric_list": [{"metric": "pass@1", "aggregation": "mean", "higher_is_better": True}],
        "num_fewshot": 0,
    }
    if opt.chat:
        cfg["doc_to_text"] = ask
        cfg["gen_prefix"] = "```python\n"
        cfg["generation_kwargs"] = {"until": ["```"], "do_sample": False, "max_gen_toks": 512}
    else:
        cfg["doc_to_text"] = ask + "[BEGIN]\n"
        cfg["generation_kwargs"] = {"until": ["[DONE]"], "do_sample": False, "max_gen_toks": 512}
    return cfg


# ------------------------------------------------------------------------------------------------ SNI


def sni_heldout_start(n: int) -> int:
    """First index of the evaluation slice of an SNI task with n (usable) instances: the last 10%."""
    return min(int(n * SNI_HELDOUT_FROM), max(n - 1, 0))


def sni_prompt(definition: str, text: str) -> str:
    return f"{definition}{SNI_SUFFIX}\n\n{text}"


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: list[str]) -> float:
    """ROUGE-L F1 (stemmed), best over the references."""
    scorer = _rouge()
    return max((scorer.score(str(ref), prediction or "")["rougeL"].fmeasure for ref in references), default=0.0)


def _build_sni(task: EvalTask, opt: TaskOptions) -> dict[str, Any]:
    definition = task.meta["definition"]

    def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
        return {"rougeL": rouge_l(results[0].strip(), list(doc["output"]))}

    cfg = {
        **_common(task), "output_type": "generate_until", "test_split": "test",
        "doc_to_text": (lambda doc: doc["input"]) if opt.sni_prompt == "input" else (lambda doc: sni_prompt(definition, doc["input"])),
        "doc_to_target": lambda doc: doc["output"][0],
        "process_results": process_results,
        "metric_list": [{"metric": "rougeL", "aggregation": "mean", "higher_is_better": True}],
        "generation_kwargs": {"until": ([] if opt.chat else ["\n\n"]), "do_sample": False, "max_gen_toks": 128},
        "num_fewshot": 0,
    }
    if task.splits.get("fewshot"):
        cfg["fewshot_split"] = "fewshot"
        cfg["training_split"] = "fewshot"
        cfg["fewshot_config"] = {"sampler": "first_n"}
    return cfg


def sni_files(path: Path) -> list[tuple[Path, Path]]:
    """(meta.json, data file) pairs for an SNI task file, its meta file, its stem, or a folder of tasks."""
    def data_for(meta: Path) -> Path:
        stem = meta.name[: -len(".meta.json")]
        for suffix in (".jsonl", ".jsonl.gz"):
            if (meta.parent / f"{stem}{suffix}").is_file():
                return meta.parent / f"{stem}{suffix}"
        raise DataError(f"SNI task {stem}: no {stem}.jsonl(.gz) next to {meta}")

    if path.is_dir():
        metas = sorted(path.glob("*.meta.json"))
        if not metas:
            raise DataError(f"no SNI tasks (*.meta.json) in {path}")
        return [(m, data_for(m)) for m in metas]
    name = path.name
    for suffix in (".meta.json", ".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    meta = path.parent / f"{name}.meta.json"
    if not meta.is_file():
        raise DataError(f"SNI task not found: {path} (expected {meta} and {name}.jsonl)", hint="pass sni:PATH to a task's .jsonl or .meta.json, or to a folder of tasks")
    return [(meta, data_for(meta))]


def load_sni(meta_path: Path, data_path: Path) -> EvalTask:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {meta_path}: {exc}") from None
    definition = " ".join(meta.get("Definition") or []).strip()
    if not definition:
        raise DataError(f"{meta_path} has no Definition")
    rows = [r for r in read_jsonl(data_path) if isinstance(r.get("input"), str) and r.get("output")]
    if not rows:
        raise DataError(f"{data_path} has no usable instances (need 'input' and a non-empty 'output' list)")
    for r in rows:
        if isinstance(r["output"], str):
            r["output"] = [r["output"]]
    start = sni_heldout_start(len(rows))
    name = str(meta.get("task_name") or meta_path.name[: -len(".meta.json")])
    fewshot = [{"input": e["input"], "output": [e["output"]]} for e in meta.get("Positive Examples") or []
               if isinstance(e, dict) and isinstance(e.get("input"), str) and isinstance(e.get("output"), str)]
    splits = {"test": rows[start:]}
    if fewshot:
        splits["fewshot"] = fewshot
    src = {"file": str(data_path), "sha256": hashlib.sha256(data_path.read_bytes()).hexdigest(), "rows": len(rows),
           "slice": f"instances[{start}:{len(rows)}] (last {len(rows) - start} of {len(rows)})"}
    return EvalTask(
        name=f"sni:{name}", family="sni", output_type="generate_until", metric="rougeL", filter="none", eval_split="test",
        splits=splits, sources={"test": src}, default_descriptions=[definition], builder=_build_sni,
        meta={"definition": definition, "meta_file": str(meta_path)},
    )
