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

import gzip
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any

from t2lcli.errors import DataError, InputError, show_key

SNI_SUFFIX = " Please complete the task without any explanation."
SNI_HELDOUT_FROM = 0.9  # evaluate SNI tasks on instances[int(0.9 * n):]
FEWSHOT_POOL_NOTE = "few-shot examples come from the training pool when the task has one, else from the evaluation split (never the scored document itself)"

# family -> member tasks (a family name may be given on the command line)
FAMILIES: dict[str, list[str]] = {"arc": ["arc_easy", "arc_challenge"]}
# the wrong-description control: adapters for task X are generated from the descriptions of CONTROL_OF[X]
CONTROL_OF: dict[str, str] = {
    "gsm8k": "winogrande", "arc_easy": "mbpp", "arc_challenge": "mbpp", "boolq": "gsm8k", "piqa": "humaneval",
    "winogrande": "gsm8k", "openbookqa": "mbpp", "hellaswag": "gsm8k", "humaneval": "boolq", "mbpp": "piqa", "sni": "gsm8k",
}


@dataclass
class TaskOptions:
    """Per-run knobs that change the lm-eval config."""

    chat: bool = True  # the prompt goes through the base's chat template (lm-eval apply_chat_template)
    num_fewshot: int | None = None  # None = the task default (0 everywhere: the zero-shot setting T2L reports)
    max_new_tokens: int | None = None  # None = the task default
    description: str | None = None  # desc-prompt: prepended to the prompt
    sni_prompt: str = "definition"  # SNI tasks: "definition" (SNI definition + input) or "input" (the input only)


SNI_PROMPTS = ("definition", "input")


@dataclass
class EvalTask:
    """One benchmark (or SNI task): metadata, documents and the lm-eval config builder."""

    name: str
    family: str
    output_type: str  # multiple_choice | generate_until
    metric: str  # the primary metric reported in the table
    filter: str  # the lm-eval filter whose metric is primary
    eval_split: str
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    needs_code_exec: bool = False
    default_descriptions: list[str] = field(default_factory=list)
    builder: Callable[[EvalTask, TaskOptions], dict[str, Any]] | None = field(default=None, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_docs(self) -> int:
        return len(self.splits[self.eval_split])

    def config(self, options: TaskOptions) -> dict[str, Any]:
        assert self.builder is not None
        cfg = self.builder(self, options)
        if options.description:
            # lm-eval puts `description` before the few-shot examples; the HF backend merges it into the first user
            # turn when a chat template is used, so the description is literally prepended to the prompt
            cfg["description"] = options.description.strip() + "\n\n"
        if options.num_fewshot is not None:
            cfg["num_fewshot"] = options.num_fewshot
        if options.max_new_tokens is not None and cfg.get("generation_kwargs") is not None:
            cfg["generation_kwargs"]["max_gen_toks"] = options.max_new_tokens
        return cfg

    def datasets(self) -> dict[str, Any]:
        """Splits as in-memory `datasets.Dataset`s (built once per task)."""
        if "_ds" not in self.meta:
            import datasets

            self.meta["_ds"] = {k: datasets.Dataset.from_list(v) for k, v in self.splits.items()}
        return self.meta["_ds"]


# ------------------------------------------------------------------------------------------------ data sources


def package_data_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "benchmarks"


def data_root(data_dir: str | None) -> str:
    """`--data-dir` > `T2L_DATA_DIR` > the shipped package data. Returns a folder path or 'hub'."""
    raw = data_dir or os.environ.get("T2L_DATA_DIR") or ""
    if not raw:
        return str(package_data_dir())
    if raw == "hub":
        return "hub"
    path = Path(raw).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder not found: {raw}", hint="pass a folder with <task>/<split>.jsonl(.gz) files, or leave --data-dir unset for the shipped data")
    return str(path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines (optionally gzip); lines are split on '\\n' only (U+2028 may occur inside strings)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    rows = []
    for i, line in enumerate(raw.split(b"\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise DataError(f"{path}: line {i} is not valid JSON") from None
    return rows


@lru_cache(maxsize=64)
def _load_local(root: str, dataset: str, split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    for suffix in (".jsonl.gz", ".jsonl"):
        path = Path(root) / dataset / f"{split}{suffix}"
        if path.is_file():
            rows = read_jsonl(path)
            return rows, {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "rows": len(rows)}
    hint = f"put {split}.jsonl(.gz) under {Path(root) / dataset}/ and pass --data-dir {root}"
    if dataset == "hellaswag":
        hint = "HellaSwag is not shipped (no redistributable copy was available offline); " + hint + ", or use --data-dir hub when online"
    raise DataError(f"data for {dataset} ({split} split) is not available in {root}", hint=hint)


# hub fallback (only with --data-dir hub, and only online): id, config, split name on the hub
HUB: dict[str, tuple[str, str | None, dict[str, str]]] = {
    "gsm8k": ("openai/gsm8k", "main", {"test": "test", "train": "train"}),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", {"test": "test", "train": "train"}),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", {"test": "test", "train": "train"}),
    "boolq": ("google/boolq", None, {"validation": "validation"}),
    "piqa": ("baber/piqa", None, {"validation": "validation"}),
    "winogrande": ("allenai/winogrande", "winogrande_debiased", {"validation": "validation", "train": "train"}),
    "openbookqa": ("allenai/openbookqa", "main", {"test": "test", "train": "train"}),
    "hellaswag": ("Rowan/hellaswag", None, {"validation": "validation", "train": "train"}),
    "humaneval": ("openai/openai_humaneval", None, {"test": "test"}),
    "mbpp": ("google-research-datasets/mbpp", "full", {"test": "test", "prompt": "prompt"}),
}


def _load_hub(dataset: str, split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    hub_id, config, splits = HUB[dataset]
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    hint = "drop --data-dir hub to use the shipped data, or download the data on a connected machine and pass --data-dir DIR"
    if offline:
        raise DataError(f"--data-dir hub: the hub is disabled here (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE=1); cannot load {hub_id}", hint=hint)
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split=splits[split])
    except Exception as exc:  # network, missing dataset, ...
        raise DataError(f"cannot load {hub_id} ({split}) from the hub: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", hint=hint) from None
    rows = [dict(r) for r in ds]
    if dataset == "openbookqa":  # the hub flattens the AI2 layout
        rows = [{"id": r["id"], "question": {"stem": r["question_stem"], "choices": [{"text": t, "label": lab} for t, lab in zip(r["choices"]["text"], r["choices"]["label"], strict=True)]},
                 "answerKey": r["answerKey"]} for r in rows]
    return rows, {"hub": hub_id, "config": config, "split": splits[split], "rows": len(rows)}


def load_split(root: str, dataset: str, split: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if root == "hub":
        return _load_hub(dataset, split)
    return _load_local(root, dataset, split)


@lru_cache(maxsize=1)
def default_descriptions() -> dict[str, list[str]]:
    path = Path(__file__).resolve().parent.parent / "data" / "eval_descriptions.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: list(v) for k, v in data.items() if not k.startswith("_")}


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


# ------------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class _Spec:
    family: str
    output_type: str
    metric: str
    filter: str
    eval_split: str
    splits: dict[str, str]  # our split name -> dataset/split to read (dataset:split)
    builder: Callable[[EvalTask, TaskOptions], dict[str, Any]]
    code: bool = False


SPECS: dict[str, _Spec] = {
    "gsm8k": _Spec("gsm8k", "generate_until", "exact_match", "flexible-extract", "test", {"test": "gsm8k:test", "train": "gsm8k:train"}, _build_gsm8k),
    "arc_easy": _Spec("arc", "multiple_choice", "acc", "none", "test", {"test": "arc_easy:test", "train": "arc_easy:train"}, _build_arc),
    # ARC-Challenge has no shipped train split: few-shot examples come from the ARC-Easy training pool
    "arc_challenge": _Spec("arc", "multiple_choice", "acc", "none", "test", {"test": "arc_challenge:test", "train": "arc_easy:train"}, _build_arc),
    "boolq": _Spec("boolq", "multiple_choice", "acc", "none", "validation", {"validation": "boolq:validation"}, _build_boolq),
    "piqa": _Spec("piqa", "multiple_choice", "acc", "none", "validation", {"validation": "piqa:validation"}, _build_piqa),
    "winogrande": _Spec("winogrande", "multiple_choice", "acc", "none", "validation", {"validation": "winogrande:validation", "train": "winogrande:train"}, _build_winogrande),
    "openbookqa": _Spec("openbookqa", "multiple_choice", "acc", "none", "test", {"test": "openbookqa:test", "train": "openbookqa:train"}, _build_openbookqa),
    "hellaswag": _Spec("hellaswag", "multiple_choice", "acc", "none", "validation", {"validation": "hellaswag:validation"}, _build_hellaswag),
    "humaneval": _Spec("humaneval", "generate_until", "pass@1", "none", "test", {"test": "humaneval:test"}, _build_humaneval, code=True),
    "mbpp": _Spec("mbpp", "generate_until", "pass@1", "none", "test", {"test": "mbpp:test", "prompt": "mbpp:prompt"}, _build_mbpp, code=True),
}


def valid_names() -> list[str]:
    return sorted([*SPECS, *FAMILIES]) + ["sni:PATH"]


def parse_task_names(raw: str | list[str]) -> list[str]:
    """'gsm8k,arc' -> ['gsm8k', 'arc_easy', 'arc_challenge'] (families expanded, duplicates dropped, SNI kept as sni:PATH).

    Raises:
        InputError: an empty list or an unknown name (the message lists the valid ones).
    """
    items = raw if isinstance(raw, list) else [raw]
    names: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if part:
                names.append(part)
    if not names:
        raise InputError("no tasks given", hint=f"e.g. --tasks gsm8k,arc; valid: {', '.join(valid_names())}")
    out: list[str] = []
    unknown = []
    for name in names:
        low = name if name.startswith("sni:") else name.lower()
        if low.startswith("sni:"):
            if not low[4:].strip():
                raise InputError("sni: needs a path, e.g. sni:data/sni/task1146_country_capital.jsonl")
            expanded = [low]
        elif low in FAMILIES:
            expanded = FAMILIES[low]
        elif low in SPECS:
            expanded = [low]
        else:
            unknown.append(name)
            continue
        out += [x for x in expanded if x not in out]
    if unknown:
        shown = ", ".join(show_key(u) for u in unknown[:5]) + (f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else "")
        raise InputError(f"unknown task{'s' if len(unknown) > 1 else ''}: {shown}", hint=f"valid: {', '.join(valid_names())}")
    return out


def load_tasks(names: list[str], data_dir: str | None = None) -> list[EvalTask]:
    """Resolve task names (see `parse_task_names`) to tasks with their documents loaded.

    Raises:
        DataError: a split is not available from the chosen data source (offline: a clear message, no download).
    """
    root: str | None = None
    tasks: list[EvalTask] = []
    seen: set[str] = set()
    for name in names:
        if name.startswith("sni:"):
            for meta, data in sni_files(Path(name[4:]).expanduser()):
                t = load_sni(meta, data)
                if t.name not in seen:
                    seen.add(t.name)
                    tasks.append(t)
            continue
        spec = SPECS[name]
        root = root or data_root(data_dir)
        splits, sources = {}, {}
        for split, ref in spec.splits.items():
            dataset, src_split = ref.split(":")
            rows, src = load_split(root, dataset, src_split)
            splits[split], sources[split] = rows, src
        if not splits[spec.eval_split]:
            raise DataError(f"{name}: the {spec.eval_split} split is empty")
        tasks.append(EvalTask(
            name=name, family=spec.family, output_type=spec.output_type, metric=spec.metric, filter=spec.filter,
            eval_split=spec.eval_split, splits=splits, sources=sources, needs_code_exec=spec.code,
            default_descriptions=list(default_descriptions().get(name, [])), builder=spec.builder,
        ))
        seen.add(name)
    return tasks


def control_task_for(task: EvalTask, tasks: list[EvalTask] | None = None) -> str:
    """The task whose descriptions serve as the wrong-description control for `task`. An SNI task evaluated
    together with other SNI tasks takes the next one's (in the order given, wrapping around): a description of
    the same style but of another task is the hard control; a lone SNI task falls back to gsm8k's."""
    if task.family == "sni" and tasks:
        sni = [t.name for t in tasks if t.family == "sni"]
        if len(sni) > 1:
            return sni[(sni.index(task.name) + 1) % len(sni)]
    return CONTROL_OF["sni" if task.family == "sni" else task.name]


def mean_stderr(values: list[float]) -> float:
    """Standard error of the mean with the sample standard deviation (lm-eval's `mean_stderr`)."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    var = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var) / math.sqrt(n)
