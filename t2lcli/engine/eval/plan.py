"""The rows of a `t2l eval` run: each condition's variants per task, and the adapter checks against the base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from t2lcli.engine.eval.datasets import EvalTask, default_descriptions
from t2lcli.engine.eval.request import USES_DESCRIPTIONS, EvalRequest, Row, Variant, split_scoped
from t2lcli.engine.eval.tasks import control_task_for
from t2lcli.errors import InputError, ShapeMismatchError

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


def load_dir_adapter(path: str) -> Any:
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
    global_descs, scoped = split_scoped(req.descriptions, names)
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
                ad = load_dir_adapter(path)
                name = _adapter_name(path, taken)
                info = {"path": str(Path(path).resolve()), "sha256": tensors_sha256(Path(path) / "adapter_model.safetensors"), "scaling": ad.scaling,
                        "base_model": ad.config.get("base_model_name_or_path"), "description": ad.meta.get("description")}
                rows.append(Row(f"adapter:{name}", cond, {t.name: [Variant(name, adapter=ad, adapter_path=path, info=info)] for t in tasks}))
        elif cond == "lora":
            glob_l, scoped_l = split_scoped(req.loras, names)
            if len(glob_l) > 1:
                raise InputError("give at most one --lora DIR for all tasks (use --lora TASK=DIR for per-task adapters)")
            row = Row("lora", cond)
            cache: dict[str, Any] = {}
            for t in tasks:
                paths = scoped_l.get(t.name) or glob_l
                if not paths:
                    continue  # no LoRA for this task: the cell stays empty
                path = paths[-1]
                if path not in cache:
                    cache[path] = load_dir_adapter(path)
                ad = cache[path]
                info = {"path": str(Path(path).resolve()), "sha256": tensors_sha256(Path(path) / "adapter_model.safetensors"), "scaling": ad.scaling,
                        "kind": "per-task" if t.name in scoped_l else "multi-task"}
                row.variants[t.name] = [Variant(Path(path).name, adapter=ad, adapter_path=path, info=info)]
            if not row.variants:
                raise InputError("no --lora matches the selected tasks", hint=f"tasks: {', '.join(names)}")
            rows.append(row)
    return rows, desc_prov


def check_all_fit(rows: list[Row], shapes: dict[str, tuple[int, int]], base_spec: str, ckpt_prov: dict[str, Any] | None) -> None:
    seen: set[int] = set()
    for r in rows:
        for vs in r.variants.values():
            for v in vs:
                if v.adapter is not None and id(v.adapter) not in seen:
                    seen.add(id(v.adapter))
                    what = f"adapter {v.adapter_path}" if v.adapter_path else f"the adapter generated by checkpoint {ckpt_prov['path'] if ckpt_prov else ''}"
                    check_adapter_fits(v.adapter, shapes, what, base_spec)
