"""PEFT adapter I/O in the engine: atomic writes, the model card, validation that lists every problem, and proof
that peft loads what we write (tiny model here; the real SmolLM2 in the slow test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from numeric import TINY_LLAMA_DEPTH, assert_close

from t2lcli import __version__
from t2lcli.engine import adapters as ad_mod
from t2lcli.engine.adapters import Adapter, load_adapter, peft_config, save_adapter
from t2lcli.engine.atomic import TMP_MARK
from t2lcli.errors import AdapterFormatError, OutputExistsError

SHA = "ab" * 32


def _adapter(base_dir: Path, r: int = 4, seed: int = 0, rslora: bool = True, modules=("q_proj", "v_proj")) -> Adapter:
    """Random (A, B) with non-zero B for every layer and module of a base model, keyed as peft expects."""
    from t2lcli.engine.base_model import read_config, shape_from_config

    shape = shape_from_config(read_config(base_dir), list(modules))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(shape.n_layers):
        for m, s in shape.modules.items():
            tensors[shape.peft_key(m, layer, "A")] = torch.randn(r, s.d_in, generator=g) * 0.2
            tensors[shape.peft_key(m, layer, "B")] = torch.randn(s.d_out, r, generator=g) * 0.2
    config = peft_config(r, 2 * r, list(modules), str(base_dir), use_rslora=rslora)
    meta = {"description": "Add two numbers | and show the work.", "checkpoint": "ckpt/dir", "checkpoint_sha256": SHA, "scale": 1.0}
    return Adapter(config, tensors, meta)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TMP_MARK))


def test_round_trip(tiny_base_dir, tmp_path):
    a = _adapter(tiny_base_dir)
    out = save_adapter(a, tmp_path / "ad")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "t2l_adapter.json"]
    b = load_adapter(out)
    assert b.config == a.config and b.r == 4 and b.n_layers() == 2 and b.modules() == ["q_proj", "v_proj"]
    assert set(b.tensors) == set(a.tensors)
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k])  # bitwise: a save/load round trip
        assert b.tensors[k].shape[0 if ".lora_A." in k else 1] == 4
    assert b.tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].shape == (16, 4)
    assert b.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 32)
    assert b.meta["tool_version"] == __version__ and b.meta["checkpoint_sha256"] == SHA
    assert b.scaling == pytest.approx(8 / 4**0.5)
    half = save_adapter(a, tmp_path / "half", dtype=torch.bfloat16)
    assert {t.dtype for t in load_adapter(half).tensors.values()} == {torch.bfloat16}


def test_model_card(tiny_base_dir, tmp_path):
    a = _adapter(tiny_base_dir, rslora=False)
    out = save_adapter(a, tmp_path / "ad")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    assert f"base_model: {tiny_base_dir}" in card
    assert "| description | Add two numbers \\| and show the work. |" in card
    assert f"| base model | {tiny_base_dir} |" in card
    assert "| scaling | 2 (alpha/r) |" in card
    assert f"| checkpoint sha256 | {SHA} |" in card
    assert f"| tool | t2l {__version__} |" in card
    assert "PeftModel.from_pretrained" in card
    # deterministic: the same adapter writes byte-identical folders
    again = save_adapter(a, tmp_path / "ad2")
    for name in ["README.md", "adapter_config.json", "adapter_model.safetensors", "t2l_adapter.json"]:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name


def test_refuses_existing_output(tiny_base_dir, tmp_path):
    out = tmp_path / "ad"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="already exists"):
        save_adapter(_adapter(tiny_base_dir), out)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    with pytest.raises(OutputExistsError, match="did not write"):  # --force replaces only a previous t2l output
        save_adapter(_adapter(tiny_base_dir), out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    (out / "mine.txt").unlink()
    save_adapter(_adapter(tiny_base_dir), out)
    save_adapter(_adapter(tiny_base_dir), out, force=True)
    assert (out / "adapter_model.safetensors").is_file()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["weights", "card"])
def test_failure_mid_write_leaves_nothing(tiny_base_dir, tmp_path, monkeypatch, where):
    import t2lcli.engine.atomic as atomic_mod

    if where == "weights":
        real = atomic_mod.write_safetensors_sha256

        def broken_save(tensors, filename, metadata=None):
            Path(filename).write_bytes(b"partial")  # half a file on disk, then the disk fills up
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(atomic_mod, "write_safetensors_sha256", broken_save)
        assert real is not broken_save
    else:
        def broken_card(adapter):  # weights and config are already written when the card fails
            raise RuntimeError("killed while writing the card")

        monkeypatch.setattr(ad_mod, "model_card", broken_card)
    with pytest.raises((OSError, RuntimeError)):
        save_adapter(_adapter(tiny_base_dir), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert _leftovers(tmp_path) == []
    # with --force over an existing adapter, a failure keeps the old one intact
    monkeypatch.undo()
    old = save_adapter(_adapter(tiny_base_dir, seed=1), tmp_path / "old")
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(ad_mod, "model_card", lambda adapter: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        save_adapter(_adapter(tiny_base_dir, seed=2), old, force=True)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert _leftovers(tmp_path) == []


def test_ctrl_c_while_the_temporary_is_being_held_leaves_nothing(tiny_base_dir, tmp_path, monkeypatch):
    """A Ctrl-C that lands right after the temporary folder is made (while its lock is taken, before anything is
    written) removes it too: found as a `.t2l-tmp-*` the batch Ctrl-C test saw left behind on one fresh-clone run."""
    import t2lcli.engine.atomic as atomic_mod

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic_mod, "_hold", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(_adapter(tiny_base_dir), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert _leftovers(tmp_path) == []


def _write(folder: Path, config: object | str | None, tensors: dict[str, torch.Tensor] | bytes | None) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    if config is not None:
        (folder / "adapter_config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if isinstance(tensors, bytes):
        (folder / "adapter_model.safetensors").write_bytes(tensors)
    elif tensors is not None:
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def test_load_reports_every_problem_at_once(tmp_path):
    p = "base_model.model.model.layers.{}.self_attn.{}.lora_{}.weight"
    nan = torch.zeros(4, 8)
    nan[0, 0] = float("nan")
    tensors = {
        p.format(0, "q_proj", "A"): torch.zeros(4, 8), p.format(0, "q_proj", "B"): torch.zeros(8, 3),   # A/B rank mismatch
        p.format(1, "q_proj", "A"): nan, p.format(1, "q_proj", "B"): torch.zeros(8, 4),                 # NaN
        p.format(0, "v_proj", "A"): torch.zeros(4, 8),                                                   # lora_B missing
        p.format(1, "v_proj", "A"): torch.zeros(2, 8), p.format(1, "v_proj", "B"): torch.zeros(8, 2),   # rank 2 != r=4
        "model.layers.0.self_attn.k_proj.weight": torch.zeros(2, 2),                                     # not a LoRA key
        p.format(2, "o_proj", "A"): torch.zeros(4, 8, 1), p.format(2, "o_proj", "B"): torch.zeros(8, 4),  # 3-D
    }
    cfg = peft_config(4, 8, ["q_proj", "v_proj"], "base")
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(_write(tmp_path / "a", cfg, tensors))
    msg = info.value.message
    assert msg.startswith(f"invalid adapter {tmp_path / 'a'} (6 problems): "), msg
    for needle in ["layers.0.self_attn.q_proj: rank mismatch lora_A (4, 8) vs lora_B (8, 3)",
                   "layers.1.self_attn.q_proj: contains NaN or Inf",
                   "layers.0.self_attn.v_proj: lora_B is missing",
                   "layers.1.self_attn.v_proj: rank 2 differs from r=4 in the config",
                   "unexpected tensor key model.layers.0.self_attn.k_proj.weight",
                   "layers.2.self_attn.o_proj: lora_A/lora_B must be 2-D"]:
        assert needle in msg, needle
    assert "\n" not in msg


def test_finite_factors_whose_delta_overflows_are_refused(tmp_path):
    """Finite A and B whose scaling · B @ A leaves float32 (found by the adapter-folder fuzz: B at 3e38) are refused
    like NaN/Inf; large but representable factors still load, and the delta they give is finite."""
    p = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.weight"
    cfg = peft_config(4, 8, ["q_proj"], "base")
    with pytest.raises(AdapterFormatError, match=r"q_proj: scaling · lora_B @ lora_A overflows float32"):
        load_adapter(_write(tmp_path / "huge", cfg, {p.format("A"): torch.ones(4, 8), p.format("B"): torch.full((8, 4), 3e38)}))
    ok = load_adapter(_write(tmp_path / "big", cfg, {p.format("A"): torch.ones(4, 8), p.format("B"): torch.full((8, 4), 1e36)}))
    assert torch.isfinite(ok.delta("base_model.model.model.layers.0.self_attn.q_proj")).all()


def test_load_reports_config_and_file_problems_together(tmp_path):
    bad_cfg = {"peft_type": "IA3", "r": 0, "lora_alpha": "big"}
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(_write(tmp_path / "b", bad_cfg, b"\x00garbage"))
    msg = info.value.message
    assert "(4 problems)" in msg and "peft_type is IA3" in msg and "r must be a positive integer, got 0" in msg
    assert "lora_alpha must be a number" in msg and "adapter_model.safetensors is not a valid safetensors file" in msg

    with pytest.raises(AdapterFormatError) as info:
        load_adapter(_write(tmp_path / "c", "{not json", None))
    msg = info.value.message
    assert "adapter_config.json is not valid JSON" in msg and "missing adapter_model.safetensors" in msg and "2 problems" in msg

    d = _write(tmp_path / "d", None, None)
    (d / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(d)
    assert "missing adapter_config.json" in info.value.message and "adapter_model.bin is not read: pickle" in info.value.message

    with pytest.raises(AdapterFormatError, match="holds no tensors"):
        load_adapter(_write(tmp_path / "e", peft_config(4, 8, ["q_proj"], "b"), {}))
    with pytest.raises(AdapterFormatError, match="adapter folder not found"):
        load_adapter(tmp_path / "nowhere")


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("rslora", [True, False])
def test_peft_loads_it_and_logits_match_manual_merge(tiny_base_dir, tmp_path, rslora):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a = _adapter(tiny_base_dir, rslora=rslora)
    out = save_adapter(a, tmp_path / "ad")
    ids = torch.tensor([[1, 5, 9, 12, 30, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    ref = _logits(base, ids)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_base_dir), str(out))
    assert peft_model.peft_config["default"].use_rslora is rslora
    lora_q = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert lora_q.scaling["default"] == pytest.approx(a.scaling)
    got = _logits(peft_model, ids)
    merged = AutoModelForCausalLM.from_pretrained(tiny_base_dir)
    with torch.no_grad():
        for prefix in a.prefixes():
            merged.get_submodule(prefix.removeprefix("base_model.model.")).weight += a.delta(prefix)
    want = _logits(merged, ids)
    assert (got - ref).abs().max() > 1e-2  # the adapter is live
    assert_close(got, want, depth=TINY_LLAMA_DEPTH)  # peft's hook vs. W + ΔW: other sums


@pytest.mark.slow
def test_engine_adapter_changes_real_smollm2_as_expected(tiny_encoder_dir, tmp_path, monkeypatch):
    """An adapter generated and written by the engine (non-zero B) loads with peft on the real SmolLM2, and the
    logits move by exactly the manual merge W + s * B @ A."""
    from conftest import REAL_T2L_HOME, make_checkpoint
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from t2lcli.engine.base_model import resolve_model
    from t2lcli.engine.generate import GenerateOptions, Generator

    monkeypatch.setenv("T2L_HOME", REAL_T2L_HOME)  # the converted SmolLM2 (converted once if missing)
    smol = resolve_model("smollm2-135m-instruct")
    ckpt = make_checkpoint(smol, tiny_encoder_dir)
    gen = Generator(ckpt)
    emb = torch.randn(1, ckpt.hypernet.config.emb_dim, generator=torch.Generator().manual_seed(0))
    adapter = gen.adapters_from_embeddings(emb, ["Answer grade-school math questions."], GenerateOptions(scale=1.0))[0]
    out = gen.save(adapter, tmp_path / "smol_ad")
    written = load_adapter(out)
    assert written.n_layers() == 30 and set(written.modules()) == {"q_proj", "v_proj"}
    assert all(written.tensors[f"{p}.lora_B.weight"].abs().max() > 0 for p in written.prefixes())  # non-zero B
    assert written.tensors["base_model.model.model.layers.29.self_attn.v_proj.lora_B.weight"].shape == (192, written.r)

    tok = AutoTokenizer.from_pretrained(smol)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    base = AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32)
    ref = _logits(base, ids)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smol, dtype=torch.float32), str(out))
    got = _logits(peft_model, ids)
    with torch.no_grad():
        for prefix in written.prefixes():
            base.get_submodule(prefix.removeprefix("base_model.model.")).weight += written.delta(prefix)
    want = _logits(base, ids)
    change, expected = (got - ref), (want - ref)
    assert change.abs().max() > 0.05, f"the adapter barely changes SmolLM2: {change.abs().max():.2e}"
    err = (change - expected).abs().max() / expected.abs().max()
    print(f"SmolLM2 logits: max |peft - base| = {change.abs().max():.4f}, max |merge - base| = {expected.abs().max():.4f}, relative gap {err:.2e}")
    assert err < 1e-3, f"peft's change differs from the manual merge by {err:.2e} of its size"


def test_non_string_base_model_is_a_format_error(tmp_path):
    """Found by the fuzzer: a numeric base_model_name_or_path crashed `t2l merge` with an AttributeError."""
    import json

    import pytest
    import torch
    from safetensors.torch import save_file

    from t2lcli.engine.adapters import load_adapter
    from t2lcli.errors import AdapterFormatError

    d = tmp_path / "a"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": 10**19, "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 4),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(4, 2)}, str(d / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="base_model_name_or_path"):
        load_adapter(d)
