"""Training data: SNI tasks (`sni/<task>.jsonl(.gz)` + `.meta.json`, descriptions in
`t2l-task-descriptions/tasks/<lol_id>/metadata.yaml`) and a plain user format
(a JSONL of `{task, input, output}` plus a YAML/JSON file mapping task -> list of descriptions).

Every task's instances are split by position: train = [0, train_frac), validation = [train_frac, val_end),
test = [val_end, 1). Descriptions are split too: the first `n_train_descs` are used in training, the rest are
never seen in training (used for validation and evaluation of unseen descriptions).
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli.errors import DataError

SNI_SUFFIX = " Please complete the task without any explanation."


@dataclass
class Task:
    name: str
    definition: str
    descriptions: list[str]
    instances: list[dict[str, Any]]
    categories: list[str] = field(default_factory=list)

    def split(self, part: str, train_frac: float, val_end: float) -> list[dict[str, Any]]:
        n = len(self.instances)
        a, b = int(n * train_frac), int(n * val_end)
        return {"train": self.instances[:a], "val": self.instances[a:b], "test": self.instances[b:]}[part]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        raise DataError(f"{path}: line {i} is not valid JSON") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    return rows


def sni_task_file(sni_dir: Path, name: str) -> Path:
    for suffix in (".jsonl", ".jsonl.gz"):
        p = sni_dir / f"{name}{suffix}"
        if p.is_file():
            return p
    raise DataError(f"SNI task {name} not found in {sni_dir}", hint="check data.sni_dir and the task name")


def sni_task_files(sni_dir: Path, name: str, desc_dir: Path | None) -> dict[str, Path]:
    """The files `load_sni_task` reads for one task, keyed by a location-free label (`sni/<file>`,
    `descriptions/<id>/metadata.yaml`); files that are missing are left out (loading the task reports them)."""
    files: dict[str, Path] = {}
    for suffix in (".jsonl", ".jsonl.gz", ".meta.json"):
        if (sni_dir / f"{name}{suffix}").is_file():
            files[f"sni/{name}{suffix}"] = sni_dir / f"{name}{suffix}"
    try:
        lol = json.loads((sni_dir / f"{name}.meta.json").read_text(encoding="utf-8")).get("t2l_task_id")
    except (OSError, ValueError, AttributeError):
        lol = None
    if desc_dir is not None and isinstance(lol, str) and (desc_dir / lol / "metadata.yaml").is_file():
        files[f"descriptions/{lol}/metadata.yaml"] = desc_dir / lol / "metadata.yaml"
    return files


def load_sni_task(sni_dir: Path, name: str, desc_dir: Path | None, max_instances: int | None = None, min_descriptions: int = 1) -> Task:
    """One SNI task with its descriptions (T2L metadata.yaml when present, else the SNI definition)."""
    meta_path = sni_dir / f"{name}.meta.json"
    if not meta_path.is_file():
        raise DataError(f"missing {meta_path}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    definition = " ".join(meta.get("Definition") or []).strip()
    rows = _read_jsonl(sni_task_file(sni_dir, name))
    instances = [r for r in rows if isinstance(r.get("input"), str) and r.get("output")]
    if max_instances:
        instances = instances[:max_instances]
    descriptions: list[str] = []
    lol = meta.get("t2l_task_id")
    if desc_dir is not None and lol and (desc_dir / lol / "metadata.yaml").is_file():
        doc = _yaml_file(desc_dir / lol / "metadata.yaml")
        descriptions = [d for d in (doc.get("descriptions") or []) if isinstance(d, str)] if isinstance(doc, dict) else []
    if not descriptions and definition:
        descriptions = [definition]
    if len(descriptions) < min_descriptions:
        raise DataError(f"task {name} has no descriptions", hint="add descriptions or drop the task")
    if not instances:
        raise DataError(f"task {name} has no examples")
    return Task(name, definition, descriptions, instances, list(meta.get("Categories") or []))


def _yaml_file(path: Path) -> Any:
    """A data YAML file through the bounded loader (no alias bombs, no tags): DataError with one line otherwise."""
    from t2lcli.safe_yaml import YamlError, load_yaml

    try:
        return load_yaml(path.read_text(encoding="utf-8"), max_nodes=5_000_000, max_bytes=256_000_000)
    except (YamlError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid YAML: {(str(exc).splitlines() or ['unreadable'])[0]}") from None


def load_user_tasks(jsonl: Path, descriptions: Path) -> list[Task]:
    """The plain format: `{task, input, output}` lines + a YAML/JSON mapping task -> [descriptions]."""
    if not jsonl.is_file():
        raise DataError(f"data file not found: {jsonl}")
    if not descriptions.is_file():
        raise DataError(f"descriptions file not found: {descriptions}")
    descs = _yaml_file(descriptions)
    if not isinstance(descs, dict):
        raise DataError(f"{descriptions} must map each task name to a list of descriptions")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for i, row in enumerate(_read_jsonl(jsonl), 1):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("task", "input")) or "output" not in row:
            raise DataError(f"{jsonl}: line {i} needs string 'task', 'input' and an 'output'")
        out = row["output"] if isinstance(row["output"], list) else [row["output"]]
        by_task.setdefault(row["task"], []).append({"input": row["input"], "output": [str(o) for o in out]})
    tasks = []
    for name, rows in by_task.items():
        d = descs.get(name)
        if not d or not isinstance(d, list):
            raise DataError(f"task {name} has no descriptions in {descriptions}")
        tasks.append(Task(name, "", [str(x) for x in d], rows))
    return tasks


def build_prompt(task: Task, instance: dict[str, Any], prompt_mode: str) -> str:
    """`input`: the raw input only (the adapter must carry the task); `definition`: SNI definition + input."""
    if prompt_mode == "definition" and task.definition:
        return f"{task.definition}{SNI_SUFFIX}\n\n{instance['input']}"
    return str(instance["input"])


def answer_of(instance: dict[str, Any]) -> str:
    out = instance["output"]
    return ", ".join(out) if isinstance(out, list) else str(out)


def is_label_task(answers: list[str], top: int = 20, cover: float = 0.9) -> bool:
    """A classification-like task: its `top` most common answers cover at least `cover` of its (training) answers
    ("Yes"/"No", a rating, a class number), so its examples teach a short label rather than a generated text."""
    if not answers:
        return False
    from collections import Counter

    return sum(c for _, c in Counter(answers).most_common(top)) >= cover * len(answers)


class HierarchicalSampler:
    """n tasks per step (without replacement within a step), one example per task, a random training description.

    `weights` (one per task; None = uniform) make a task's chance of being among a step's n proportional to its
    weight (weighted sampling without replacement, Efraimidis-Spirakis keys u^(1/w)); weight 0 leaves a task out
    unless fewer than n tasks have a positive weight. All randomness comes from one `random.Random`, whose state is
    saved in training checkpoints for exact resume; uniform weights draw exactly as before weights existed.
    """

    def __init__(self, tasks: list[Task], n_tasks: int, n_train_descs: int, train_frac: float, val_end: float, seed: int,
                 weights: list[float] | None = None) -> None:
        self.tasks = tasks
        self.n_tasks = min(n_tasks, len(tasks))
        self.train = [t.split("train", train_frac, val_end) for t in tasks]
        self.descs = [t.descriptions[: max(1, min(n_train_descs, len(t.descriptions)))] for t in tasks]
        self.rng = random.Random(seed)
        if weights is not None and len(weights) != len(tasks):
            raise ValueError(f"{len(weights)} sampling weights for {len(tasks)} tasks")
        self.weights = None if weights is None or all(w == 1.0 for w in weights) else list(weights)

    def _pick(self) -> list[int]:
        if self.weights is None:
            return self.rng.sample(range(len(self.tasks)), self.n_tasks)
        keys = [(self.rng.random() ** (1.0 / w) if w > 0 else -1.0, i) for i, w in enumerate(self.weights)]
        return [i for _, i in sorted(keys, reverse=True)[: self.n_tasks]]

    def sample(self) -> list[tuple[int, dict[str, Any], str]]:
        idx = self._pick()
        return [(i, self.rng.choice(self.train[i]), self.rng.choice(self.descs[i])) for i in idx]

    def state(self) -> Any:
        return self.rng.getstate()

    def set_state(self, state: Any) -> None:
        self.rng.setstate(state)
