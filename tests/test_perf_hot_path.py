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


def test_padded_batch_runs_the_real_tokens_only_with_each_texts_numbers(tiny_encoder_dir) -> None:
    """A padded batch runs the BERT's linears on the real tokens only: every text's hidden states equal its own
    (alone, unpadded) within fp32 rounding; padded positions are zeros; a batch without padding is unchanged."""
    from numeric import TINY_BERT_DEPTH, assert_rel_error, max_rel_diff

    from t2lcli.engine import bert

    texts = ["Answer math word problems step by step.", "Hi", "translate english into french , the capital city of the country"]
    tok = bert.FastTokenizer(tiny_encoder_dir)
    model = bert.load_bert(tiny_encoder_dir)
    batch = tok(texts)
    assert not bool(batch["attention_mask"].all())  # the path under test: padding
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
        for i, text in enumerate(texts):
            one = tok([text])
            alone = model(one["input_ids"], one["attention_mask"])[0]
            n = alone.shape[0]
            assert_rel_error(max_rel_diff(out[i, :n], alone), depth=TINY_BERT_DEPTH)
            assert torch.equal(out[i, n:], torch.zeros_like(out[i, n:]))
        same = tok([texts[0], texts[0]])
        twice = model(same["input_ids"], same["attention_mask"])
        assert torch.equal(twice[0], twice[1])
