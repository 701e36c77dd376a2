"""Official SakanaAI T2L checkpoints (issue 5): safe loading, bad input, reconstruction checkpoints, conversion to the
native format, the gte description pipeline, hub syntax, the scaling contract, and peak memory at Llama-8B size."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED
from golden_helpers import golden_check
from numeric import assert_close
from safetensors.torch import load_file, save_file

from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig

GOLDEN = SHARED / "golden" / "sakana-t2l"
CASES = ["llama_L", "llama_L_reversed", "gemma2_L", "mistral_M", "llama_S"]
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden fixtures not found at {GOLDEN}")
GTE = "Alibaba-NLP/gte-large-en-v1.5"
TINY_DIMS = {"q_proj": [16, 16], "v_proj": [16, 8]}
LLAMA8B_DIMS = {"q_proj": [4096, 4096], "v_proj": [4096, 1024]}


# ----------------------------------------------------------------------------------------------------------- helpers


def make_official(
    folder: Path,
    variant: str = "L",
    dims: dict[str, list[int]] | None = None,
    n_layers: int = 2,
    latent: int = 16,
    head_in: int = 32,
    emb_dim: int = 1024,
    r: int = 8,
    seed: int = 0,
    training_task: str = "sft",
    head_bias: bool = True,
    model_dir: str = "meta-llama/Llama-3.1-8B-Instruct",
    args_extra: dict | None = None,
) -> Path:
    """A random checkpoint in the reference's on-disk format (hypermod.pt + args.yaml + adapter_config.json).

    Values follow the golden fixtures' recipe (LayerNorm weights 1+0.1N, std buffers positive, the rest 0.05N), so
    every buffer group (AB_offset, mean/std_recon_target) is present and non-zero. Tensors are filled one at a time,
    so the 230M-parameter Llama-8B size needs about its file size in memory.
    """
    dims = dims or TINY_DIMS
    tm = list(dims)
    cfg = HyperNetConfig(
        variant=variant, emb_dim=emb_dim, latent=latent, head_in=head_in, n_layers=n_layers, target_modules=tm,
        module_dims=dims, r=r, head_bias=head_bias, ab_offset=True, recon_stats=True,
    )
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in HyperLoRA(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, shape in shapes.items():
        t = torch.randn(shape, generator=g)
        if k.startswith("std_recon_target."):
            t = t.abs_().mul_(0.05).add_(0.01)
        elif len(shape) == 1 and k.endswith(".weight"):  # LayerNorm weight
            t = t.mul_(0.1).add_(1.0)
        elif not (k.startswith(("layer_depth_encoder.0", "layer_type_encoder.0", "out_emb."))):
            t = t.mul_(0.05)
        sd[k] = t
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "hypermod.pt")
    del sd
    args = {
        "model_dir": model_dir, "emb_model": GTE, "encoder_type": "linear", "hypernet_latent_size": latent,
        "head_in_size": head_in, "shared_AB_head": variant != "L", "autoreg_gen": variant == "S", "learnable_pos_emb": False,
        "training_task": training_task, "pred_z_score": False, "factorized": False, "delta_w_scaling": 10000,
        "use_one_hot_task_emb": False, "target_modules": tm, "mt_lora_path": None, "head_use_bias": False,
        "run_name": f"test-{variant}", "train_ds_names": ["lol_task_a", "lol_task_b"],
    }
    args.update(args_extra or {})
    (folder / "args.yaml").write_text(yaml.safe_dump(args, sort_keys=True))
    adapter = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": model_dir, "r": r, "lora_alpha": 16,
               "use_rslora": True, "lora_dropout": 0.05, "target_modules": tm}
    (folder / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    return folder


def edit_args(folder: Path, **changes) -> None:
    args = yaml.safe_load((folder / "args.yaml").read_text())
    args.update(changes)
    (folder / "args.yaml").write_text(yaml.safe_dump(args))


def edit_state(folder: Path, fn) -> None:
    sd = torch.load(folder / "hypermod.pt", weights_only=True)
    torch.save(fn(sd), folder / "hypermod.pt")


def copy_case(case: str, dest: Path) -> Path:
    out = dest / case
    shutil.copytree(GOLDEN / case, out)
    return out


def one_line_error(res, *needles: str) -> str:
    """Exit 1, no traceback, exactly one `error:` line containing every needle; returns that line."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------- untrusted hypermod.pt


class _SideEffect:
    """Unpickling this (with a plain pickle) writes its marker file: a stand-in for arbitrary code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("code ran")


class _OsSystem:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Exec:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('code ran')",))


@pytest.mark.parametrize("payload", [_OsSystem, _Exec, _SideEffect])
def test_pickle_that_runs_code_is_refused_and_nothing_executes(runner, cli_app, tmp_path, payload):
    folder = make_official(tmp_path / "evil")
    marker = tmp_path / "PWNED"
    sd = torch.load(folder / "hypermod.pt", weights_only=True)
    sd["task_encoder.mlp.0.bias"] = payload(str(marker))  # a real torch zip file whose pickle calls code
    torch.save(sd, folder / "hypermod.pt")
    for args in (["inspect", str(folder)], ["convert", str(folder), "-o", str(tmp_path / "out")],
                 ["generate", "--embedding-file", str(_embedding_file(tmp_path)), "-c", str(folder), "-o", str(tmp_path / "a")]):
        res = runner.invoke(cli_app, args)
        one_line_error(res, "refused", "hypermod.pt")
        assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "out").exists() and not (tmp_path / "a").exists()
    # control: the file really is hostile - a plain (unsafe) unpickle runs the payload
    torch.load(folder / "hypermod.pt", weights_only=False)
    assert marker.exists()


def test_yaml_with_python_tags_is_refused(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "evil")
    marker = tmp_path / "PWNED"
    text = (folder / "args.yaml").read_text() + f"x: !!python/object/apply:os.system ['touch {marker}']\n"
    (folder / "args.yaml").write_text(text)
    one_line_error(runner.invoke(cli_app, ["inspect", str(folder)]), "args.yaml", "not valid YAML")
    assert not marker.exists()


def _embedding_file(tmp_path: Path, dim: int = 1024, n: int = 1, seed: int = 0) -> Path:
    path = tmp_path / f"emb{dim}x{n}.safetensors"
    if not path.exists():
        e = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))
        save_file({"embedding": torch.nn.functional.normalize(e, dim=-1) * math.sqrt(dim)}, str(path))
    return path


@pytest.mark.parametrize(
    "damage,needles",
    [
        ("truncate", ["not a torch zip checkpoint", "truncated"]),
        ("text", ["not a torch zip checkpoint"]),
        ("empty", ["not a torch zip checkpoint"]),
        ("zip_without_pickle", ["corrupt or truncated"]),
        ("list", ["holds a list"]),
        ("nested", ["not a flat dict of tensors"]),
    ],
)
def test_damaged_hypermod(runner, cli_app, tmp_path, damage, needles):
    import zipfile

    folder = make_official(tmp_path / "ck")
    pt = folder / "hypermod.pt"
    if damage == "truncate":
        data = pt.read_bytes()
        pt.write_bytes(data[: len(data) // 2])
    elif damage == "text":
        pt.write_text("this is not a checkpoint\n")
    elif damage == "empty":
        pt.write_bytes(b"")
    elif damage == "zip_without_pickle":
        pt.unlink()
        with zipfile.ZipFile(pt, "w") as z:
            z.writestr("archive/hello.txt", "hi")
    elif damage == "list":
        torch.save([torch.zeros(2)], pt)
    else:
        torch.save({"state_dict": {"a": torch.zeros(2)}, "epoch": 3}, pt)
    one_line_error(runner.invoke(cli_app, ["inspect", str(folder)]), "hypermod.pt", *needles)


@pytest.mark.parametrize("missing", ["args.yaml", "adapter_config.json"])
def test_missing_side_files(runner, cli_app, tmp_path, missing):
    folder = make_official(tmp_path / "ck")
    (folder / missing).unlink()
    one_line_error(runner.invoke(cli_app, ["inspect", str(folder)]), f"missing {missing}")
    res = runner.invoke(cli_app, ["generate", "--embedding-file", str(_embedding_file(tmp_path)), "-c", str(folder), "-o", str(tmp_path / "a")])
    one_line_error(res, f"missing {missing}")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "change,needles",
    [
        ({"encoder_type": "discrete"}, ["encoder_type 'discrete' is not supported"]),
        ({"encoder_type": "vq"}, ["encoder_type 'vq' is not supported"]),
        ({"encoder_type": "softmax"}, ["encoder_type 'softmax' is not supported"]),
        ({"use_one_hot_task_emb": True}, ["use_one_hot_task_emb", "task ids"]),
        ({"emb_model": ""}, ["emb_model is empty", "base model's weights"]),
        ({"emb_model": None}, ["emb_model is empty", "base model's weights"]),
        ({"emb_model": "some-org/unknown-embedder"}, ["not an encoder the reference supports"]),
        ({"shared_AB_head": False, "autoreg_gen": True}, ["autoreg_gen without shared_AB_head"]),
        ({"training_task": "recon", "pred_z_score": True, "factorized": False}, ["pred_z_score: true and factorized: false"]),
    ],
)
def test_unsupported_settings(runner, cli_app, tmp_path, change, needles):
    folder = make_official(tmp_path / "ck")
    edit_args(folder, **change)
    one_line_error(runner.invoke(cli_app, ["inspect", str(folder)]), *needles)


def test_every_key_and_shape_problem_is_listed_at_once(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "ck")

    def damage(sd):
        del sd["mlp1.mlp.0.weight"]
        del sd["mixer.4.bias"]
        sd["extra.weight"] = torch.zeros(3)
        sd["mlp2.mlp.1.bias"] = torch.zeros(5)
        return sd

    edit_state(folder, damage)
    line = one_line_error(
        runner.invoke(cli_app, ["inspect", str(folder)]),
        "4 problems", "missing key mlp1.mlp.0.weight", "missing key mixer.4.bias", "unexpected key extra.weight",
        "mlp2.mlp.1.bias: shape (5,) != expected (64,)",
    )
    assert line.count(";") == 3


def test_config_cross_checks_are_listed_with_key_problems(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "ck")
    edit_args(folder, hypernet_latent_size=32, head_in_size=64)
    edit_state(folder, lambda sd: {**sd, "unknown.bias": torch.zeros(1)})
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "r": 4}))
    one_line_error(
        runner.invoke(cli_app, ["inspect", str(folder)]),
        "4 problems", "hypernet_latent_size=32 but the weights say 16", "head_in_size=64 but the weights say 32",
        "r=4 but the weights have rank 8", "unexpected key unknown.bias",
    )


def test_ddp_module_prefix(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "ck")
    plain = tmp_path / "plain"
    shutil.copytree(folder, plain)
    edit_state(folder, lambda sd: {f"module.{k}": v for k, v in sd.items()})
    res = runner.invoke(cli_app, ["inspect", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    from t2lcli.engine.checkpoint import load_checkpoint

    a, b = load_checkpoint(folder), load_checkpoint(plain)
    for (k, v), (k2, v2) in zip(a.hypernet.state_dict().items(), b.hypernet.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)  # bitwise: the same stored values under other names
    # only some keys prefixed: strict loading names the strays instead of loading random weights
    edit_state(plain, lambda sd: {(f"module.{k}" if k.startswith("mlp2.") else k): v for k, v in sd.items()})
    one_line_error(runner.invoke(cli_app, ["inspect", str(plain)]), "unexpected key module.mlp2.mlp.0.weight", "missing key mlp2.mlp.0.weight")


@pytest.mark.parametrize(
    "variant,claimed_flags,needles",
    [
        ("M", {"shared_AB_head": False, "autoreg_gen": False}, ["heads.q_proj.weight is [128, 32]", "variant L", "needs [256, 32]", "fits variant M"]),
        ("S", {"shared_AB_head": True, "autoreg_gen": False}, ["heads.q_proj.weight is [16, 32]", "variant M", "needs [128, 32]", "fits variant S"]),
        ("L", {"shared_AB_head": True, "autoreg_gen": True}, ["heads.q_proj.weight is [256, 32]", "variant S", "needs [16, 32]", "fits variant L"]),
    ],
)
def test_head_shapes_checked_against_variant(runner, cli_app, tmp_path, variant, claimed_flags, needles):
    folder = make_official(tmp_path / "ck", variant=variant)
    assert runner.invoke(cli_app, ["inspect", str(folder)]).exit_code == 0
    edit_args(folder, **claimed_flags)
    one_line_error(runner.invoke(cli_app, ["inspect", str(folder)]), *needles)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_variants_load_with_sizes_from_the_weights(tmp_path, variant):
    from t2lcli.engine.checkpoint import load_checkpoint

    folder = make_official(tmp_path / "ck", variant=variant, dims={"q_proj": [24, 24], "v_proj": [24, 8]}, n_layers=3, latent=32, head_in=48)
    edit_args(folder, hypernet_latent_size=None, head_in_size=None)  # sizes must come from the state dict
    ckpt = load_checkpoint(folder)
    c = ckpt.config
    assert (c.variant, c.latent, c.head_in, c.n_layers, c.r, c.emb_dim) == (variant, 32, 48, 3, 8, 1024)
    assert c.module_dims == {"q_proj": [24, 24], "v_proj": [24, 8]} and c.target_modules == ["q_proj", "v_proj"]
    out = ckpt.hypernet(torch.randn(2, 1024))
    assert out["v_proj"][0].shape == (2, 3, 8, 24) and out["v_proj"][1].shape == (2, 3, 8, 8)


def test_target_modules_must_be_an_ordered_list(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "ck")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "target_modules": "q_proj|v_proj"}))
    one_line_error(runner.invoke(cli_app, ["inspect", str(folder)]), "target_modules must be a non-empty list")


@needs_golden
def test_module_order_is_file_order_not_a_set(tmp_path):
    from t2lcli.engine.checkpoint import load_checkpoint

    a = load_checkpoint(GOLDEN / "llama_L")
    b = load_checkpoint(GOLDEN / "llama_L_reversed")
    assert a.config.target_modules == ["q_proj", "v_proj"] and b.config.target_modules == ["v_proj", "q_proj"]
    golden_check(b, GOLDEN / "llama_L_reversed")


# ------------------------------------------------------------------------------------ reconstruction checkpoints


def _raw_outputs(ckpt, emb):
    """The heads' outputs before any raw-scale conversion or offset (same weights, SFT without offsets)."""
    from t2lcli.engine.checkpoint import materialize

    cfg = replace(ckpt.config, training_task="sft", ab_offset=False, recon_stats=False)
    sd = {k: v for k, v in ckpt.hypernet.state_dict().items() if not k.startswith(("AB_offset", "mean_recon", "std_recon"))}
    with torch.no_grad():
        return materialize(cfg, sd, "raw")(emb)


def test_recon_factorized_z_score_raw_scale(runner, cli_app, tmp_path):
    from t2lcli.engine.checkpoint import load_checkpoint

    folder = make_official(tmp_path / "recon", variant="M", training_task="recon", head_bias=False,
                           args_extra={"pred_z_score": True, "factorized": True})
    sd = torch.load(folder / "hypermod.pt", weights_only=True)
    ckpt = load_checkpoint(folder)
    assert ckpt.config.training_task == "recon" and ckpt.config.pred_z_score and ckpt.config.factorized
    assert not ckpt.config.head_bias
    emb = torch.randn(2, 1024)
    raw = _raw_outputs(ckpt, emb)
    with torch.no_grad():
        got = ckpt.hypernet(emb)
    for m in ckpt.config.target_modules:
        for i, ab in enumerate("AB"):
            want = raw[m][i] * (sd[f"std_recon_target.{ab}.{m}"] + 1e-10) + sd[f"mean_recon_target.{ab}.{m}"] + sd[f"AB_offset.{ab}.{m}"]
            assert_close(got[m][i], want, depth=2, msg=f"{m} {ab}")
    res = runner.invoke(cli_app, ["inspect", str(folder)])
    assert res.exit_code == 0, res.output
    assert "reconstruction checkpoint" in res.stderr and "module order" in res.stderr


def test_recon_non_factorized_divides_by_sqrt_delta_w_scaling(tmp_path):
    from t2lcli.engine.checkpoint import load_checkpoint

    folder = make_official(tmp_path / "recon", variant="M", training_task="recon",
                           args_extra={"pred_z_score": False, "factorized": False, "delta_w_scaling": 400})
    ckpt = load_checkpoint(folder)
    emb = torch.randn(1, 1024)
    raw = _raw_outputs(ckpt, emb)
    with torch.no_grad():
        got = ckpt.hypernet(emb)
    for m in ckpt.config.target_modules:  # /sqrt(400) = /20, no offset, no mean/std
        assert_close(got[m][0], raw[m][0] / 20, msg=m)
        assert_close(got[m][1], raw[m][1] / 20, msg=m)


# -------------------------------------------------------------------------------------------------- conversion


def _convert(runner, cli_app, src, out, *extra):
    res = runner.invoke(cli_app, ["convert", str(src), "-o", str(out), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_golden
@pytest.mark.parametrize("case", CASES)
def test_converted_golden_still_matches(runner, cli_app, tmp_path, case):
    from t2lcli.engine.checkpoint import load_checkpoint

    out = tmp_path / f"{case}-native"
    summary = _convert(runner, cli_app, GOLDEN / case, out)
    sha = hashlib.sha256((GOLDEN / case / "hypermod.pt").read_bytes()).hexdigest()
    assert summary["source_sha256"] == sha and summary["dtype"] == "float32"
    meta = json.loads((out / "t2l_config.json").read_text())
    training = meta["training"]
    assert training["source"] == str((GOLDEN / case).resolve()) and training["hypermod_sha256"] == sha
    order = json.loads((GOLDEN / case / "golden.json").read_text())["module_order"]  # {module: layer-type index}
    assert training["source_format"] == "sakana-official" and training["module_order"] == sorted(order, key=order.get)
    # the golden AB_offset is non-zero and used: kept; mean/std are unused for SFT: dropped
    keys = load_file(str(out / "hypernet.safetensors")).keys()
    assert any(k.startswith("AB_offset.") for k in keys)
    assert not any(k.startswith(("mean_recon_target", "std_recon_target")) for k in keys)
    assert set(training["dropped_buffers"]) == {"mean_recon_target", "std_recon_target"}
    assert not list(out.glob("*.pt"))
    native = load_checkpoint(out)
    assert native.format == "native" and native.config.target_modules == load_checkpoint(GOLDEN / case).config.target_modules
    golden_check(native, GOLDEN / case)


def _generate(runner, cli_app, ckpt, emb_file, out, *extra):
    res = runner.invoke(cli_app, ["generate", "--embedding-file", str(emb_file), "-c", str(ckpt), "-o", str(out), "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_golden
def test_converted_generates_byte_identical_adapters(runner, cli_app, tmp_path):
    emb = GOLDEN / "llama_L" / "golden.safetensors"  # holds 'embedding' (the golden input) among others
    native = tmp_path / "native"
    _convert(runner, cli_app, GOLDEN / "llama_L", native)
    a = _generate(runner, cli_app, GOLDEN / "llama_L", emb, tmp_path / "a_official")
    b = _generate(runner, cli_app, native, emb, tmp_path / "a_native")
    # bitwise: one process, the same weights (a copy) through the same kernels
    assert (tmp_path / "a_official" / "adapter_model.safetensors").read_bytes() == (tmp_path / "a_native" / "adapter_model.safetensors").read_bytes()
    assert a["sha256"] == b["sha256"]
    golden = load_file(str(emb))
    written = load_file(str(tmp_path / "a_native" / "adapter_model.safetensors"))
    for k in written:
        assert_close(written[k], golden[k], depth=20, msg=k)  # golden: made on another CPU


@pytest.mark.parametrize("variant", ["L", "S"])
def test_zero_buffers_dropped_and_output_byte_identical(runner, cli_app, tmp_path, variant):
    folder = make_official(tmp_path / "ck", variant=variant)
    edit_state(folder, lambda sd: {k: (torch.zeros_like(v) if k.startswith(("AB_offset", "mean_recon", "std_recon")) else v) for k, v in sd.items()})
    native = tmp_path / "native"
    summary = _convert(runner, cli_app, folder, native)
    assert summary["dropped_buffers"] == {"AB_offset": "all zero", "mean_recon_target": "unused by sft generation, all zero",
                                          "std_recon_target": "unused by sft generation, all zero"}
    assert summary["dropped_values"] == 3 * 2 * 8 * (16 + 16 + 16 + 8)
    keys = load_file(str(native / "hypernet.safetensors")).keys()
    assert not any(k.startswith(("AB_offset", "mean_recon", "std_recon")) for k in keys)
    assert summary["bytes"] < (folder / "hypermod.pt").stat().st_size
    emb = _embedding_file(tmp_path, n=3)
    _generate(runner, cli_app, folder, emb, tmp_path / "o")
    _generate(runner, cli_app, native, emb, tmp_path / "n")
    for name in ("emb-000000", "emb-000001", "emb-000002"):  # bitwise: same process and kernels; dropped zeros added nothing
        assert (tmp_path / "o" / name / "adapter_model.safetensors").read_bytes() == (tmp_path / "n" / name / "adapter_model.safetensors").read_bytes()


def test_recon_conversion_keeps_used_stats(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "recon", variant="M", training_task="recon", head_bias=False,
                           args_extra={"pred_z_score": True, "factorized": True})
    native = tmp_path / "native"
    summary = _convert(runner, cli_app, folder, native)
    assert summary["dropped_buffers"] == {}
    emb = _embedding_file(tmp_path)
    _generate(runner, cli_app, folder, emb, tmp_path / "o")
    _generate(runner, cli_app, native, emb, tmp_path / "n")
    # bitwise: same process, the same stored statistics through the same kernels
    assert (tmp_path / "o" / "adapter_model.safetensors").read_bytes() == (tmp_path / "n" / "adapter_model.safetensors").read_bytes()


def test_convert_bf16(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "ck", variant="M")
    native = tmp_path / "bf16"
    summary = _convert(runner, cli_app, folder, native, "--dtype", "bf16")
    assert summary["dtype"] == "bfloat16"
    assert {v.dtype for v in load_file(str(native / "hypernet.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((native / "t2l_config.json").read_text())["weights_dtype"] == "bfloat16"
    emb = _embedding_file(tmp_path)
    _generate(runner, cli_app, folder, emb, tmp_path / "o")
    _generate(runner, cli_app, native, emb, tmp_path / "n")
    a = load_file(str(tmp_path / "o" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "n" / "adapter_model.safetensors"))
    for k in a:
        assert_close(a[k], b[k], dtype=torch.bfloat16, depth=5, msg=k)  # bf16 weights vs. fp32: 5 chained layers


def test_convert_refuses_existing_output_and_bad_sources(runner, cli_app, tmp_path):
    folder = make_official(tmp_path / "ck")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    one_line_error(runner.invoke(cli_app, ["convert", str(folder), "-o", str(out)]), "output already exists")
    assert (out / "keep.txt").read_text() == "mine"
    # --force replaces only a previous t2l output: the user's folder stays (tests/test_output_safety.py)
    one_line_error(runner.invoke(cli_app, ["convert", str(folder), "-o", str(out), "--force"]), "keep.txt")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert runner.invoke(cli_app, ["convert", str(folder), "-o", str(out)]).exit_code == 0
    res = runner.invoke(cli_app, ["convert", str(folder), "-o", str(out), "--force"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(out)
    (folder / "args.yaml").unlink()
    one_line_error(runner.invoke(cli_app, ["convert", str(folder), "-o", str(tmp_path / "o2")]), "missing args.yaml")
    assert not (tmp_path / "o2").exists()
    assert runner.invoke(cli_app, ["convert", str(folder), "-o", str(tmp_path / "o3"), "--dtype", "fp8"]).exit_code == 2
    # a native checkpoint converts too (e.g. to bf16), its provenance kept
    again = _convert(runner, cli_app, out, tmp_path / "o4", "--dtype", "bf16")
    assert again["source_format"] == "native"
    prov = json.loads((tmp_path / "o4" / "t2l_config.json").read_text())["training"]
    assert prov["source_format"] == "native" and prov["previous_conversion"]["source_format"] == "sakana-official"


# ------------------------------------------------------------------------------------- description handling (gte)


def test_gte_spec_is_the_reference_pipeline(tmp_path):
    from t2lcli.engine.checkpoint import load_checkpoint
    from t2lcli.engine.encoder import encoder_spec_for

    spec = encoder_spec_for(GTE)
    assert (spec.dim, spec.pooling, spec.normalize, spec.add_full_stop, spec.max_length, spec.prefix) == (1024, "cls", "l2_sqrt_dim", True, 8192, "")
    assert spec.trust_remote_code is False  # only the user can allow remote code, never a stored spec
    ckpt = load_checkpoint(make_official(tmp_path / "ck"))
    assert ckpt.encoder == spec


def _cls_encoder(tiny_encoder_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tiny_cls"
    shutil.copytree(tiny_encoder_dir, out)
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    return out


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_and_normalisation_match_a_manual_computation(tiny_encoder_dir, tmp_path, pooling):
    from transformers import AutoModel, AutoTokenizer

    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

    path = _cls_encoder(tiny_encoder_dir, tmp_path) if pooling == "cls" else tiny_encoder_dir
    spec = encoder_spec_for(str(path))
    assert spec.pooling == pooling and spec.normalize == "l2_sqrt_dim"
    texts = ["answer math word problems step by step", "translate english", "  summarize text  "]
    got = TextEncoder(spec).embed(texts)

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
    want = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all, so nothing to get wrong
            s = t.strip()
            s = s + "." if s[-1].isalpha() else s
            ids = tok(s, return_tensors="pt")
            h = model(**ids).last_hidden_state[0]
            v = h[0] if pooling == "cls" else h.mean(0)
            want.append(v / v.norm() * math.sqrt(16))
    want = torch.stack(want)
    assert got.dtype == torch.float32 and got.shape == (3, 16)
    assert_close(got, want, depth=10)  # batched + padded vs. one at a time: other shapes, other kernels
    assert_close(got.norm(dim=-1), torch.full((3,), 4.0), depth=2)  # sqrt(16)


def test_cls_pooling_refuses_left_padding():
    from t2lcli.engine.encoder import pool
    from t2lcli.errors import T2LError

    hidden = torch.randn(2, 3, 4)
    with pytest.raises(T2LError, match="right padding"):
        pool(hidden, torch.tensor([[0, 1, 1], [1, 1, 1]]), "cls")
    assert torch.equal(pool(hidden, torch.tensor([[1, 1, 0], [1, 1, 1]]), "cls"), hidden[:, 0])  # bitwise: a gather


@pytest.mark.parametrize(
    "text,expected",
    [
        ("classify the sentiment", "classify the sentiment."),
        ("  classify the sentiment \n", "classify the sentiment."),
        ("classify the sentiment.", "classify the sentiment."),
        ("what is 2+2?", "what is 2+2?"),
        ("answer with a number like 42", "answer with a number like 42"),
        ("résumé", "résumé."),
        ("say 'hi'", "say 'hi'"),
        ("end with X", "end with X."),
    ],
)
def test_add_full_stop_rule(text, expected):
    from t2lcli.engine.encoder import encoder_spec_for, preprocess

    assert preprocess(text, encoder_spec_for(GTE)) == expected


@pytest.mark.parametrize("desc", ["", "   ", "\n\t"])
def test_empty_description_rejected(runner, cli_app, tmp_path, desc):
    from t2lcli.engine.encoder import encoder_spec_for, preprocess
    from t2lcli.errors import InputError

    with pytest.raises(InputError):
        preprocess(desc, encoder_spec_for(GTE))
    folder = make_official(tmp_path / "ck")
    res = runner.invoke(cli_app, ["generate", desc, "-c", str(folder), "-o", str(tmp_path / "a"), "--trust-remote-code"])
    one_line_error(res, "empty description")
    assert not (tmp_path / "a").exists()


def test_gte_needs_trust_remote_code(runner, cli_app, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = make_official(tmp_path / "ck")
    res = runner.invoke(cli_app, ["generate", "classify movie reviews", "-c", str(folder), "-o", str(tmp_path / "a")])
    one_line_error(res, GTE, "--trust-remote-code")
    # allowed, but offline and not cached: one clear line, not a traceback
    res = runner.invoke(cli_app, ["generate", "classify movie reviews", "-c", str(folder), "-o", str(tmp_path / "a"), "--trust-remote-code"])
    one_line_error(res, GTE, "not available")
    assert "--embedding-file" in res.stderr
    assert not (tmp_path / "a").exists()


def test_local_encoder_with_remote_code_needs_opt_in(tiny_encoder_dir, tmp_path):
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for
    from t2lcli.errors import T2LError

    path = tmp_path / "remote_enc"
    shutil.copytree(tiny_encoder_dir, path)
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "auto_map": {"AutoModel": "modeling_evil.EvilModel"}}))
    with pytest.raises(T2LError, match="--trust-remote-code"):
        TextEncoder(encoder_spec_for(str(path)))


# ------------------------------------------------------------------------------------------------------ hub syntax


def test_hub_checkpoint_offline_is_one_clear_line(runner, cli_app, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    spec = "SakanaAI/text-to-lora/trained_t2l/llama_8b_t2l"
    for args in (["generate", "--embedding-file", str(_embedding_file(tmp_path)), "--checkpoint", spec, "-o", str(tmp_path / "a")],
                 ["convert", spec, "-o", str(tmp_path / "b")], ["inspect", spec]):
        res = runner.invoke(cli_app, args)
        one_line_error(res, "cannot download checkpoint", spec, "offline")
        assert 'hf download SakanaAI/text-to-lora --include "trained_t2l/llama_8b_t2l/*"' in res.stderr


def test_hub_checkpoint_online_fetches_only_that_folder(runner, cli_app, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    snap = tmp_path / "snapshot"

    def fake_snapshot_download(repo_id, allow_patterns=None, local_files_only=False, **kw):
        calls.append((repo_id, allow_patterns, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not cached")
        make_official(snap / "trained_t2l" / "llama_8b_t2l")
        return str(snap)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    rec = _generate(runner, cli_app, "SakanaAI/text-to-lora/trained_t2l/llama_8b_t2l", _embedding_file(tmp_path), tmp_path / "a")
    assert calls == [("SakanaAI/text-to-lora", ["trained_t2l/llama_8b_t2l/*"], True), ("SakanaAI/text-to-lora", ["trained_t2l/llama_8b_t2l/*"], False)]
    assert Path(rec["path"]).is_dir()


def test_hub_checkpoint_unreachable_is_one_clear_line(runner, cli_app, tmp_path, monkeypatch):
    import huggingface_hub

    def unreachable(repo_id, allow_patterns=None, local_files_only=False, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known\nmore text")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    res = runner.invoke(cli_app, ["inspect", "SakanaAI/text-to-lora/trained_t2l/llama_8b_t2l"])
    line = one_line_error(res, "the hub is unreachable", "Name or service not known")
    assert "more text" not in line and "hf download" in res.stderr


# --------------------------------------------------------------------------------------------- scaling contract


@needs_golden
def test_scaling_contract_rslora_default_and_lora(runner, cli_app, tmp_path):
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    emb = GOLDEN / "llama_L" / "golden.safetensors"
    _generate(runner, cli_app, GOLDEN / "llama_L", emb, tmp_path / "rs")
    res = runner.invoke(cli_app, ["generate", "--embedding-file", str(emb), "-c", str(GOLDEN / "llama_L"), "-o", str(tmp_path / "lo"), "--scaling", "lora"])
    assert res.exit_code == 0, res.output
    assert "trained with rsLoRA" in res.stderr and "0.35x" in res.stderr
    expected = {"rs": (True, 16 / math.sqrt(8)), "lo": (False, 2.0)}
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    shutil.copy(GOLDEN / "llama_L" / "base_config.json", base_dir / "config.json")
    for name, (rslora, scale) in expected.items():
        cfg = json.loads((tmp_path / name / "adapter_config.json").read_text())
        assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (8, 16, rslora)
        assert json.loads((tmp_path / name / "t2l_adapter.json").read_text())["effective_scale"] == pytest.approx(scale)
        rep = runner.invoke(cli_app, ["inspect", str(tmp_path / name), "--json"])
        assert rep.exit_code == 0, rep.output
        assert json.loads(rep.stdout)["effective_scale"] == pytest.approx(scale)
        assert f"{scale:.6g}" in (tmp_path / name / "README.md").read_text()
        # and that is the scale peft really applies
        torch.manual_seed(0)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base_dir)), str(tmp_path / name))
        assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(scale)
    # same factors, only the stated scale differs
    assert load_file(str(tmp_path / "rs" / "adapter_model.safetensors")).keys() == load_file(str(tmp_path / "lo" / "adapter_model.safetensors")).keys()
    # bitwise: same process, same factors; only the stated scale differs
    assert (tmp_path / "rs" / "adapter_model.safetensors").read_bytes() == (tmp_path / "lo" / "adapter_model.safetensors").read_bytes()


# --------------------------------------------------------------------------------------- memory at Llama-8B size

_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[1:])\n"
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def make_llama8b_official(folder: Path, base_dir: str) -> Path:
    """The released llama_8b_t2l's sizes: variant L, latent 512, head_in 2048, T=1024, 32 layers, q 4096->4096,
    v 4096->1024 (230.03M trainable parameters + 10.22M buffer values; hypermod.pt ~0.96 GB), random values."""
    return make_official(folder, "L", LLAMA8B_DIMS, n_layers=32, latent=512, head_in=2048, model_dir=base_dir)


@pytest.mark.slow
def test_llama8b_size_peak_rss_and_no_base_weights(tmp_path):
    # a base model folder that must never be read: its weight files are FIFOs (opening one blocks -> timeout)
    base = tmp_path / "Llama-3.1-8B-Instruct"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
                                                  "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336}))
    for i in range(1, 5):
        os.mkfifo(base / f"model-0000{i}-of-00004.safetensors")
    folder = make_llama8b_official(tmp_path / "llama_8b_t2l", str(base))
    try:
        size = (folder / "hypermod.pt").stat().st_size
        assert 0.9e9 < size < 1.0e9
        out = tmp_path / "adapter"
        cmd = [sys.executable, "-m", "t2lcli", "generate", "--embedding-file", str(_embedding_file(tmp_path)), "-c", str(folder),
               "-o", str(out), "--json"]
        trace = tmp_path / "open.log"
        strace = shutil.which("strace")
        if strace and subprocess.run([strace, "-o", os.devnull, "true"], capture_output=True).returncode == 0:
            cmd = [strace, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace), *cmd]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "T2L_HOME": str(tmp_path / "home")}
        proc = subprocess.run([sys.executable, "-c", _RSS_WRAPPER, *cmd], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peak_kb = int(proc.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
        print(f"\npeak RSS generating from a Llama-8B-size official checkpoint: {peak_kb / 1024**2:.2f} GiB (hypermod.pt {size / 1e9:.2f} GB)")
        assert peak_kb * 1024 < 3 * 1024**3, f"peak RSS {peak_kb / 1024**2:.2f} GiB"
        written = load_file(str(out / "adapter_model.safetensors"))
        assert len(written) == 2 * 2 * 32
        assert written["base_model.model.model.layers.31.self_attn.v_proj.lora_B.weight"].shape == (1024, 8)
        assert written["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 4096)
        if trace.exists():
            opened = trace.read_text()
            assert "hypermod.pt" in opened  # the trace works
            assert str(base) not in opened, "the base model folder was opened"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
