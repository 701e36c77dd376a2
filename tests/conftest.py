"""Shared fixtures: tiny models built in code (no downloads), an isolated T2L_HOME, no plugins."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["T2L_LOAD_PLUGINS"] = ""
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REAL_T2L_HOME = os.environ.get("T2L_HOME") or str(Path.home() / ".cache" / "t2l")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T2L_HOME", str(tmp_path_factory.getbasetemp() / "t2l_home"))
    monkeypatch.setenv("T2L_LOAD_PLUGINS", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except Exception:
        cuda = False
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(skip)


def _train_bpe(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    words = ["the", "cat", "sat", "on", "mat", "answer", "question", "math", "add", "two", "numbers", "capital", "of", "france", "paris"]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(8)) + f" {i} {i * 3}" for i in range(400)]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(path))


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama (hidden 32) + byte-level BPE tokenizer with a chat template, saved like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny_base")
    _train_bpe(out / "raw_tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "raw_tokenizer.json"), bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tok.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "raw_tokenizer.json").unlink()
    return out


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer BERT (hidden 16) with a small WordPiece vocabulary, saved like a sentence-transformers folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out = tmp_path_factory.mktemp("tiny_encoder")
    words = sorted({w for w in "answer math word problems step by step translate english french classify sentiment of reviews "
                    "the a an to into and or name capital city country given summarize text question solve write code python".split()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[chr(c) for c in range(97, 123)], *[f"##{chr(c)}" for c in range(97, 123)], ".", ","]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(out / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    return out


def make_checkpoint(base_dir: Path, encoder_dir: Path, variant: str = "L", seed: int = 0, randomize_heads: bool = True):
    """A native T2L checkpoint object for the tiny base; heads randomised so adapters are not no-ops."""
    from t2lcli.engine.base_model import read_config, shape_from_config
    from t2lcli.engine.checkpoint import build_checkpoint
    from t2lcli.engine.encoder import encoder_spec_for

    shape = shape_from_config(read_config(base_dir), ["q_proj", "v_proj"])
    ckpt = build_checkpoint(shape, encoder_spec_for(str(encoder_dir)), str(base_dir), variant=variant, latent=16, head_in=32, seed=seed)
    if randomize_heads:
        random_heads(ckpt, seed + 1, 0.05)
    return ckpt


def random_heads(ckpt, seed: int, std: float):
    """Overwrite the hypernetwork's output heads with seeded N(0, std²) weights (so its adapters are not no-ops)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for head in ckpt.hypernet.heads.values():
            head.weight.copy_(torch.randn(head.weight.shape, generator=g) * std)
    return ckpt


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, tiny_base_dir: Path, tiny_encoder_dir: Path) -> Path:
    from t2lcli.engine.checkpoint import save_checkpoint

    out = tmp_path_factory.mktemp("ckpt") / "tiny_t2l"
    save_checkpoint(make_checkpoint(tiny_base_dir, tiny_encoder_dir), out)
    return out


class CliResult:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
        self.output = stdout + stderr


class CliRunner:
    """Runs `t2l` in-process through the real entry point (`t2lcli.cli.main`, with its error boundary)."""

    def invoke(self, _app: object, args: list[str], input: str | bytes | None = None) -> CliResult:
        import io
        import sys
        from contextlib import redirect_stderr, redirect_stdout

        from t2lcli import console
        from t2lcli.cli import main

        data = input.encode() if isinstance(input, str) else (input or b"")
        out, err = io.StringIO(), io.StringIO()
        old_argv, old_stdin = sys.argv, sys.stdin
        sys.argv = ["t2l", *args]
        sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
        console._state.pop("console", None)
        console._state.pop("out", None)
        code = 0
        try:
            with redirect_stdout(out), redirect_stderr(err):
                try:
                    main()
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv, sys.stdin = old_argv, old_stdin
            console._state.pop("console", None)
            console._state.pop("out", None)
        return CliResult(code, out.getvalue(), err.getvalue())


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture()
def cli_app():
    from t2lcli.cli import app

    return app
