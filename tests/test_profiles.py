"""Hardware profiles: shipped YAMLs, precedence (defaults < YAML < --set < flags), validation, memory arithmetic,
quantization mapping, and `t2l inspect profile`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from t2lcli.errors import ProfileError, T2LError
from t2lcli.hw_profiles import ComponentSettings, Profile, list_profiles, load_profile, parse_set_overrides, profiles_dir

SHIPPED = ["cpu", "gpu-16gb", "gpu-24gb", "gpu-80gb"]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_profile_loads(name):
    prof = load_profile(name)
    assert prof.name == name and prof.source.endswith(f"{name}.yaml")
    for comp in (prof.hypernet, prof.encoder, prof.base):
        assert isinstance(comp, ComponentSettings)
    # each YAML opens with a comment on the target hardware and a usage line
    text = (profiles_dir() / f"{name}.yaml").read_text()
    assert text.startswith(f"# {name}:") and "# Usage:" in text


def test_list_and_default():
    assert set(SHIPPED) <= set(list_profiles())
    assert load_profile(None).name == "cpu"
    cpu = load_profile("cpu")
    assert (cpu.base.device, cpu.base.dtype, cpu.base.quantization) == ("cpu", "float32", "none")
    g16 = load_profile("gpu-16gb")
    assert (g16.base.quantization, g16.base.dtype, g16.encoder.device, g16.hypernet.dtype) == ("8bit", "bfloat16", "cpu", "bfloat16")
    g24 = load_profile("gpu-24gb")
    assert (g24.base.quantization, g24.base.dtype, g24.encoder.device) == ("none", "bfloat16", "cuda")


def test_precedence_defaults_yaml_set(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: {dtype: bfloat16, batch_size: 3}\nthreads: 2\n")
    prof = load_profile(str(path))
    assert prof.name == "mine"
    assert prof.base.dtype == "bfloat16" and prof.base.batch_size == 3 and prof.threads == 2  # YAML beats defaults
    assert prof.base.device == ComponentSettings().device and prof.encoder.batch_size == Profile().encoder.batch_size  # defaults kept
    prof = load_profile(str(path), ["base.batch_size=5", "encoder.device=cuda:1", "base.offload=true"])
    assert prof.base.batch_size == 5 and prof.base.dtype == "bfloat16"  # --set beats YAML, untouched keys stay
    assert prof.encoder.device == "cuda:1" and prof.base.offload is True


def test_flags_beat_set(runner, cli_app, tmp_path, monkeypatch):
    """The last layer: an explicit flag (generate --batch-size) beats --set, which beats the YAML."""
    from t2lcli.engine import run_generate as rg

    seen = []
    monkeypatch.setattr(rg, "run_generate", lambda req, prof, on_result=None: seen.append(req.batch_size) or [])
    path = tmp_path / "p.yaml"
    path.write_text("hypernet: {batch_size: 3}\n")
    base = ["generate", "a task", "-o", str(tmp_path / "o"), "--profile", str(path)]
    for extra, want in [([], 3), (["--set", "hypernet.batch_size=5"], 5), (["--set", "hypernet.batch_size=5", "--batch-size", "7"], 7)]:
        res = runner.invoke(cli_app, base + extra)
        assert res.exit_code == 0, res.output
        assert seen[-1] == want, (extra, seen)
    res = runner.invoke(cli_app, ["generate", "a task", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0 and seen[-1] == load_profile("cpu").hypernet.batch_size


def test_all_problems_reported_at_once_with_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "colour: blue\n"                         # unknown top-level key
        "threads: many\n"                         # wrong type
        "base: {dtype: float64, batch_size: true, device: tpu, warp: 9}\n"  # bad value, wrong type, bad value, unknown key
        "encoder: 3\n"                            # component not a mapping
        "memory_budget_gb: lots\n"
    )
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    msg = info.value.message
    assert "8 problems" in msg, msg
    for needle in ["unknown key 'colour'", "threads: expected an integer", "base.dtype: 'float64' is not one of",
                   "base.batch_size: expected an integer", "base.device: 'tpu'", "unknown key 'base.warp'",
                   "encoder: expected a mapping", "memory_budget_gb: expected a number"]:
        assert needle in msg, needle
    assert msg.count(str(path)) == 8  # every problem names the file
    assert "\n" not in msg


def test_yaml_and_set_problems_together(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("base: {quantization: 3bit}\n")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path), ["no_equals_sign", "base.attn_implementation=magic", "1bad.key=2", "base.dtype=[1, 2]"])
    msg = info.value.message
    assert "5 problems" in msg, msg
    assert f"{path}: base.quantization: '3bit'" in msg
    assert "--set 'no_equals_sign' is not KEY=VALUE" in msg
    assert "--set: base.attn_implementation: 'magic'" in msg
    assert "'1bad.key' is not a dotted key" in msg and "only scalar values" in msg


@pytest.mark.parametrize(("content", "needle"), [
    ("- a\n- b\n", "the root must be a mapping of keys, got list"),
    ("just a string\n", "the root must be a mapping of keys, got str"),
    ("base: {dtype: [\n", "is not valid YAML"),
])
def test_bad_roots(tmp_path, content, needle):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(ProfileError, match=re.escape(needle)) as info:
        load_profile(str(path))
    assert str(path) in info.value.message


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    prof = load_profile(str(path))
    assert prof.base == ComponentSettings() and prof.name == "empty"


def test_unknown_and_missing_profiles(tmp_path):
    with pytest.raises(ProfileError, match="unknown profile 'gpu-7gb'") as info:
        load_profile("gpu-7gb")
    assert "gpu-16gb" in info.value.hint
    with pytest.raises(ProfileError, match="profile file not found"):
        load_profile(str(tmp_path / "nope.yaml"))


def test_parse_set_overrides():
    assert parse_set_overrides(["base.dtype=bfloat16", "threads=2", "base.device_map=null", "x.y.z=a=b"]) == {
        "base": {"dtype": "bfloat16", "device_map": None}, "threads": 2, "x": {"y": {"z": "a=b"}}}
    with pytest.raises(ProfileError, match="2 problems"):
        parse_set_overrides(["=1", "a=1", "a.b=2"])


# ------------------------------------------------------------------------------------ memory arithmetic headers


def _header_lines(name: str) -> tuple[dict[str, float], float, float]:
    text = (profiles_dir() / f"{name}.yaml").read_text()
    items: dict[str, float] = {}
    total = usable = None
    for line in text.splitlines():
        m = re.match(r"^#\s{3}(.+?)\s+=\s+([\d.]+)(?:\s+\(usable: ([\d.]+) of \d+\))?$", line)
        if not m:
            continue
        if m.group(1) == "total":
            total, usable = float(m.group(2)), float(m.group(3))
        else:
            items[m.group(1)] = float(m.group(2))
    assert total is not None and items, f"{name}: no arithmetic in the header"
    return items, total, usable


@pytest.mark.parametrize("name", ["gpu-16gb", "gpu-24gb"])
def test_memory_arithmetic_adds_up_and_fits(name):
    """The header's terms sum to its total, the total fits the card, and the big terms follow from Llama-3.1-8B's config."""
    from t2lcli.engine.base_model import shape_from_config

    items, total, usable = _header_lines(name)
    assert abs(sum(items.values()) - total) < 0.015, (items, total)
    assert total <= usable <= load_profile(name).memory_budget_gb
    cfg = json.loads((Path(__file__).parent / "assets" / "configs" / "llama-3.1-8b-instruct.json").read_text())
    shape = shape_from_config(cfg)
    linears = shape.n_layers * sum(m.d_in * m.d_out for m in shape.modules.values())
    embed = 2 * cfg["vocab_size"] * cfg["hidden_size"]
    assert abs((linears + embed) / 1e9 - 8.03) < 0.01  # the published 8.03B (norms are 0.3M)
    gib = 2**30
    prof = load_profile(name)
    kv_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * (cfg["hidden_size"] // cfg["num_attention_heads"]) * 2
    by_label = {k.split(":")[0]: v for k, v in items.items()}
    kv = [v for k, v in by_label.items() if k.startswith("KV cache")][0]
    assert abs(kv - kv_per_token * prof.base.batch_size * 2048 / gib) < 0.01
    hyper = [v for k, v in items.items() if k.startswith("hypernetwork")][0]
    assert abs(hyper - 230.03e6 * 2 / gib) < 0.01
    if prof.base.quantization == "8bit":
        assert abs(items[[k for k in items if "8-bit" in k][0]] - linears / gib) < 0.01
        assert abs(items[[k for k in items if "embed_tokens" in k][0]] - embed * 2 / gib) < 0.01
        assert prof.encoder.device == "cpu" and [v for k, v in items.items() if k.startswith("text encoder")][0] == 0
    else:
        assert abs(items[[k for k in items if k.startswith("base in bf16")][0]] - (linears + embed) * 2 / gib) < 0.01
        assert abs([v for k, v in items.items() if k.startswith("text encoder")][0] - 434e6 * 2 / gib) < 0.01


# ------------------------------------------------------------------------------------------------ quantization


def test_quantization_none_imports_nothing():
    code = (
        "import sys\n"
        "from t2lcli.hw_profiles import load_profile\n"
        "from t2lcli.engine.base_model import quantization_config\n"
        "assert quantization_config(load_profile('cpu').base) is None\n"
        "print('bitsandbytes' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_quantization_without_bitsandbytes_is_a_clear_error(monkeypatch):
    from t2lcli.engine.base_model import quantization_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes -> ImportError, installed or not
    with pytest.raises(T2LError, match="quantization 8bit needs bitsandbytes") as info:
        quantization_config(load_profile("gpu-16gb").base)
    assert "pip install bitsandbytes" in info.value.hint


def test_quantization_maps_to_bitsandbytes_config(monkeypatch):
    import types

    import torch
    from transformers import BitsAndBytesConfig

    from t2lcli.engine.base_model import quantization_config

    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    q8 = quantization_config(ComponentSettings(quantization="8bit"))
    assert isinstance(q8, BitsAndBytesConfig) and q8.load_in_8bit and not q8.load_in_4bit
    q4 = quantization_config(ComponentSettings(quantization="4bit"))
    assert isinstance(q4, BitsAndBytesConfig) and q4.load_in_4bit and q4.bnb_4bit_quant_type == "nf4"
    assert q4.bnb_4bit_compute_dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------------- CLI


def test_inspect_profile_json(runner, cli_app):
    res = runner.invoke(cli_app, ["inspect", "profile", "gpu-16gb", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["name"] == "gpu-16gb" and data["base"]["quantization"] == "8bit" and data["memory_budget_gb"] == 16.0
    assert set(data) >= {"hypernet", "encoder", "base", "threads", "source"}
    assert set(data["base"]) == {f for f in ComponentSettings.__dataclass_fields__}
    assert res.stderr == ""


def test_inspect_profile_plain_and_set(runner, cli_app):
    res = runner.invoke(cli_app, ["inspect", "profile", "cpu", "--set", "base.batch_size=2"])
    assert res.exit_code == 0, res.output
    import yaml

    assert yaml.safe_load(res.stdout)["base"]["batch_size"] == 2


def test_inspect_profile_errors(runner, cli_app, tmp_path):
    res = runner.invoke(cli_app, ["inspect", "profile", "nope"])
    assert res.exit_code == 1 and "unknown profile 'nope'" in res.stderr and "Traceback" not in res.output
    assert res.stdout == ""
    bad = tmp_path / "b.yaml"
    bad.write_text("base: {dtype: float64}\n")
    res = runner.invoke(cli_app, ["inspect", "profile", str(bad), "--set", "oops"])
    assert res.exit_code == 1 and "2 problems" in res.stderr and "base.dtype" in res.stderr and "'oops'" in res.stderr
