"""`t2l bench`: the report's schema and arithmetic, the memory plan, and bad input (one line, non-zero exit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


def test_official_shapes_and_parameter_counts() -> None:
    from t2lcli.engine.bench import base_param_counts, hypernet_config, load_shape, shape_names
    from t2lcli.engine.hypernet import count_params_formula

    assert shape_names() == ["gemma-2-2b", "llama-3.1-8b", "mistral-7b", "smollm2-135m"]
    # published sizes (t2l-reference.md "Parameter counts")
    expected = {"llama-3.1-8b": 230.03, "mistral-7b": 55.42, "gemma-2-2b": 137.71}
    for name, millions in expected.items():
        assert round(count_params_formula(hypernet_config(load_shape(name), "L")) / 1e6, 2) == millions
    assert round(count_params_formula(hypernet_config(load_shape("llama-3.1-8b"), "M")) / 1e6, 2) == 146.10
    # base models, from their config.json numbers
    assert base_param_counts(load_shape("llama-3.1-8b")["config"])["total"] == 8_030_261_248
    assert base_param_counts(load_shape("smollm2-135m")["config"])["total"] == 134_515_008
    assert base_param_counts(load_shape("mistral-7b")["config"])["total"] == 7_241_732_096
    assert base_param_counts(load_shape("gemma-2-2b")["config"])["total"] == 2_614_341_888


def test_percentiles() -> None:
    from t2lcli.engine.bench import percentiles

    p = percentiles([float(x) for x in range(1, 101)])
    assert p["n"] == 100 and p["p50"] == 50.5 and p["p95"] == pytest.approx(95.05) and p["p99"] == pytest.approx(99.01)
    assert percentiles([]) is None
    assert percentiles([3.0])["p99"] == 3.0


@pytest.mark.parametrize("profile", ["gpu-16gb", "gpu-24gb"])
@pytest.mark.parametrize("shapes", ["llama-3.1-8b", "mistral-7b", "gemma-2-2b"])
def test_plan_gpu_profiles_fit_the_official_bases(profile: str, shapes: str) -> None:
    from t2lcli.engine.bench import plan_memory
    from t2lcli.hardware import load_profile

    plan = plan_memory(shapes, load_profile(profile))
    assert plan["fits"] is True, plan
    assert plan["total_gib"] == pytest.approx(sum(line["gib"] for line in plan["lines"]), abs=0.02)


def test_plan_arithmetic_llama_24gb() -> None:
    from t2lcli.engine.bench import plan_memory
    from t2lcli.hardware import load_profile

    lines = {line["item"]: line["gib"] for line in plan_memory("llama-3.1-8b", load_profile("gpu-24gb"))["lines"]}
    assert lines["base weights"] == pytest.approx(8_030_261_248 * 2 / 2**30, abs=1e-3)  # 14.96
    assert lines["KV cache"] == pytest.approx(1.0)  # 128 KiB/token x 4 x 2048
    assert lines["hypernetwork"] == pytest.approx((230_030_000 + 3_407_872) * 2 / 2**30, abs=0.01)


def test_plan_cli_fits_and_does_not_fit(runner, cli_app, tmp_path: Path) -> None:
    ok = runner.invoke(cli_app, ["bench", "--plan", "--profile", "gpu-16gb", "--shapes", "llama-3.1-8b", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["fits"] is True
    small = tmp_path / "gpu-8gb.yaml"
    small.write_text("memory_budget_gb: 8\nbase: {device: cuda, dtype: bfloat16}\nhypernet: {device: cuda, dtype: bfloat16}\n")
    bad = runner.invoke(cli_app, ["bench", "--plan", "--profile", str(small), "--shapes", "llama-3.1-8b"])
    assert bad.exit_code == 1
    assert "does not fit" in bad.stdout


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [  # flag values: usage errors (exit 2); what a flag names (a path it cannot write): exit 1
        (["--shapes", "gpt-5"], "unknown shapes 'gpt-5'", 2),
        (["--runs", "0"], "--runs must be at least 1", 2),
        (["--cold-runs", "-1"], "--cold-runs must be 0 or more", 2),
        (["--variant", "X"], "--variant must be L, M or S", 2),
        (["--batch", "1,x"], "--batch must be comma-separated integers", 2),
        (["--batch", "0"], "--batch sizes must be positive", 2),
        (["--baseline", "maybe"], "--baseline must be", 2),
        (["--measure"], "--measure goes with --plan", 2),
        (["--plan", "--context", "0"], "--context must be at least 1", 2),
        (["--output", "/proc/version/x.json"], "cannot write --output", 1),
    ],
)
def test_bad_input_one_line(runner, cli_app, args: list[str], message: str, code: int) -> None:
    res = runner.invoke(cli_app, ["bench", *args])
    assert res.exit_code == code, res.output
    assert message in res.stderr
    assert "Traceback" not in res.output
    assert res.stderr.count("error:") == 1


def test_cuda_profile_without_cuda(runner, cli_app) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    res = runner.invoke(cli_app, ["bench", "--profile", "gpu-24gb", "--runs", "1"])
    assert res.exit_code == 1 and "CUDA is not available" in res.stderr and "Traceback" not in res.output
    res = runner.invoke(cli_app, ["bench", "--plan", "--measure", "--profile", "gpu-24gb", "--shapes", "llama-3.1-8b"])
    assert res.exit_code == 1 and "needs a CUDA GPU" in res.stderr


@pytest.fixture(scope="module")
def tiny_report(tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    from conftest import CliRunner

    from t2lcli.cli import app

    out = tmp_path_factory.mktemp("bench") / "reports" / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--checkpoint", str(tiny_checkpoint_dir), "--runs", "4", "--cold-runs", "0",
                                   "--batch", "1,3", "--baseline", "none", "--json", "--output", str(out)])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), out, str(tiny_checkpoint_dir)


def test_bench_tiny_checkpoint_report(tiny_report: tuple[dict, Path, str]) -> None:
    report, out, ckpt = tiny_report
    assert json.loads(out.read_text()) == report
    assert report["schema"] == "t2l-bench/1"
    assert set(report) >= {"machine", "config", "stages_ms", "warm_ms", "warm_write_ms", "cold_ms", "throughput", "memory", "baselines", "targets"}
    assert set(report["stages_ms"]) == {"imports", "checkpoint_load", "encoder_load", "first_generate", "embed", "hypernet_forward",
                                        "adapter_build", "adapter_write"}
    assert all(v > 0 for v in report["stages_ms"].values())
    w = report["warm_ms"]
    assert w["n"] == 4 and w["min"] <= w["p50"] <= w["p95"] <= w["p99"] <= w["max"]
    assert report["warm_write_ms"]["p50"] >= w["p50"] * 0.5
    assert report["cold_ms"] is None
    cpu = report["cpu_time_ms"]
    assert cpu["warm"]["n"] == 4 and cpu["warm"]["p50"] > 0 and cpu["cold"] is None
    assert [t["batch"] for t in report["throughput"]] == [1, 3]
    # seconds are reported rounded to 0.1 ms: allow that rounding (half a unit) on top of 1 %
    assert all(abs(t["adapters_per_s"] * t["seconds"] - t["batch"]) <= 0.01 * t["batch"] + t["adapters_per_s"] * 5e-5 for t in report["throughput"])
    assert report["memory"]["peak_rss_mb"] > 50 and report["memory"]["peak_vram_mb"] is None
    assert report["machine"]["torch"] and report["machine"]["cores"] >= 1
    prompt = report["baselines"]["prompt"]
    assert prompt["tokenizer_note"] == "the base's own tokenizer"  # the tiny base ships tokenizer.json
    assert prompt["description_tokens"] > 0 and prompt["icl_3shot_tokens"] > prompt["description_tokens"] and prompt["t2l_tokens"] == 0
    assert report["baselines"]["load_base"] is None
    assert report["config"]["hypernet_params"] > 0 and report["config"]["checkpoint"] == ckpt
    floor = report["floor"]  # measured / floor per stage, from the GEMM shapes the hot path ran
    assert [s["stage"] for s in floor["stages"]] == ["encoder", "trunk", "heads"]
    for s in floor["stages"]:
        assert s["floor_ms"] > 0 and s["measured_ms"] >= 0 and s["gemms"] > 0 and s["gflop"] > 0 and s["dtype"] == "float32"
        assert s["ratio"] == pytest.approx(s["measured_ms"] / s["floor_ms"], rel=0.01, abs=0.01)
        # the pass floor: the same GEMMs back to back, each weight once; never below the per-shape floor
        assert s["pass_floor_ms"] >= s["floor_ms"] and s["pass_ratio"] == pytest.approx(s["measured_ms"] / s["pass_floor_ms"], rel=0.01, abs=0.01)
        assert s["kernel"] and s["floor_kernel"].split(":")[0] in floor["kernels_tried"]
    assert "torch" in floor["kernels_tried"] and floor["policy"] == "auto" and floor["cpu"] == report["machine"]["cpu"]
    tot = floor["total"]
    assert tot["measured_ms"] == w["p50"] and tot["floor_ms"] == pytest.approx(sum(s["floor_ms"] for s in floor["stages"]), abs=0.01)
    assert tot["pass_floor_ms"] == pytest.approx(sum(s["pass_floor_ms"] for s in floor["stages"]), abs=0.01)
    assert [t["batch"] for t in floor["throughput"]] == [1, 3]
    assert all(t["floor_adapters_per_s"] > 0 and t["fraction"] > 0 for t in floor["throughput"])
    assert floor["cold"]["files"] > 0 and floor["cold"]["bytes"] > 0 and floor["cold"]["cold_p50_ms"] is None


def _rendered(printer, doc: dict, capsys: pytest.CaptureFixture[str]) -> str:
    from t2lcli import console

    console._state.pop("out", None)
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "250"  # wide enough for any figure: on a loaded machine 4-digit ratios made 80 columns wrap cells
    try:
        printer(doc)
        return capsys.readouterr().out
    finally:
        console._state.pop("out", None)
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _row(text: str, label: str) -> str:
    """The one rendered line that holds `label` (a table row or a sentence)."""
    lines = [line for line in text.splitlines() if label in line]
    assert len(lines) == 1, (label, lines)
    return lines[0]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("│┃").split("│")]


def test_bench_human_output(tiny_report: tuple[dict, Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    """The tables show the report's own numbers, each on the row it belongs to."""
    from t2lcli.commands.render.bench import print_report

    r = tiny_report[0]
    text = _rendered(print_report, r, capsys)
    m = r["machine"]
    assert f"{m['cores']} cores, {m['torch_threads']} torch threads" in text and m["cpu"] in text
    for stage, ms in r["stages_ms"].items():
        assert f"{ms:.1f}" in _row(text, stage.replace("_", " ") + " ")
    warm, cpu = r["warm_ms"], r["cpu_time_ms"]["warm"]
    row = _row(text, "warm (in memory)")
    assert all(f"{warm[k]:.1f}" in row for k in ("p50", "p95", "p99")) and str(warm["n"]) in row and f"{cpu['p50']:.1f}" in row
    assert _cells(_row(text, "│ cold `t2l generate`")) == ["cold `t2l generate`", "-", "-", "-", "-", "-"]  # --cold-runs 0
    rows = [_cells(line) for line in text.splitlines() if line.startswith("│")]
    for t in r["throughput"]:
        assert [str(t["batch"]), f"{t['seconds']:.3f}", f"{t['adapters_per_s']:.1f}"] in rows
    assert f"peak RSS: {r['memory']['peak_rss_mb']:.0f} MiB" in text
    prompt = r["baselines"]["prompt"]
    assert f"+{prompt['description_tokens']} tokens/request" in _row(text, "task description in every prompt")
    assert f"+{prompt['icl_3shot_tokens']} tokens/request" in _row(text, "3-shot in-context examples")
    assert f"{warm['p50']:.1f} ms" in _row(text, "t2l generate (warm p50)")
    floor = r["floor"]
    by_stage = {c[0]: c for c in rows if len(c) == 8}  # the measured / floor table
    for s in floor["stages"]:
        assert by_stage[s["stage"]][1:6] == [f"{s['measured_ms']:.2f}", f"{s['floor_ms']:.2f}", f"{s['ratio']:.2f}x", f"{s['gflop']:.3f}", s["kernel"]]
    tot = floor["total"]
    assert f"{tot['measured_ms']:.2f}" in _row(text, "total") and f"{tot['ratio']:.2f}x" in _row(text, "total")
    flat = " ".join(text.split())
    assert f"warm p50 vs all stages {tot['pass_floor_ms']:.2f} ms ({tot['pass_ratio']:.2f}x)" in flat
    assert all(f"{s['stage']} {s['pass_floor_ms']:.2f} ms ({s['pass_ratio']:.2f}x)" in flat for s in floor["stages"])
    for t in floor["throughput"]:
        assert f"batch {t['batch']}: {t['adapters_per_s']:.1f} adapters/s vs floor {t['floor_adapters_per_s']:.1f}" in text
    assert ", ".join(floor["kernels_tried"]) in text.replace("\n", " ") or floor["kernels_tried"][0] in text


def test_plan_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    """The memory-plan table shows each planned line's GiB and the verdict with the plan's total."""
    from t2lcli.commands.render.bench import print_plan

    from t2lcli.engine.bench import plan_memory
    from t2lcli.hardware import load_profile

    plan = plan_memory("llama-3.1-8b", load_profile("gpu-24gb"))
    text = _rendered(print_plan, plan, capsys)
    assert "memory plan: llama-3.1-8b on profile gpu-24gb" in text
    rows = {c[0]: c for c in (_cells(line) for line in text.splitlines() if line.startswith("│"))}
    for line in plan["lines"]:
        assert rows[line["item"]][1] == f"{line['gib']:.2f}"
    assert f"{plan['total_gib']:.2f}" in _row(text, "total")
    assert f"fits: {plan['total_gib']:.2f} GiB of {plan['usable_gib']:.1f} usable" in text


@pytest.mark.slow
def test_bench_default_shapes_end_to_end(runner, cli_app) -> None:
    """Cold runs in fresh processes and the load-the-base baseline (a random SmolLM2-shaped base, full depth)."""
    res = runner.invoke(cli_app, ["bench", "--shapes", "smollm2-135m", "--runs", "3", "--cold-runs", "1", "--batch", "1,4", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["cold_ms"]["n"] == 1 and r["cold_ms"]["p50"] > r["warm_ms"]["p50"]
    assert r["memory"]["cold_generate_peak_rss_mb"] > 100
    assert r["cpu_time_ms"]["cold"]["p50"] > 100  # a fresh process imports torch: real CPU work, not 0
    assert all("cpu_time" in t for t in r["targets"])
    lb = r["baselines"]["load_base"]
    assert lb["extrapolated"] is False and lb["depths"] == [30] and lb["base_params"] == 134_515_008
    assert lb["ratio_vs_warm"] > 1
    assert [t["name"] for t in r["targets"]] == ["warm p50 / floor", "warm p50 / pass floor", "warm p50", "cold t2l generate p50",
                                                 "throughput at batch 64"]
    assert r["targets"][0]["value"] == r["floor"]["total"]["ratio"] and r["targets"][0]["target"] == "<= 1.5"
    assert r["targets"][1]["value"] == r["floor"]["total"]["pass_ratio"] and r["targets"][1]["target"] == "<= 1.5"
    assert r["config"]["hypernet_params"] == 8_630_208


@pytest.mark.slow
def test_baseline_extrapolates_large_bases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the full-load limit the base is loaded at depth 4 and scaled to full depth by bytes."""
    from t2lcli.engine.bench import baselines, load_shape

    monkeypatch.setattr(baselines, "FULL_BASE_LIMIT", 1)
    cfg = load_shape("smollm2-135m")["config"]
    res = baselines.baseline_load_base("smollm2-135m", cfg, repeats=1)
    assert res["extrapolated"] and res["depths"] == [4]
    counts = baselines.base_param_counts(cfg)
    sampled = (counts["total"] - 26 * counts["linears_per_layer"]) * 2
    want = res["from_pretrained_s"] + res["read_s"] * res["base_bytes"] / sampled
    assert res["full_load_s"] == pytest.approx(want, abs=2e-3) and res["full_load_s"] > res["load_s"]["4"]
    assert res["read_gib_per_s"] > 0 and res["estimate"].startswith("depth 4 measured")


@pytest.mark.gpu
def test_measure_matches_plan_within_10_percent() -> None:
    from t2lcli.engine.bench import measure_memory
    from t2lcli.hardware import load_profile

    res = measure_memory("llama-3.1-8b", load_profile("gpu-24gb"), context=2048)
    assert abs(res["relative_error"]) <= 0.10, res


def test_prompt_tokens_are_not_truncated_by_a_stand_in_tokenizer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With no decoder tokenizer offline the count falls back to MiniLM's WordPiece, whose tokenizer.json truncates
    at 128 tokens: the 3-shot prompt must still be counted in full."""
    from t2lcli.engine import bench

    monkeypatch.setattr("t2lcli.engine.base_model.converted_dir", lambda entry: tmp_path / "nothing-here")
    prompt = bench.baseline_prompt(None, str(tmp_path / "no-base"), None)
    assert prompt["tokenizer"] == "all-minilm-l6-v2"
    assert prompt["icl_3shot_tokens"] > 128 and prompt["icl_3shot_tokens"] > prompt["description_tokens"] > 0
