"""What `t2l eval` was asked to do: the request, its conditions, and the flag-level checks that need no model.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli.engine.atomic import check_readable
from t2lcli.engine.eval.datasets import SNI_PROMPTS
from t2lcli.errors import InputError
from t2lcli.text import check_description

CONDITIONS = ("base", "desc-prompt", "t2l", "t2l-control", "adapter", "lora")
USES_DESCRIPTIONS = ("desc-prompt", "t2l", "t2l-control")


@dataclass
class EvalRequest:
    """Everything `t2l eval` was asked to do (validated by `run_eval`)."""

    tasks: list[str] | str
    conditions: list[str] | None = None  # None: base, desc-prompt, t2l (+ adapter / lora when given)
    checkpoint: str | None = None
    descriptions: list[str] = field(default_factory=list)  # "text" (all tasks) or "TASK=text"
    descriptions_file: str | None = None  # JSON {task: [descriptions]} (keys as in --tasks; sni: prefix optional)
    sni_prompt: str = "definition"  # SNI prompt: "definition" + input, or the input only
    file_descriptions: dict[str, list[str]] = field(default_factory=dict)  # filled by validate() from descriptions_file
    max_descriptions: int | None = None  # use only the first K descriptions per task (desc-prompt, t2l, t2l-control)
    adapters: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)  # "DIR" (all tasks) or "TASK=DIR"
    base_model: str | None = None
    limit: int | None = None  # documents per task (the first N of the evaluation split)
    task_limits: dict[str, int] = field(default_factory=dict)  # per-task overrides of `limit`
    num_fewshot: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    gen_batch_size: int | None = None  # None: 64 on a CPU (decoding is memory-bound), else batch_size
    backend: str = "hf"
    output: Path | None = None
    force: bool = False
    data_dir: str | None = None
    allow_code_exec: bool = False
    seed: int = 0
    log_samples: bool = False
    chat_template: bool = True
    scaling: str = "rslora"
    trust_remote_code: bool = False
    argv: list[str] = field(default_factory=list)


@dataclass
class Variant:
    """One lm-eval run inside a cell: a description in the prompt and/or an adapter on the model."""

    label: str
    description: str | None = None
    adapter: Any = None
    adapter_path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    name: str
    condition: str
    variants: dict[str, list[Variant]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ validation


def split_scoped(items: list[str], task_names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """'TASK=value' entries whose TASK is a selected task (or the family 'arc') are scoped; the rest are global."""
    global_: list[str] = []
    scoped: dict[str, list[str]] = {}
    for item in items:
        head, sep, tail = item.partition("=")
        key = head.strip()
        targets = ["arc_easy", "arc_challenge"] if key == "arc" else [key]
        if sep and all(t in task_names or t.startswith("sni:") for t in targets) and key and " " not in key:
            for t in targets:
                scoped.setdefault(t, []).append(tail.strip())
        else:
            global_.append(item.strip())
    return global_, scoped


def parse_conditions(raw: list[str] | None, req: EvalRequest) -> list[str]:
    if raw is None:
        defaults = ["base", "desc-prompt", "t2l"]
        if req.adapters:
            defaults.append("adapter")
        if req.loras:
            defaults.append("lora")
        return defaults
    conds: list[str] = []
    for item in raw:
        for part in item.split(","):
            part = part.strip().lower()
            if not part:
                continue
            if part not in CONDITIONS:
                raise InputError(f"unknown condition '{part}'", hint=f"valid: {', '.join(CONDITIONS)}")
            if part not in conds:
                conds.append(part)
    if not conds:
        raise InputError("--conditions is empty", hint=f"valid: {', '.join(CONDITIONS)}")
    return conds


def validate(req: EvalRequest) -> list[str]:
    """Flag-level checks that need no model or data. Returns the conditions to run.

    Raises:
        InputError: a bad value or a conflicting combination of flags.
    """
    if req.limit is not None and req.limit < 1:
        raise InputError(f"--limit must be a positive number of documents, got {req.limit}")
    for t, n in req.task_limits.items():
        if n < 1:
            raise InputError(f"--limit {t}={n}: must be a positive number of documents")
    if req.num_fewshot is not None and req.num_fewshot < 0:
        raise InputError(f"--num-fewshot must be >= 0, got {req.num_fewshot}")
    if req.max_new_tokens is not None and req.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {req.max_new_tokens}")
    if req.max_descriptions is not None and req.max_descriptions < 1:
        raise InputError(f"--max-descriptions must be >= 1, got {req.max_descriptions}")
    if req.batch_size is not None and req.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {req.batch_size}")
    if req.gen_batch_size is not None and req.gen_batch_size < 1:
        raise InputError(f"--gen-batch-size must be >= 1, got {req.gen_batch_size}")
    if req.backend not in ("hf", "vllm"):
        raise InputError(f"unknown backend '{req.backend}'", hint="use hf (default) or vllm")
    if req.scaling not in ("rslora", "lora"):
        raise InputError(f"--scaling must be rslora or lora, got '{req.scaling}'")
    explicit = req.conditions is not None
    conds = parse_conditions(req.conditions, req)
    if "adapter" in conds and not req.adapters:
        raise InputError("condition 'adapter' needs at least one --adapter DIR")
    if "lora" in conds and not req.loras:
        raise InputError("condition 'lora' needs --lora DIR (multi-task) or --lora TASK=DIR (per task)")
    if explicit and req.adapters and "adapter" not in conds:
        raise InputError("--adapter was given but --conditions does not include 'adapter'", hint="add adapter to --conditions or drop --adapter")
    if explicit and req.loras and "lora" not in conds:
        raise InputError("--lora was given but --conditions does not include 'lora'", hint="add lora to --conditions or drop --lora")
    if explicit and req.checkpoint and not {"t2l", "t2l-control"} & set(conds):
        raise InputError("--checkpoint was given but --conditions has neither t2l nor t2l-control", hint="add t2l to --conditions or drop --checkpoint")
    if explicit and req.descriptions and not set(USES_DESCRIPTIONS) & set(conds):
        raise InputError("--description was given but no condition uses descriptions", hint="add desc-prompt or t2l to --conditions")
    for d in req.descriptions:
        if not d.strip() or d.strip().endswith("="):
            raise InputError("empty --description", hint='pass a sentence, e.g. --description "Solve math word problems." or "gsm8k=..."')
        head, sep, tail = d.partition("=")
        check_description(tail if sep and head.strip() and " " not in head.strip() else d, "--description")
    for x in req.loras:
        if not x.strip() or x.strip().endswith("="):
            raise InputError("empty --lora", hint="pass --lora DIR or --lora TASK=DIR")
    if req.sni_prompt not in SNI_PROMPTS:
        raise InputError(f"--sni-prompt must be one of {', '.join(SNI_PROMPTS)}, got '{req.sni_prompt}'")
    if req.descriptions_file is not None:
        req.file_descriptions = read_descriptions_file(req.descriptions_file)
    return conds


def read_descriptions_file(path: str | Path) -> dict[str, list[str]]:
    """`--descriptions-file`: a JSON object {task: [description, ...]}; SNI task names may omit the `sni:` prefix."""
    p = Path(path)
    try:
        if str(path) == "-":  # standard input
            raw = sys.stdin.buffer.read(64 * 1024 * 1024 + 1)
        else:
            check_readable(p, "--descriptions-file")
            raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read --descriptions-file {p}: {exc.strerror or exc}") from None
    if len(raw) > 64 * 1024 * 1024:
        raise InputError(f"--descriptions-file {p} is larger than 64 MiB")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"--descriptions-file {p} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise InputError(f"--descriptions-file {p} must be a JSON object {{task: [description, ...]}}")
    out: dict[str, list[str]] = {}
    for key, val in doc.items():
        if key.startswith("_"):  # comments / provenance
            continue
        if not isinstance(val, list) or not val or not all(isinstance(d, str) and d.strip() for d in val):
            raise InputError(f"--descriptions-file {p}: '{key}' must map to a non-empty list of non-empty strings")
        for i, d in enumerate(val):
            check_description(d, f"--descriptions-file {p}: '{key}' item {i + 1}")
        name = key if key.startswith("sni:") or not key.startswith("task") else f"sni:{key}"
        out[name] = [d.strip() for d in val]
    if not out:
        raise InputError(f"--descriptions-file {p} has no task entries")
    return out
