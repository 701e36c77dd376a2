"""The old import path of `t2lcli.engine.eval (tasks, datasets, configs)`: kept so that code written against it keeps working."""

from __future__ import annotations

from t2lcli.engine.eval.configs import (  # noqa: F401
    NUMBER,
    _build_gsm8k,
    _build_sni,
    canonical_number,
    extract_number,
    gsm8k_gold,
    load_sni,
    rouge_l,
    sni_files,
    sni_heldout_start,
    sni_prompt,
)
from t2lcli.engine.eval.datasets import (  # noqa: F401
    CONTROL_OF,
    FAMILIES,
    HUB,
    SNI_HELDOUT_FROM,
    SNI_PROMPTS,
    SNI_SUFFIX,
    EvalTask,
    TaskOptions,
    _load_local,
    data_root,
    default_descriptions,
    load_split,
    package_data_dir,
    read_jsonl,
)
from t2lcli.engine.eval.tasks import (  # noqa: F401
    SPECS,
    control_task_for,
    load_tasks,
    mean_stderr,
    parse_task_names,
    valid_names,
)
