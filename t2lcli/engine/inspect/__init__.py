"""The engine behind `t2l inspect`: `reports.py` (recognise a path and describe it), `compat.py` (`--compat RUNTIME`:
one check per runtime rule), `similarity.py` (`--similarity`: cosine of ΔW or description embeddings) and `plot.py`
(`--plot`: a 2-D projection of many adapters); `run.py` holds the verb's entry point, `run_inspect`.

The names below are the package's public API (and what `t2lcli.engine.inspect` offered when it was one module).
"""

from t2lcli.engine.inspect.compat import RUNTIMES, compat_check
from t2lcli.engine.inspect.plot import MAX_PLOT, SKETCH, plot_projection
from t2lcli.engine.inspect.reports import (
    effective_rank,
    inspect_adapter,
    inspect_checkpoint,
    inspect_gguf,
    inspect_paths,
    kind_of,
    singular_values,
)
from t2lcli.engine.inspect.run import InspectRequest, run_inspect
from t2lcli.engine.inspect.similarity import MAX_SIMILARITY, SPACES, expand_adapters, similarity

__all__ = [
    "MAX_PLOT", "MAX_SIMILARITY", "RUNTIMES", "SKETCH", "SPACES", "InspectRequest", "compat_check", "effective_rank", "expand_adapters", "inspect_adapter",
    "inspect_checkpoint", "inspect_gguf", "inspect_paths", "kind_of", "plot_projection", "run_inspect", "similarity", "singular_values",
]
