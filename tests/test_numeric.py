"""The comparison helper of tests/numeric.py: kernel-level rounding passes, a real difference fails."""

from __future__ import annotations

import pytest
import torch
from numeric import assert_close, close, max_rel_diff, rel_tol


def test_cancellation_keeps_the_absolute_error_of_its_terms():
    """The case of issue 17: an element that cancels to ~0 from ~300-sized terms; an elementwise rtol would fail it."""
    want = torch.tensor([243.1304, -0.37, 12.0])
    got = want + torch.tensor([1e-4, 1e-4, -1e-4])  # last-digit differences of a reordered sum (~4e-7 of 243)
    assert_close(got, want)
    assert not torch.allclose(got, want, rtol=1e-5, atol=1e-5)  # what the old check did with the -0.37


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_real_difference_fails(dtype):
    want = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)).to(dtype)
    tol = rel_tol(dtype, depth=10)
    assert_close(want.clone(), want, depth=10)
    wrong = [want * (1 + 20 * tol), want.roll(1, 0), torch.zeros_like(want), want + 20 * tol * want.abs().max()]
    for bad in wrong:
        assert not close(bad, want, depth=10)
        with pytest.raises(AssertionError, match="max"):
            assert_close(bad, want, depth=10)
    assert not close(want[:2], want)  # another shape


def test_zero_reference_needs_exact_zero():
    z = torch.zeros(3)
    assert max_rel_diff(z, z) == 0.0 and close(z.clone(), z)
    assert not close(torch.tensor([0.0, 1e-30, 0.0]), z)


def test_tolerance_scales_with_dtype_and_depth():
    assert rel_tol(torch.float32) == pytest.approx(1e-6) and rel_tol(torch.float32, 20) == pytest.approx(2e-5)
    assert rel_tol(torch.bfloat16) == pytest.approx(1e-2)
    a32, a16 = torch.ones(2), torch.ones(2, dtype=torch.bfloat16)
    assert close(a32 * (1 + 5e-3), a16)  # a bf16 side sets the bf16 tolerance
    assert not close(a32 * (1 + 5e-3), a32)
