"""`t2l eval`: benchmark conditions on one loaded base, through lm-eval's Python API (entry point: `run.run_eval`).

Modules: `request` (what was asked, flag checks), `tasks` / `datasets` / `configs` (the benchmarks, their documents and
lm-eval configs), `plan` (rows and variants), `backends` / `hflm` / `decode` (the loaded model), `results` (summaries and
the files written), `run` (the steps of a run).
"""

from __future__ import annotations

from t2lcli.engine.eval.request import EvalRequest, validate
from t2lcli.engine.eval.results import rich_table
from t2lcli.engine.eval.run import run_eval

__all__ = ["EvalRequest", "rich_table", "run_eval", "validate"]
