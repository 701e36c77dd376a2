"""The registry of `t2l eval` tasks: names and families, loading a task with its documents, and the control task.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2lcli.engine.eval.configs import (
    _build_arc,
    _build_boolq,
    _build_gsm8k,
    _build_hellaswag,
    _build_humaneval,
    _build_mbpp,
    _build_openbookqa,
    _build_piqa,
    _build_winogrande,
    load_sni,
    sni_files,
)
from t2lcli.engine.eval.datasets import CONTROL_OF, FAMILIES, EvalTask, TaskOptions, data_root, default_descriptions, load_split
from t2lcli.errors import DataError, InputError, show_key

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
