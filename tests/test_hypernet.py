"""Hypernetwork: published parameter counts, golden reference outputs, variants, init."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED
from numeric import assert_close, close

from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig, count_params_formula

LLAMA8B = {"q_proj": [4096, 4096], "v_proj": [4096, 1024]}
GEMMA2B = {"q_proj": [2304, 2048], "v_proj": [2304, 1024]}


@pytest.mark.parametrize(
    "variant,latent,head_in,dims,layers,expected_m",
    [
        ("L", 128, 512, LLAMA8B, 32, 55.42),
        ("M", 128, 512, LLAMA8B, 32, 34.41),
        ("S", 128, 512, LLAMA8B, 32, 4.99),
        ("L", 512, 2048, LLAMA8B, 32, 230.03),
        ("M", 512, 2048, LLAMA8B, 32, 146.10),
        ("S", 512, 2048, LLAMA8B, 32, 28.61),
        ("L", 512, 2048, GEMMA2B, 26, 137.71),
        ("L", 128, 512, GEMMA2B, 26, 32.31),
    ],
)
def test_published_parameter_counts(variant, latent, head_in, dims, layers, expected_m):
    cfg = HyperNetConfig(variant=variant, emb_dim=1024, latent=latent, head_in=head_in, n_layers=layers, module_dims=dims)
    with torch.device("meta"):
        net = HyperLoRA(cfg)
    n = net.n_params()
    assert n == count_params_formula(cfg)
    assert round(n / 1e6, 2) == expected_m


def test_no_zero_buffers_by_default():
    cfg = HyperNetConfig(emb_dim=8, latent=16, head_in=8, n_layers=2, module_dims={"q_proj": [8, 8], "v_proj": [8, 4]})
    keys = HyperLoRA(cfg).state_dict().keys()
    assert not any(k.startswith(("AB_offset", "mean_recon", "std_recon")) for k in keys)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_variants_shapes_and_init(variant):
    dims = {"q_proj": [12, 12], "v_proj": [12, 6]}
    cfg = HyperNetConfig(variant=variant, emb_dim=10, latent=16, head_in=24, n_layers=3, module_dims=dims)
    net = HyperLoRA(cfg).eval()
    out = net(torch.randn(4, 10))
    for m, (d_in, d_out) in dims.items():
        a, b = out[m]
        assert a.shape == (4, 3, 8, d_in) and b.shape == (4, 3, d_out, 8)
    if variant == "L":  # bias-HyperInit: zero head weight, B = 0, A identical across descriptions
        a, b = out["q_proj"]
        assert torch.all(b == 0)  # bitwise: a zero weight times anything is exactly zero
        assert torch.equal(a[0], a[1])  # bitwise: zero head weight, so every row is exactly the bias


def test_module_order_matters():
    dims = {"q_proj": [8, 8], "v_proj": [8, 4]}
    torch.manual_seed(0)
    net = HyperLoRA(HyperNetConfig(emb_dim=6, latent=16, head_in=8, n_layers=2, module_dims=dims)).eval()
    for h in net.heads.values():
        torch.nn.init.normal_(h.weight)
    sd = net.state_dict()
    rev = HyperLoRA(HyperNetConfig(emb_dim=6, latent=16, head_in=8, n_layers=2, module_dims=dims, target_modules=["v_proj", "q_proj"])).eval()
    rev.load_state_dict(sd)
    e = torch.randn(1, 6)
    assert not close(net(e)["q_proj"][0], rev(e)["q_proj"][0], depth=10)


GOLDEN = SHARED / "golden" / "sakana-t2l"


@pytest.mark.skipif(not GOLDEN.is_dir(), reason=f"golden fixtures not found at {GOLDEN}")
@pytest.mark.parametrize("case", ["llama_L", "llama_L_reversed", "gemma2_L", "mistral_M", "llama_S"])
def test_official_golden(case):
    from golden_helpers import golden_check

    from t2lcli.engine.checkpoint import load_checkpoint

    folder = GOLDEN / case
    ckpt = load_checkpoint(str(folder))
    meta = json.loads((folder / "golden.json").read_text())
    assert ckpt.config.target_modules == list(meta["module_order"])
    golden_check(ckpt, folder)


@pytest.mark.parametrize("variant", ["L", "M", "S"])
def test_layer_subset_matches_the_full_result_with_offsets(variant):
    """All layers use the A/B offsets as stored (no gather); a subset gathers them: both give the same numbers."""
    torch.manual_seed(0)
    cfg = HyperNetConfig(variant=variant, emb_dim=16, latent=32, head_in=24, r=2, n_layers=5,
                         target_modules=["q_proj", "v_proj"], module_dims={"q_proj": [12, 12], "v_proj": [12, 6]}, ab_offset=True)
    net = HyperLoRA(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        z = net.encode(torch.randn(3, 16))
        for m in cfg.target_modules:
            a, b = net.generate_module(z, m)
            layers = torch.tensor([4, 1])
            sa, sb = net.generate_module(z, m, layers)
            # gathered vs. full: other matrix shapes, so other BLAS kernels (AVX2 vs. AVX-512, block sizes): not bitwise
            assert_close(sa, a[:, layers], depth=4, msg=m)
            assert_close(sb, b[:, layers], depth=4, msg=m)
            ra, rb = net.generate_module(z, m, torch.arange(5).flip(0))  # all layers, another order: gathered
            assert_close(ra, a.flip(1), depth=4, msg=m)
            assert_close(rb, b.flip(1), depth=4, msg=m)
            net.AB_offset["A"][m].zero_()
            za, _ = net.generate_module(z, m)
            assert not close(za, a, depth=4)  # the offset was really added
