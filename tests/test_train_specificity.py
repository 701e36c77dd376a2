"""Training options for a description that matters (issue #22), on the tiny base and data of test_train.py:
`data.prompt: mix` (seeded, resumable), the description-contrastive hinge (its gap is the wrong-adapter loss minus
the own one, checked against a direct computation), and the warm start (`train.init_from`) for T2L and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from numeric import assert_close, assert_rel_error
from test_train import _metrics, tiny_data, train_base_dir, write_recipe  # noqa: F401  (module fixtures)

MIX = {"data.prompt": "mix", "data.definition_frac": 0.5, "train.contrastive_weight": 1.0, "train.contrastive_examples": 3,
       "log.val_every": 0, "log.ckpt_every": 5}


def _train(runner, cli_app, recipe: Path, out: Path, *args: str) -> None:
    res = runner.invoke(cli_app, ["train", str(recipe), "-o", str(out), *args])
    assert res.exit_code == 0, res.output


def test_mix_and_contrastive_log_their_terms_and_resume_exactly(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    recipe = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **{**MIX, "train.steps": 10})
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _train(runner, cli_app, recipe, ref)
    m = _metrics(ref)
    defs = [x["definition_prompts"] for x in m]
    assert all(0 <= d <= 4 for d in defs) and 0 < sum(defs) < 4 * len(defs), defs  # both styles drawn
    assert all(x["contrastive"] >= 0 and "contrastive_gap" in x for x in m)
    _train(runner, cli_app, recipe, cut, "--max-steps", "5")
    _train(runner, cli_app, recipe, cut, "--resume")
    assert [x["definition_prompts"] for x in _metrics(cut) if x["step"] > 5] == [x["definition_prompts"] for x in m if x["step"] > 5]
    from safetensors.torch import load_file

    a, b = load_file(str(ref / "final" / "hypernet.safetensors")), load_file(str(cut / "final" / "hypernet.safetensors"))
    for k in a:  # the styles and the contrastive pairs come from the saved sampler state: resumed = uninterrupted
        assert_close(b[k], a[k], msg=k)
    prov = json.loads((ref / "final" / "t2l_config.json").read_text())["training"]["recipe"]
    assert prov["data"]["prompt"] == "mix" and prov["train"]["contrastive_weight"] == 1.0


def test_fixed_prompt_styles_draw_nothing_from_the_sampler(tiny_data):  # noqa: F811
    """prompt input/definition must not consume the sampler's RNG (earlier runs keep their batches and resume)."""
    from t2lcli.engine.train import Trainer

    class Fake:
        pass

    for style in ("input", "definition"):
        t = Fake()
        t.recipe = type("R", (), {"data": type("D", (), {"prompt": style, "definition_frac": 0.5})()})()
        t.sampler = type("S", (), {"rng": None})()  # any draw would fail
        assert Trainer._prompt_styles(t, 3) == [style] * 3


def test_contrastive_gap_is_wrong_adapter_loss_minus_own(tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for
    from t2lcli.engine.train import Trainer, collate
    from t2lcli.hardware import ComponentSettings
    from t2lcli.recipe import load_recipe

    path = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                       **{**MIX, "train.contrastive_margin": 100.0})  # margin >> gap: the hinge is margin - gap
    recipe = load_recipe(str(path))
    model, tok = load_base_model(str(train_base_dir), ComponentSettings(device="cpu", dtype="float32", attn_implementation="sdpa"))
    tr = Trainer(recipe, tmp_path / "o", model, tok, TextEncoder(encoder_spec_for(str(tiny_encoder_dir))))
    picks = tr.sampler.sample()
    batch = collate([tr._encoded_for(i, inst, "input") for i, inst, _ in picks], tr.pad_id)
    emb = tr.embed([d for *_, d in picks])
    tr.net.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tr.net.parameters():  # a fresh head emits B = 0 (no adapter at all): move it off the start point
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        loss, _, extra = tr._forward_loss(batch, emb, train=False, contrast=3)
        own = tr._scored(tr.net(emb), batch, train=False)
        wrong_emb = emb[[1, 2, 3]]  # example j under the adapter of example j+1's description (another task)
        wrong = tr._scored(tr.net(wrong_emb), {k: v[:3] for k, v in batch.items()}, train=False)
    assert_close(loss, own.mean())
    # the gap is a difference of two losses computed in differently shaped batches: its rounding is relative to the
    # losses' size (cancellation makes it large relative to the gap itself); two losses, so depth 2
    scale = float(torch.cat([wrong, own[:3]]).abs().max())
    assert_rel_error(abs(float(extra["gap"]) - float((wrong - own[:3]).mean())) / scale, depth=2, msg="contrastive gap")
    assert_close(extra["hinge"], (100.0 - (wrong - own[:3])).mean())
    assert float((wrong - own[:3]).abs().max()) > 0  # the adapters differ by description


@pytest.mark.parametrize("loss", ["hinge", "infonce"])
def test_contrastive_with_two_negatives(loss, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    """Two negatives per scored example (the next two examples' adapters, one forward for both): the hinge is the mean
    over both, InfoNCE the cross-entropy of the own adapter among own + both, each checked against direct scoring."""
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for
    from t2lcli.engine.train import Trainer, collate
    from t2lcli.hardware import ComponentSettings
    from t2lcli.recipe import load_recipe

    path = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                        **{**MIX, "train.contrastive_loss": loss, "train.contrastive_negatives": 2, "train.contrastive_margin": 100.0,
                           "train.contrastive_temperature": 0.25})
    recipe = load_recipe(str(path))
    model, tok = load_base_model(str(train_base_dir), ComponentSettings(device="cpu", dtype="float32", attn_implementation="sdpa"))
    tr = Trainer(recipe, tmp_path / "o", model, tok, TextEncoder(encoder_spec_for(str(tiny_encoder_dir))))
    picks = tr.sampler.sample()
    n = len(picks)
    batch = collate([tr._encoded_for(i, inst, "input") for i, inst, _ in picks], tr.pad_id)
    emb = tr.embed([d for *_, d in picks])
    tr.net.eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tr.net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        _, _, extra = tr._forward_loss(batch, emb, train=False, contrast=3)
        own = tr._scored(tr.net(emb), batch, train=False)[:3]
        sub = {k: v[:3] for k, v in batch.items()}
        wrong = torch.stack([tr._scored(tr.net(emb[[(j + o) % n for j in range(3)]]), sub, train=False) for o in (1, 2)], 1)
    scale = float(torch.cat([wrong.flatten(), own]).abs().max())
    assert_rel_error(abs(float(extra["gap"]) - float((wrong - own[:, None]).mean())) / scale, depth=2, msg="gap")
    if loss == "hinge":
        want = (100.0 - (wrong - own[:, None])).mean()
    else:
        want = torch.nn.functional.cross_entropy(-torch.cat([own[:, None], wrong], 1) / 0.25, torch.zeros(3, dtype=torch.long))
    assert_rel_error(abs(float(extra["hinge"]) - float(want)) / max(1.0, abs(float(want)), scale / 0.25), depth=2, msg=loss)


def test_contrastive_options_are_checked(tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    from t2lcli.errors import ConfigError
    from t2lcli.recipe import load_recipe

    for key, bad in (("train.contrastive_loss", "triplet"), ("train.contrastive_negatives", 0), ("train.contrastive_temperature", 0.0)):
        path = write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **{**MIX, key: bad})
        with pytest.raises(ConfigError, match=key.split(".")[1]):
            load_recipe(str(path))


def test_warm_start_continues_a_checkpoint_and_an_adapter(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    base = {"train.steps": 6, "log.val_every": 0}
    first = tmp_path / "first"
    _train(runner, cli_app, write_recipe(tmp_path / "a.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **base), first)
    # lr 0: the warm-started weights come out as they went in (AdamW's decay is scaled by the lr too)
    warm = write_recipe(tmp_path / "b.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                        **{**base, "train.lr": 0.0, "train.steps": 2, "train.init_from": str(first / "final")})
    second = tmp_path / "second"
    _train(runner, cli_app, warm, second)
    a, b = load_file(str(first / "final" / "hypernet.safetensors")), load_file(str(second / "final" / "hypernet.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert_close(b[k], a[k], msg=k)
    init = json.loads((second / "final" / "t2l_config.json").read_text())["training"]["init_from"]
    assert init["path"] == str(first / "final") and init["steps"] == 6 and len(init["sha256"]) == 64
    # a checkpoint of another shape: one clear line, no traceback
    bad = write_recipe(tmp_path / "c.yaml", tiny_data, train_base_dir, tiny_encoder_dir,
                       **{**base, "train.init_from": str(first / "final"),
                          "hypernet": {"variant": "L", "latent": 8, "head_in": 32, "r": 4, "lora_alpha": 8, "dropout": 0.0}})
    res = runner.invoke(cli_app, ["train", str(bad), "-o", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "latent" in res.output and "Traceback" not in res.output
    # the multi-task LoRA continues a PEFT adapter
    lora1, lora2 = tmp_path / "l1", tmp_path / "l2"
    _train(runner, cli_app, write_recipe(tmp_path / "d.yaml", tiny_data, train_base_dir, tiny_encoder_dir, mode="lora", **base), lora1)
    _train(runner, cli_app, write_recipe(tmp_path / "e.yaml", tiny_data, train_base_dir, tiny_encoder_dir, mode="lora",
                                         **{**base, "train.lr": 0.0, "train.steps": 2, "train.init_from": str(lora1 / "final"),
                                            "train.contrastive_weight": 1.0}), lora2)
    from t2lcli.engine.adapters import load_adapter

    x, y = load_adapter(lora1 / "final").tensors, load_adapter(lora2 / "final").tensors
    for k in x:
        assert_close(y[k], x[k], msg=k)
    assert "contrastive" not in _metrics(lora2)[-1]  # one shared LoRA has no other task's adapter to contrast with


@pytest.mark.parametrize("mutate,needle", [({"data.definition_frac": 1.5}, "definition_frac"), ({"data.prompt": "both"}, "mix")])
def test_bad_specificity_options(runner, cli_app, tiny_data, train_base_dir, tiny_encoder_dir, tmp_path, mutate, needle):  # noqa: F811
    res = runner.invoke(cli_app, ["train", str(write_recipe(tmp_path / "r.yaml", tiny_data, train_base_dir, tiny_encoder_dir, **mutate)),
                                  "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and needle in res.output and "Traceback" not in res.output
