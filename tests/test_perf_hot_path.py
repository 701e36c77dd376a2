"""The generate hot path's shortcuts give exactly what the plain ops give (no timing asserts: speed is `t2l bench`'s)."""

from __future__ import annotations

import torch

from t2lcli.engine.generate import finite_items


def test_finite_items_equals_isfinite_all_on_strided_factors() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(9, 4, 40, generator=g)
    a = h[..., :24].reshape(9, 4, 3, 8)  # as the L heads' A: a strided view of the head output
    b = h[..., 24:].reshape(9, 4, 2, 8).transpose(-1, -2)  # B: transposed
    a = a.clone()
    a[1, 0, 0, 0] = float("nan")
    a[2, 3, 2, 7] = float("inf")
    a[4, 0, 0, 0] = -float("inf")
    a[5, 1, 1, 1], a[5, 1, 1, 2] = 3e38, 3e38  # finite values whose sum overflows: still finite
    a[6, 0, 0, 0], a[6, 0, 0, 1] = float("inf"), -float("inf")  # inf - inf = nan in the sum: not finite
    for t in (a, b, b * 1e38):
        want = torch.isfinite(t).flatten(1).all(1)
        assert torch.equal(finite_items(t), want)
    assert finite_items(a).tolist() == [True, False, False, True, False, True, False, True, True]


def test_inference_adds_the_ab_offset_in_place_with_the_same_bytes() -> None:
    """The L variant's batched inference adds the stored A/B offset into the head output's views: the same values as
    the out-of-place add that training (autograd) uses."""
    from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig

    torch.manual_seed(0)
    cfg = HyperNetConfig(emb_dim=16, latent=16, head_in=8, n_layers=3, r=2, target_modules=["q_proj", "v_proj"],
                         module_dims={"q_proj": [12, 12], "v_proj": [12, 6]}, ab_offset=True)
    net = HyperLoRA(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
        emb = torch.randn(4, 16)
        got = net(emb)  # the batched inference path: in place
        for mod in cfg.target_modules:
            h = torch.randn(4, 3, cfg.head_out(mod))
            d_in, d_out = cfg.module_dims[mod]
            a = h[..., : 2 * d_in].reshape(4, 3, 2, d_in)
            b = h[..., 2 * d_in :].reshape(4, 3, 2, d_out).transpose(-1, -2)
            want = net._to_raw_scale(a, b, mod, None)  # out of place
            ia, ib = net._to_raw_scale(a.clone(), b.clone(), mod, None, inplace=True)
            assert torch.equal(ia, want[0]) and torch.equal(ib, want[1])
            assert not torch.equal(want[0], a)  # the offset is not zero: something was added
    with torch.enable_grad():
        again = net(emb)
    for mod in cfg.target_modules:  # with autograd on, the out-of-place add runs: the same numbers
        assert torch.equal(again[mod][0].detach(), got[mod][0]) and torch.equal(again[mod][1].detach(), got[mod][1])
