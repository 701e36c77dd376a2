"""The training examples: which tasks a recipe trains on, their prompts tokenised through the base's chat template
(completion-only labels), and the padded batch of a step."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.adapters import tensors_sha256  # a file's sha256, streamed
from t2lcli.engine.data import Task, answer_of, build_prompt, load_sni_task, load_user_tasks, sni_task_files
from t2lcli.errors import DataError
from t2lcli.recipe import Recipe


def select_tasks(recipe: Recipe) -> tuple[list[Task], list[Task]]:
    """(training tasks, held-out tasks) of a recipe: its user JSONL, or the SNI folder's tasks (`data.train_tasks`, or
    every task there when it is empty) less the held-out and excluded ones."""
    d = recipe.data
    if d.user_jsonl:
        tasks = load_user_tasks(Path(d.user_jsonl), Path(d.user_descriptions))
        held = [t for t in tasks if t.name in set(d.heldout_tasks)]
        return [t for t in tasks if t.name not in set(d.heldout_tasks) | set(d.exclude_tasks)], held
    sni = Path(d.sni_dir)
    if not sni.is_dir():
        raise DataError(f"SNI data folder not found: {sni}", hint="set data.sni_dir (paths are relative to the current folder)")
    desc_dir = Path(d.descriptions_dir) if d.descriptions_dir else None
    if desc_dir is not None and not desc_dir.is_dir():
        raise DataError(f"descriptions folder not found: {desc_dir}", hint="set data.descriptions_dir")
    names, held_names = resolve_task_names(recipe)
    train = [load_sni_task(sni, n, desc_dir, d.max_instances_per_task) for n in names]
    held = [load_sni_task(sni, n, desc_dir, None) for n in held_names]
    if not train:
        raise DataError("no training tasks selected")
    return train, held


def resolve_task_names(recipe: Recipe) -> tuple[list[str], list[str]]:
    """(training, held-out) task names of an SNI recipe, in training order, without reading the tasks:
    `data.train_tasks`, or every task in `data.sni_dir` when it is empty, less the held-out and excluded ones."""
    d = recipe.data
    sni = Path(d.sni_dir)
    names = d.train_tasks or sorted(p.name[: -len(".meta.json")] for p in sni.glob("*.meta.json"))
    skip = set(d.heldout_tasks) | set(d.exclude_tasks)
    return [n for n in names if n not in skip], list(d.heldout_tasks)


def data_fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What a run's data are, hashed, for provenance and the `data.data_sha256` pin: `train_tasks_sha256` over the
    resolved training task names (in order; SNI data) and `data_sha256` over every file the run reads (the training and held-out
    tasks' data, meta and description files; or the user JSONL and descriptions), each as `label<TAB>sha256` with a
    location-free label, so the hash does not depend on where the data folder sits."""
    d = recipe.data
    if d.user_jsonl:
        files = {label: Path(p) for label, p in (("user_jsonl", d.user_jsonl), ("user_descriptions", d.user_descriptions)) if Path(p).is_file()}
        names: list[str] | None = None  # known only once the JSONL is read; provenance lists them
    else:
        names, held = resolve_task_names(recipe)
        sni, desc_dir = Path(d.sni_dir), Path(d.descriptions_dir) if d.descriptions_dir else None
        files = {}
        for n in dict.fromkeys(names + held):
            files.update(sni_task_files(sni, n, desc_dir))
    listing = "".join(f"{label}\t{tensors_sha256(files[label])}\n" for label in sorted(files))
    return {"train_tasks_sha256": None if names is None else hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "data_sha256": hashlib.sha256(listing.encode()).hexdigest(), "files": len(files)}


class Tokenized:
    """Tokenises prompt/answer pairs through the base's chat template; completion-only labels."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tok = tokenizer
        self.max_len = max_len
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.has_template:
            ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tok(prompt)["input_ids"])

    def encode(self, prompt: str, answer: str) -> tuple[list[int], int] | None:
        p = self.prompt_ids(prompt)
        a = list(self.tok(answer, add_special_tokens=False)["input_ids"])
        eos = self.tok.eos_token_id
        if self.has_template:
            end = self.tok.convert_tokens_to_ids("<|im_end|>")
            if isinstance(end, int) and end != self.tok.unk_token_id:
                eos = end
        ids = p + a + ([eos] if eos is not None else [])
        if len(ids) > self.max_len or not a:
            return None
        return ids, len(p)


def prepare(recipe: Recipe, tok: Tokenized) -> tuple[list[Task], list[list[tuple[list[int], int]]], list[Task], dict[str, str], int]:
    """Tokenise the train split of every task; drop over-long examples (counted) and tasks left without any."""
    train, held = select_tasks(recipe)
    d = recipe.data
    kept, encoded, dropped, too_long = [], [], {}, 0
    for t in train:
        rows = []
        for inst in t.split("train", d.train_frac, d.val_end):
            # mix: an example counts as fitting when its input-only prompt fits (a too-long definition prompt falls
            # back to it at sampling time)
            e = tok.encode(build_prompt(t, inst, "input" if d.prompt == "mix" else d.prompt), answer_of(inst))
            if e is None:
                too_long += 1
            else:
                rows.append(e)
        if rows:
            kept.append(t)
            encoded.append(rows)
        else:
            dropped[t.name] = f"no example fits max_len={d.max_len}"
    if not kept:
        raise DataError(f"no training example fits data.max_len={d.max_len}", hint="raise data.max_len")
    return kept, encoded, held, dropped, too_long


def collate(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (ids, plen) in enumerate(items):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, plen : len(ids)] = torch.tensor(ids[plen:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

