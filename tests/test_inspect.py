"""`t2l inspect`: adapter/checkpoint reports, runtime compatibility checklists, similarity and projection plots."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from numeric import assert_close


@pytest.fixture(scope="module")
def adapters(tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Six live adapters from the tiny checkpoint, in two task folders, plus a no-op and a half-zero one."""
    import torch

    from t2lcli.engine.adapters import Adapter, save_adapter
    from t2lcli.engine.generate import Generator

    root = tmp_path_factory.mktemp("adapters")
    gen = Generator.load(str(tiny_checkpoint_dir))
    descs = {
        "math": ["solve math word problems step by step", "answer math questions", "add two numbers and answer"],
        "french": ["translate english into french", "translate the text into french", "write the french for the english"],
    }
    out: dict[str, Path] = {}
    for task, ds in descs.items():
        for i, ad in enumerate(gen.generate(ds)):
            out[f"{task}{i}"] = gen.save(ad, root / task / f"{task}{i}")
    live = gen.generate(["classify the sentiment of reviews"])[0]
    zero = {k: (torch.zeros_like(v) if ".lora_B." in k else v) for k, v in live.tensors.items()}
    out["noop"] = save_adapter(Adapter(live.config, zero, live.meta), root / "noop")
    half = {k: (torch.zeros_like(v) if ".lora_B." in k and ".layers.0." in k else v) for k, v in live.tensors.items()}
    out["half"] = save_adapter(Adapter(live.config, half, live.meta), root / "half")
    return out


def test_low_rank_svd_and_inner_products_match_dense() -> None:
    import torch

    from t2lcli.engine.inspect import effective_rank, singular_values

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 37, generator=g), torch.randn(23, 4, generator=g)
    dense = torch.linalg.svdvals(b @ a)[:4]
    assert_close(singular_values(a, b), dense, depth=10)  # QR + a 4x4 SVD vs. LAPACK's dense SVD
    assert effective_rank(torch.ones(8)) == pytest.approx(8.0)
    assert effective_rank(torch.tensor([1.0, 0, 0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3)) == 0.0


def test_adapter_report_matches_dense_delta_w(adapters: dict[str, Path], runner, cli_app) -> None:
    import torch

    from t2lcli.engine.adapters import load_adapter

    res = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    ad = load_adapter(adapters["math0"])
    assert r["kind"] == "peft-adapter" and r["r"] == ad.r and r["use_rslora"] is True
    assert r["effective_scale"] == pytest.approx(r["lora_alpha"] / math.sqrt(r["r"]))
    assert r["target_modules"] == ["q_proj", "v_proj"] and r["n_layers"] == 2
    assert r["description"] == "solve math word problems step by step"
    rows = r["delta_w"]["per_layer"]
    assert len(rows) == 4
    for row in rows:
        prefix = f"base_model.model.model.layers.{row['layer']}.self_attn.{row['module']}"
        dense = ad.delta(prefix)
        assert row["norm"] == pytest.approx(float(dense.norm()), rel=1e-4)
        s = torch.linalg.svdvals(dense)
        p = s / s.sum()
        p = p[p > 0]
        assert row["effective_rank"] == pytest.approx(float(torch.exp(-(p * p.log()).sum())), abs=2e-3)
    assert r["delta_w"]["total_norm"] == pytest.approx(math.sqrt(sum(x["norm"] ** 2 for x in rows)), rel=1e-5)
    assert r["verdict"]["no_op"] is False and r["verdict"]["message"].startswith("live")
    assert r["provenance"]["checkpoint_sha256"]


def test_no_op_and_partial_verdicts(adapters: dict[str, Path], runner, cli_app) -> None:
    res = runner.invoke(cli_app, ["inspect", str(adapters["noop"])])
    assert res.exit_code == 0, res.output
    assert "NO-OP" in res.stdout and "per module" in res.stdout
    half = json.loads(runner.invoke(cli_app, ["inspect", str(adapters["half"]), "--json"]).stdout)
    assert half["verdict"]["message"].startswith("partial: 2 of 4 blocks")
    assert half["delta_w"]["per_module"]["q_proj"]["zero_layers"] == [0]


def test_checkpoint_report(tiny_checkpoint_dir: Path, runner, cli_app) -> None:
    res = runner.invoke(cli_app, ["inspect", str(tiny_checkpoint_dir), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["kind"] == "t2l-checkpoint (native)" and r["variant"] == "L"
    assert r["module_order"] == ["q_proj", "v_proj"] and r["parameters"] > 0
    assert set(r["base_shapes"]) == {"q_proj", "v_proj"} and r["base_shapes"]["q_proj"]["d_in"] == 32
    assert r["encoder"]["dim"] == 16
    human = runner.invoke(cli_app, ["inspect", str(tiny_checkpoint_dir)])
    assert human.exit_code == 0 and "module order" in human.stdout and "base shapes" in human.stdout


def test_bad_paths_one_line(tmp_path: Path, runner, cli_app) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (tmp_path / "missing", "not found"),
        (tmp_path / "empty", "expected adapter_model.safetensors (PEFT adapter)"),
        (tmp_path / "file.txt", "is a file"),
    ]
    for path, message in cases:
        res = runner.invoke(cli_app, ["inspect", str(path)])
        assert res.exit_code == 1 and message in res.stderr and "Traceback" not in res.output, res.output
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    res = runner.invoke(cli_app, ["inspect", str(broken)])
    assert res.exit_code == 1 and "not a valid safetensors file" in res.stderr


def test_compat_checklists(adapters: dict[str, Path], runner, cli_app) -> None:
    path = str(adapters["math0"])
    vllm = runner.invoke(cli_app, ["inspect", path, "--compat", "vllm", "--json"])
    assert vllm.exit_code == 0, vllm.output
    r = json.loads(vllm.stdout)
    status = {c["check"]: c for c in r["checks"]}
    assert r["compatible"] and "--max-lora-rank 8" in status["rank"]["detail"]
    assert status["scale"]["status"] == "warn" and status["scale"]["fix"].startswith(f"t2l merge {path} --export vllm")
    # lora_alpha is written as an integer (16, not 16.0), so Ollama's check of it passes; rsLoRA still needs --export
    for runtime, failing in (("llamacpp", {"format", "scale"}), ("ollama", {"scale"})):
        res = runner.invoke(cli_app, ["inspect", path, "--compat", runtime, "--json"])
        assert res.exit_code == 1
        rep = json.loads(res.stdout)
        assert not rep["compatible"]
        assert {c["check"] for c in rep["checks"] if c["status"] == "fail"} == failing
        assert all(c["fix"] and "t2l merge" in c["fix"] for c in rep["checks"] if c["status"] == "fail")
    peft = runner.invoke(cli_app, ["inspect", path, "--compat", "peft"])
    assert peft.exit_code == 0 and "compatible" in peft.stdout
    human = runner.invoke(cli_app, ["inspect", path, "--compat", "llamacpp"])
    assert human.exit_code == 1 and "fix: t2l merge" in human.stdout and "not compatible" in human.stdout


def test_compat_rank_and_unsupported_keys(adapters: dict[str, Path], tmp_path: Path, runner, cli_app) -> None:
    import shutil

    def variant(name: str, **changes: object) -> str:
        dst = tmp_path / name
        shutil.copytree(adapters["math0"], dst)
        cfg = json.loads((dst / "adapter_config.json").read_text())
        cfg.update(changes)
        (dst / "adapter_config.json").write_text(json.dumps(cfg))
        return str(dst)

    res = runner.invoke(cli_app, ["inspect", variant("mts", modules_to_save=["lm_head"]), "--compat", "vllm", "--json"])
    assert res.exit_code == 1
    bad = [c for c in json.loads(res.stdout)["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in bad] == ["unsupported keys"] and "modules_to_save" in bad[0]["detail"]
    folded = variant("folded", use_rslora=False, lora_alpha=8)
    for runtime in ("vllm", "sglang", "peft"):
        res = runner.invoke(cli_app, ["inspect", folded, "--compat", runtime, "--json"])
        assert res.exit_code == 0 and all(c["status"] == "ok" for c in json.loads(res.stdout)["checks"]), res.output
    unknown = runner.invoke(cli_app, ["inspect", folded, "--compat", "tgi"])
    assert unknown.exit_code == 2 and "unknown runtime 'tgi'" in unknown.stderr  # a flag value: a usage error


def test_compat_after_merge_export(adapters: dict[str, Path], tmp_path: Path, runner, cli_app) -> None:
    """The fix the checklist prints works: after `t2l merge --export`, the same check passes."""
    path = str(adapters["math0"])
    for runtime in ("vllm", "llamacpp"):
        out = tmp_path / f"exp-{runtime}"
        exp = runner.invoke(cli_app, ["merge", path, "--export", runtime, "-o", str(out)])
        assert exp.exit_code == 0, exp.output
        res = runner.invoke(cli_app, ["inspect", str(out), "--compat", runtime, "--json"])
        assert res.exit_code == 0, res.output
        assert all(c["status"] == "ok" for c in json.loads(res.stdout)["checks"])
    gguf = json.loads(runner.invoke(cli_app, ["inspect", str(tmp_path / "exp-llamacpp"), "--json"]).stdout)
    assert gguf["kind"] == "gguf-adapter" and gguf["adapter_type"] == "lora" and gguf["tensors"] == 8


def test_similarity_exact(adapters: dict[str, Path], runner, cli_app) -> None:
    import torch

    from t2lcli.engine.adapters import load_adapter

    names = ["math0", "math1", "french0"]
    res = runner.invoke(cli_app, ["inspect", *(str(adapters[n]) for n in names), "--similarity", "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["matrix"]
    flat = []
    for n in names:
        ad = load_adapter(adapters[n])
        flat.append(torch.cat([ad.delta(p).flatten() for p in ad.prefixes()]))
    for i in range(3):
        assert m[i][i] == pytest.approx(1.0, abs=1e-4)
        for j in range(3):
            expected = float(torch.nn.functional.cosine_similarity(flat[i], flat[j], dim=0))
            assert m[i][j] == pytest.approx(expected, abs=2e-4)  # a cosine: |x| <= 1, so abs is relative (4-digit JSON)
            assert m[i][j] == m[j][i]  # bitwise: the Gram matrix is filled symmetric
    human = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), str(adapters["math1"]), "--similarity"])
    assert human.exit_code == 0 and "1 math0" in human.stdout


def test_similarity_embedding_space_and_folders(adapters: dict[str, Path], runner, cli_app) -> None:
    root = adapters["math0"].parent.parent
    res = runner.invoke(cli_app, ["inspect", str(root / "math"), str(root / "french"), "--similarity", "--space", "embedding", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["space"] == "embedding" and len(r["names"]) == 6
    assert all(r["matrix"][i][i] == pytest.approx(1.0, abs=1e-4) for i in range(6))


def test_similarity_groups_same_vs_different(adapters: dict[str, Path], runner, cli_app) -> None:
    """Adapters in several task folders: mean cosine of same-folder pairs vs different-folder pairs, raw and
    mean-centred, equal to a direct computation on the flattened ΔW."""
    import itertools

    import torch

    from t2lcli.engine.adapters import load_adapter

    root = adapters["math0"].parent.parent
    res = runner.invoke(cli_app, ["inspect", str(root / "math"), str(root / "french"), "--similarity", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    g = r["groups"]
    assert g["by"] == "task folder" and g["n_groups"] == 2
    assert g["labels"] == [Path(p).parent.name for p in r["paths"]] and sorted(g["labels"]) == ["french"] * 3 + ["math"] * 3
    flat = []
    for p in r["paths"]:
        ad = load_adapter(p)
        flat.append(torch.cat([ad.delta(k).flatten() for k in ad.prefixes()]).double())
    x = torch.stack(flat)
    xc = x - x.mean(0)
    cos = lambda v, i, j: float(torch.nn.functional.cosine_similarity(v[i], v[j], dim=0))  # noqa: E731
    pairs = list(itertools.combinations(range(6), 2))
    same = [(i, j) for i, j in pairs if g["labels"][i] == g["labels"][j]]
    diff = [(i, j) for i, j in pairs if g["labels"][i] != g["labels"][j]]
    assert (g["pairs_same"], g["pairs_different"]) == (6, 9)
    assert g["same_mean"] == pytest.approx(sum(cos(x, i, j) for i, j in same) / 6, abs=2e-4)
    assert g["different_mean"] == pytest.approx(sum(cos(x, i, j) for i, j in diff) / 9, abs=2e-4)
    assert g["centered"]["same_mean"] == pytest.approx(sum(cos(xc, i, j) for i, j in same) / 6, abs=2e-4)
    assert g["centered"]["different_mean"] == pytest.approx(sum(cos(xc, i, j) for i, j in diff) / 9, abs=2e-4)
    human = runner.invoke(cli_app, ["inspect", str(root / "math"), str(root / "french"), "--similarity"])
    assert human.exit_code == 0 and "by task folder (2 groups): same" in human.stdout
    single = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), str(adapters["math1"]), "--similarity", "--json"])
    assert "groups" not in json.loads(single.stdout)  # one folder: no groups to compare


def test_similarity_bad_input(adapters: dict[str, Path], tmp_path: Path, runner, cli_app) -> None:
    one = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), "--similarity"])
    assert one.exit_code == 1 and "at least two adapters" in one.stderr
    bad_space = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), str(adapters["math1"]), "--similarity", "--space", "pixels"])
    assert bad_space.exit_code == 2 and "unknown --space" in bad_space.stderr  # a flag value: a usage error
    # an adapter for another base (different shapes at the same keys)
    import torch

    from t2lcli.engine.adapters import Adapter, load_adapter, save_adapter

    ad = load_adapter(adapters["math0"])
    other = {k: torch.ones(v.shape[0], v.shape[1] + 1) if ".lora_A." in k else v for k, v in ad.tensors.items()}
    save_adapter(Adapter(ad.config, other, ad.meta), tmp_path / "other")
    res = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), str(tmp_path / "other"), "--similarity"])
    assert res.exit_code == 1 and "different bases" in res.stderr and "Traceback" not in res.output


def test_plot_png(adapters: dict[str, Path], tmp_path: Path, runner, cli_app) -> None:
    root = adapters["math0"].parent.parent
    out = tmp_path / "plot.png"
    res = runner.invoke(cli_app, ["inspect", str(root / "math"), str(root / "french"), "--plot", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert r["plotted"] == 6 and not r["sampled"] and r["labels"] == "task folder"
    assert {p["label"] for p in r["points"]} == {"math", "french"}
    emb = runner.invoke(cli_app, ["inspect", str(root / "math"), "--plot", str(tmp_path / "e.png"), "--space", "embedding", "--clusters", "2", "--json"])
    assert emb.exit_code == 0, emb.output
    assert json.loads(emb.stdout)["labels"].startswith("k-means (2 clusters")


def test_plot_samples_when_too_many(adapters: dict[str, Path], tmp_path: Path, runner, cli_app, monkeypatch: pytest.MonkeyPatch) -> None:
    from t2lcli.engine.inspect import plot as inspect

    monkeypatch.setattr(inspect, "MAX_PLOT", 4)
    root = adapters["math0"].parent.parent
    res = runner.invoke(cli_app, ["inspect", str(root / "math"), str(root / "french"), "--plot", str(tmp_path / "s.png"), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["sampled"] and r["plotted"] == 4 and r["adapters"] == 6
    assert "plotting a random sample of 4" in res.stderr


def test_plot_without_matplotlib(adapters: dict[str, Path], tmp_path: Path, runner, cli_app, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    res = runner.invoke(cli_app, ["inspect", str(adapters["math0"]), str(adapters["math1"]), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 1
    assert "--plot needs matplotlib" in res.stderr and "pip install 't2lcli[plot]'" in res.stderr
    assert not (tmp_path / "p.png").exists()


def test_cli_space_names_are_the_engines() -> None:
    """The CLI checks --space before torch is imported, with its own copy of the names: it must stay the engine's."""
    from t2lcli.commands import inspect as cmd

    from t2lcli.engine.inspect.similarity import SPACES

    assert cmd.SPACES == SPACES
