"""The engine behind `t2l merge`: `run.py` (the verb: request, checks, source -> sink), `algebra.py` (the pure factor
algebra of cat/linear/svd/ties/dare), `sources.py` (compatible adapter folders, descriptions mixed in task space),
`into_base.py` (the streaming into-base writer) and `export.py` (`--export vllm|sglang|llamacpp|ollama`).

The names below are the package's public API (and what `t2lcli.engine.merge` offered when it was one module).
"""

from t2lcli.engine.merge.algebra import (
    DEFAULT_DENSITY,
    METHODS,
    RANK_TOL,
    combine,
    dare_merge,
    split_usv,
    svd_dense,
    svd_from_factors,
    ties_merge,
)
from t2lcli.engine.merge.into_base import merge_into_base
from t2lcli.engine.merge.run import MergeRequest, parse_size, parse_weights, run_merge
from t2lcli.engine.merge.sources import MIX_SPACE, check_compatible, mix_descriptions, source_info

__all__ = [
    "DEFAULT_DENSITY", "METHODS", "MIX_SPACE", "RANK_TOL", "MergeRequest", "check_compatible", "combine", "dare_merge",
    "merge_into_base", "mix_descriptions", "parse_size", "parse_weights", "run_merge", "source_info", "split_usv",
    "svd_dense", "svd_from_factors", "ties_merge",
]
