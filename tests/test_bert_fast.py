"""The transformers-free BERT encoder (`t2lcli.engine.bert`) reproduces transformers' BertModel and tokenizer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from numeric import TINY_BERT_DEPTH, assert_close, assert_rel_error, max_rel_diff

TEXTS = ["Answer math word problems step by step.", "Hi", "translate english into french , the capital city of the country"]


def _compare(folder: Path, texts: list[str], max_length: int | None = None) -> float:
    """max |ours - transformers'| / max |transformers'| over the real (unpadded) tokens' hidden states."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from t2lcli.engine import bert

    hf_tok = AutoTokenizer.from_pretrained(str(folder))
    hf = AutoModel.from_pretrained(str(folder)).eval()
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {"truncation": False}
    ref = hf_tok(texts, padding=True, return_tensors="pt", **kwargs)
    ours = bert.FastTokenizer(folder)(texts, max_length)
    assert torch.equal(ref["input_ids"], ours["input_ids"])  # bitwise: integers
    assert torch.equal(ref["attention_mask"], ours["attention_mask"])
    model = bert.load_bert(folder)
    with torch.no_grad():
        a = hf(**ref).last_hidden_state
        b = model(ours["input_ids"], ours["attention_mask"])
    mask = ref["attention_mask"].bool()
    return max_rel_diff(b[mask], a[mask])


def test_matches_transformers_on_tiny_bert(tiny_encoder_dir: Path) -> None:
    # our own attention/LayerNorm code vs. transformers' (sdpa): the same math through other kernels
    assert_rel_error(_compare(tiny_encoder_dir, TEXTS), depth=TINY_BERT_DEPTH)
    assert_rel_error(_compare(tiny_encoder_dir, TEXTS, max_length=6), depth=TINY_BERT_DEPTH)


def test_text_encoder_uses_fast_path_and_matches(tiny_encoder_dir: Path) -> None:
    import torch

    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for, normalize, pool

    enc = TextEncoder(encoder_spec_for(str(tiny_encoder_dir)))
    assert enc.fast
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_encoder_dir))
    hf = AutoModel.from_pretrained(str(tiny_encoder_dir)).eval()
    prepared = [t.strip() + ("." if t.strip()[-1].isalpha() else "") for t in TEXTS]
    batch = tok(prepared, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = normalize(pool(hf(**batch).last_hidden_state, batch["attention_mask"], "mean"), "l2_sqrt_dim")
    assert_close(enc.embed(TEXTS), ref, depth=TINY_BERT_DEPTH)


def test_strict_weights(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from t2lcli.engine import bert
    from t2lcli.errors import ModelNotFoundError

    bad = tmp_path / "enc"
    shutil.copytree(tiny_encoder_dir, bad)
    state = load_file(str(bad / "model.safetensors"))
    state.pop(next(k for k in state if "query.weight" in k))
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(ModelNotFoundError, match="missing"):
        bert.load_bert(bad)


def test_generate_path_imports_no_transformers(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    """A whole `t2l generate` run with a BERT encoder never imports transformers, peft or torch._dynamo."""
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['t2l', 'generate', 'solve math step by step', '-c', {str(tiny_checkpoint_dir)!r}, '-o', {str(tmp_path / 'a')!r}]\n"
        "try:\n    runpy.run_module('t2lcli', run_name='__main__')\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "bad = sorted(m for m in ('transformers', 'peft', 'torch._dynamo', 'sentence_transformers') if m in sys.modules)\n"
        "sys.stderr.write('HEAVY:' + ','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.split("HEAVY:")[1].strip() == ""
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_matches_transformers_on_minilm() -> None:
    from t2lcli.engine.base_model import resolve_model

    folder = resolve_model("all-minilm-l6-v2", kind="encoder")
    long = "Classify the sentiment of a movie review as positive or negative; café naïve 東京. " * 12
    minilm_depth = 6 * TINY_BERT_DEPTH  # 6 layers
    assert_rel_error(_compare(folder, [*TEXTS, long]), depth=minilm_depth)
    assert_rel_error(_compare(folder, [*TEXTS, long], max_length=32), depth=minilm_depth)


def test_param_count_matches_the_model(tiny_encoder_dir: Path) -> None:
    import json

    from t2lcli.engine import bert

    config = json.loads((tiny_encoder_dir / "config.json").read_text())
    model = bert.load_bert(tiny_encoder_dir)
    assert bert.param_count(config) == sum(p.numel() for p in model.parameters())
    from t2lcli.engine.bench import GTE_LARGE_PROXY

    assert 420e6 < bert.param_count(GTE_LARGE_PROXY) < 440e6  # gte-large-en-v1.5: 434M


def test_auto_dtype_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from t2lcli.engine import encoder

    monkeypatch.setattr(encoder, "native_cpu_bf16", lambda: True)
    assert encoder.auto_dtype("cpu", 434_000_000) is torch.bfloat16
    assert encoder.auto_dtype("cpu", 22_700_000) is torch.float32  # MiniLM stays fp32 everywhere
    monkeypatch.setattr(encoder, "native_cpu_bf16", lambda: False)
    assert encoder.auto_dtype("cpu", 434_000_000) is torch.float32  # emulated bf16 would be slower


def test_encoder_dtype_reaches_the_encoder(tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from t2lcli.engine import encoder
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

    spec = encoder_spec_for(str(tiny_encoder_dir))
    monkeypatch.setattr(encoder, "AUTO_BF16_MIN_PARAMS", 1)  # the tiny encoder counts as large
    monkeypatch.setattr(encoder, "native_cpu_bf16", lambda: True)
    auto = TextEncoder(spec, dtype="auto")
    assert auto.dtype is torch.bfloat16 and next(auto.model.parameters()).dtype is torch.bfloat16
    ref = TextEncoder(spec).embed(TEXTS)
    got = auto.embed(TEXTS)
    assert got.dtype is torch.float32
    assert torch.nn.functional.cosine_similarity(ref, got).min() > 0.99
    monkeypatch.setattr(encoder, "native_cpu_bf16", lambda: False)
    assert TextEncoder(spec, dtype="auto").dtype is torch.float32


def test_converting_reader_matches_load_file(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from t2lcli.engine import bert
    from t2lcli.engine.fastload import load_safetensors_as

    src = {"w": torch.randn(3, 5), "h": torch.randn(7, dtype=torch.float16), "ids": torch.arange(4), "flag": torch.tensor([True, False])}
    path = tmp_path / "m.safetensors"
    save_file(src, str(path))
    got = load_safetensors_as(path, torch.bfloat16)
    for k, v in load_file(str(path)).items():
        want = v.to(torch.bfloat16) if v.is_floating_point() else v
        assert got[k].dtype == want.dtype and torch.equal(got[k], want), k  # bitwise: the same rounding cast
    path.write_bytes(path.read_bytes()[:-3])  # truncated data: an error, not garbage
    with pytest.raises(ValueError):
        load_safetensors_as(path, torch.bfloat16)
    converted = bert.load_bert(tiny_encoder_dir, dtype=torch.bfloat16)
    reference = bert.load_bert(tiny_encoder_dir).to(torch.bfloat16)
    for (name, a), (_, b) in zip(converted.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # bitwise: the same rounding cast
