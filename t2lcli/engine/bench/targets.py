"""The targets of `t2l bench` (from the benchmark issue), checked against a report.
"""

from __future__ import annotations

from typing import Any

from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)

# ----------------------------------------------------------------------------------------------- targets

TARGETS: dict[str, list[tuple[str, tuple[str, str | int], str, float, str]]] = {
    # shapes -> [(name, json path, comparison, value, unit)]
    "smollm2-135m": [
        ("warm p50", ("warm_ms", "p50"), "<", 30.0, "ms"),
        ("cold t2l generate p50", ("cold_ms", "p50"), "<", 3000.0, "ms"),
        ("throughput at batch 64", ("throughput", 64), ">=", 100.0, "adapters/s"),
    ],
    "llama-3.1-8b": [
        ("warm p50", ("warm_ms", "p50"), "<", 300.0, "ms"),
        ("load-the-base / warm generate", ("baselines", "ratio_vs_warm"), ">=", 10.0, "x"),
    ],
}


FLOOR_TARGETS = {"smollm2-135m": 1.5, "llama-3.1-8b": 1.3, "gemma-2-2b": 1.3}  # warm p50 / floor, same run


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets that apply to this configuration, each with the measured value and met/not met."""
    shape = report["config"]["shapes"]
    if report["config"]["variant"] != "L":
        return []
    rows = []
    floor = report.get("floor") or {}
    goal = FLOOR_TARGETS.get(shape or "")
    if goal and floor.get("total", {}).get("ratio") is not None:
        v = floor["total"]["ratio"]
        rows.append({"name": "warm p50 / floor", "value": v, "target": f"<= {goal:g}", "unit": "x", "met": v <= goal, "cpu_time": None})
        pv = floor["total"].get("pass_ratio")
        if pv is not None:  # the same goal against the pass floor (each weight read once, as a forward pass reads it)
            rows.append({"name": "warm p50 / pass floor", "value": pv, "target": f"<= {goal:g}", "unit": "x", "met": pv <= goal,
                         "cpu_time": None})
    if shape == "smollm2-135m":
        frac = next((t["fraction"] for t in floor.get("throughput", []) if t["batch"] == 64), None)
        if frac is not None:
            rows.append({"name": "batch 64 throughput / floor's", "value": round(frac, 3), "target": ">= 0.7", "unit": "",
                         "met": frac >= 0.7, "cpu_time": None})
    for name, (section, key), op, target, unit in TARGETS.get(shape or "", []):
        value = None
        if section == "throughput":
            value = next((t["adapters_per_s"] for t in report["throughput"] if t["batch"] == key), None)
        elif section == "baselines":
            lb = report["baselines"]["load_base"]
            value = lb.get(key) if lb else None
        elif report.get(section):
            value = report[section][key]
        met = None if value is None else (value < target if op == "<" else value >= target)
        cpu = None
        if section in ("warm_ms", "cold_ms"):
            part = (report.get("cpu_time_ms") or {}).get(section.split("_")[0])
            cpu = part[key] if part else None
        rows.append({"name": name, "value": value, "target": f"{op} {target:g}", "unit": unit, "met": met, "cpu_time": cpu})
    if report["machine"]["gpu"] and shape == "smollm2-135m" and report["config"]["device"].startswith("cuda"):
        v = report["warm_ms"]["p50"]
        rows.append({"name": "warm p50 on GPU", "value": v, "target": "< 10", "unit": "ms", "met": v < 10})
    return rows
