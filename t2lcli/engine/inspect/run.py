"""`run_inspect`: the entry point of `t2l inspect` — one request, one of four reports.

  * no mode: what each path is (`reports.inspect_paths`: a PEFT adapter, a T2L checkpoint, a GGUF file);
  * `compat`: one adapter against one runtime's rules (`compat.compat_check`; `compatible` False if any rule fails);
  * `similarity`: the cosine-similarity matrix of many adapters (`similarity.similarity`);
  * `plot`: a 2-D projection of many adapters drawn to a file (`plot.plot_projection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2lcli.engine.inspect.compat import compat_check
from t2lcli.engine.inspect.plot import plot_projection
from t2lcli.engine.inspect.reports import inspect_paths
from t2lcli.engine.inspect.similarity import similarity
from t2lcli.errors import InputError


@dataclass
class InspectRequest:
    targets: list[str]
    compat: str | None = None  # a runtime name: vllm, sglang, llamacpp, ollama, peft
    similarity: bool = False
    plot: Path | None = None
    space: str = "delta_w"  # similarity / plot: "delta_w" or "embedding"
    clusters: int | None = None
    trust_remote_code: bool = False

    @property
    def mode(self) -> str:
        modes = [m for m, on in (("compat", self.compat is not None), ("similarity", self.similarity), ("plot", self.plot is not None)) if on]
        if len(modes) > 1:
            raise InputError("use one of --compat, --similarity and --plot at a time")
        return modes[0] if modes else "report"


def run_inspect(req: InspectRequest) -> tuple[str, Any]:
    """(mode, report): mode is "report", "compat", "similarity" or "plot"; the report is what `--json` prints (a dict,
    or a list of dicts for several paths in "report" mode)."""
    mode = req.mode
    if mode == "compat":
        if len(req.targets) != 1:
            raise InputError("--compat checks one adapter at a time")
        assert req.compat is not None
        return mode, compat_check(Path(req.targets[0]), req.compat.lower())
    if mode == "similarity":
        return mode, similarity(req.targets, req.space, req.trust_remote_code)
    if mode == "plot":
        assert req.plot is not None
        return mode, plot_projection(req.targets, req.plot, req.space, req.clusters, req.trust_remote_code)
    return mode, inspect_paths(req.targets)
