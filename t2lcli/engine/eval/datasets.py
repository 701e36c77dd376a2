"""The task model of `t2l eval` (`EvalTask`, `TaskOptions`) and where the documents come from: the shipped splits,
another folder of the same layout (`--data-dir`), or the Hugging Face hub (`--data-dir hub`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from t2lcli.errors import DataError

SNI_SUFFIX = " Please complete the task without any explanation."
SNI_HELDOUT_FROM = 0.9  # evaluate SNI tasks on instances[int(0.9 * n):]


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
    return Path(__file__).resolve().parents[2] / "data" / "benchmarks"


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
    path = Path(__file__).resolve().parents[2] / "data" / "eval_descriptions.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return {k: list(v) for k, v in data.items() if not k.startswith("_")}
