"""The old import path of `t2lcli.engine.eval`: kept so that code written against it keeps working."""

from __future__ import annotations

from t2lcli.engine.eval.backends import (  # noqa: F401
    HFBackend,
    VLLMBackend,
    _hf_lm_class,
    lm_eval_vllm,
)
from t2lcli.engine.eval.decode import (  # noqa: F401
    greedy_generate,
)
from t2lcli.engine.eval.plan import (  # noqa: F401
    check_adapter_fits,
    config_linear_shapes,
    model_linear_shapes,
    plan_rows,
)
from t2lcli.engine.eval.request import (  # noqa: F401
    CONDITIONS,
    USES_DESCRIPTIONS,
    EvalRequest,
    Row,
    Variant,
    parse_conditions,
    read_descriptions_file,
    validate,
)
from t2lcli.engine.eval.results import (  # noqa: F401
    RESULTS_CSV,
    RESULTS_JSON,
    TABLE_TXT,
    ResultsWriter,
    _safe,
    combine,
    render_text,
    rich_table,
    summarize_variant,
    table_data,
)
from t2lcli.engine.eval.run import (  # noqa: F401
    _resolve_output,
    run_eval,
    run_lm_eval,
)
