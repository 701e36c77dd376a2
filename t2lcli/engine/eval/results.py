"""The results of a `t2l eval` run: per-variant summaries, the cell mean, and results.json / results.csv / table.txt.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t2lcli.engine.eval.datasets import EvalTask
from t2lcli.engine.eval.tasks import mean_stderr
from t2lcli.errors import T2LError

RESULTS_JSON, RESULTS_CSV, TABLE_TXT = "results.json", "results.csv", "table.txt"


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
        self.doc["updated"] = utc_now()
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


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("lm_eval", "torch", "transformers", "peft", "datasets"):
        try:
            out[pkg] = version(pkg.replace("_", "-"))
        except PackageNotFoundError:
            out[pkg] = "n/a"
    return out
