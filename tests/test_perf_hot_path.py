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
