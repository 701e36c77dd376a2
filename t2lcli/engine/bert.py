"""A small BERT encoder (forward pass only) that loads a transformers `BertModel` folder without importing transformers.

Why: `import transformers` + `AutoModel.from_pretrained` cost ~3.5 s of a ~7 s cold `t2l generate` on 2 CPU cores, for
a 6-layer MiniLM. This module needs only torch, safetensors and tokenizers (`Tokenizer.from_file`), builds the module
on the meta device (no random init) and assigns the stored tensors. `tests/test_bert_fast.py` checks that its
`last_hidden_state` matches transformers' `BertModel` to 1e-5.

Supported: `model_type == "bert"`, absolute position embeddings, `gelu`/`gelu_new`/`relu` activations, a
`tokenizer.json` and `model.safetensors` in the folder. Anything else uses the transformers path in `encoder.py`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from t2lcli.engine.kernels import KLinear
from t2lcli.errors import ModelNotFoundError, format_problems

# config hidden_act -> the `KLinear.fused` activation (a post-op of the up projection's GEMM on oneDNN)
_ACTS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_tanh"}


def supports(folder: Path, trust_remote_code: bool = False) -> bool:
    """True when `folder` is a plain BERT this module can run (otherwise use transformers)."""
    if trust_remote_code:
        return False
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(cfg, dict)
        and cfg.get("model_type") == "bert"
        and cfg.get("position_embedding_type", "absolute") == "absolute"
        and cfg.get("hidden_act", "gelu") in _ACTS
        and (folder / "tokenizer.json").is_file()
        and (folder / "model.safetensors").is_file()
    )


class _Layer(nn.Module):
    def __init__(self, h: int, inter: int, heads: int, eps: float, act: str) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (KLinear(h, h) for _ in range(4))
        self.ln1 = nn.LayerNorm(h, eps=eps)
        self.up = KLinear(h, inter)
        self.down = KLinear(inter, h)
        self.ln2 = nn.LayerNorm(h, eps=eps)
        self.act = _ACTS[act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, t, h = x.shape
        d = h // self.heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d).transpose(1, 2)

        att = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        # the residual adds and the activation are the GEMMs' epilogues (`KLinear.fused`): on oneDNN one op each
        x = self.ln1(self.o.fused(att.transpose(1, 2).reshape(b, t, h), add=x))
        return self.ln2(self.down.fused(self.up.fused(x, self.act), add=x))

    def forward_rows(self, xs: torch.Tensor, keep: torch.Tensor, b: int, t: int, mask: torch.Tensor) -> torch.Tensor:
        """The same layer on the real tokens only: xs [n, H] (the rows `keep` of the padded [b*t, H]). Every linear,
        norm and activation is per token, so only attention needs the padded [b, heads, t, d] layout; a padded key is
        masked out (its k/v are zeros here instead of a pad token's projection: weight exp(-inf) = 0 either way)."""
        h = xs.shape[-1]
        d = h // self.heads

        def padded(y: torch.Tensor) -> torch.Tensor:
            full = y.new_zeros(b * t, h).index_copy_(0, keep, y)
            return full.view(b, t, self.heads, d).transpose(1, 2)

        att = F.scaled_dot_product_attention(padded(self.q(xs)), padded(self.k(xs)), padded(self.v(xs)), attn_mask=mask)
        xs = self.ln1(self.o.fused(att.transpose(1, 2).reshape(b * t, h).index_select(0, keep), add=xs))
        return self.ln2(self.down.fused(self.up.fused(xs, self.act), add=xs))


class BertEncoder(nn.Module):
    """BERT without the pooler: `forward(input_ids, attention_mask) -> last_hidden_state [B, T, H]` (zeros at padded
    positions, which transformers fills with the pad tokens' states: pooling never reads them)."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        h, eps = int(config["hidden_size"]), float(config.get("layer_norm_eps", 1e-12))
        self.config = config
        self.word = nn.Embedding(int(config["vocab_size"]), h)
        self.pos = nn.Embedding(int(config.get("max_position_embeddings", 512)), h)
        self.tok_type = nn.Embedding(int(config.get("type_vocab_size", 2)), h)
        self.ln = nn.LayerNorm(h, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(h, int(config["intermediate_size"]), int(config["num_attention_heads"]), eps, config.get("hidden_act", "gelu"))
            for _ in range(int(config["num_hidden_layers"]))
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)
        x = self.word(input_ids) + self.pos(pos)[None] + self.tok_type.weight[0]
        x = self.ln(x)
        # additive mask over keys, as transformers does (finfo.min where padded); none without padding (one description,
        # or equal lengths): adding zeros changes no score, and SDPA without a mask skips reading one
        if bool(attention_mask.all()):
            for layer in self.layers:
                x = layer(x, None)
            return x
        mask = torch.zeros(attention_mask.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(attention_mask == 0, torch.finfo(x.dtype).min)[:, None, None, :]
        # padded (a batch of descriptions of different lengths): the linears run on the real tokens only (64 of the
        # bench's descriptions: 1120 of 1408 rows); padded positions of the output are zeros (pooling ignores them)
        b, h = x.shape[0], x.shape[2]
        keep = attention_mask.reshape(-1).nonzero().squeeze(1)
        xs = x.reshape(b * t, h).index_select(0, keep)
        for layer in self.layers:
            xs = cast(_Layer, layer).forward_rows(xs, keep, b, t, mask)
        return x.new_zeros(b * t, h).index_copy_(0, keep, xs).view(b, t, h)


def _hf_name(ours: str) -> str:
    """Our parameter name -> the transformers BertModel key (without any `bert.` prefix)."""
    parts = ours.split(".")
    emb = {"word": "word_embeddings", "pos": "position_embeddings", "tok_type": "token_type_embeddings"}
    if parts[0] in emb:
        return f"embeddings.{emb[parts[0]]}.{parts[1]}"
    if parts[0] == "ln":
        return f"embeddings.LayerNorm.{parts[1]}"
    i, sub, leaf = parts[1], parts[2], parts[3]
    table = {
        "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
        "o": "attention.output.dense", "ln1": "attention.output.LayerNorm",
        "up": "intermediate.dense", "down": "output.dense", "ln2": "output.LayerNorm",
    }
    return f"encoder.layer.{i}.{table[sub]}.{leaf}"


def _legacy(key: str) -> str:
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def param_count(config: dict[str, Any]) -> int:
    """Parameters of a `BertEncoder` with this config, from the sizes alone (no weights read)."""
    h, inter, n = int(config["hidden_size"]), int(config["intermediate_size"]), int(config["num_hidden_layers"])
    emb = (int(config["vocab_size"]) + int(config.get("max_position_embeddings", 512)) + int(config.get("type_vocab_size", 2)) + 2) * h
    return emb + n * (4 * (h * h + h) + 2 * h * inter + inter + h + 4 * h)


def load_bert(folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> BertEncoder:
    """Build a `BertEncoder` on the meta device and assign the weights from `model.safetensors` (strict).

    Raises:
        ModelNotFoundError: missing/unreadable files or weights that do not match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        from t2lcli.engine.fastload import load_safetensors_as, stored_float_dtype

        weights = folder / "model.safetensors"
        if dtype == stored_float_dtype(weights):
            state = load_file(str(weights))  # memory-mapped; the pages become the weights
        else:  # converted while reading: no mapped copy of the stored weights next to the converted ones
            state = load_safetensors_as(weights, dtype)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelNotFoundError(f"cannot load encoder from {folder}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    state = {_legacy(k.removeprefix("bert.")): v for k, v in state.items()}
    from t2lcli.engine.fastload import meta_device

    with meta_device():
        model = BertEncoder(config)
    problems, mapped = [], {}
    for name, param in model.named_parameters():
        key = _hf_name(name)
        tensor = state.get(key)
        if tensor is None:
            problems.append(f"missing {key}")
        elif tuple(tensor.shape) != tuple(param.shape):
            problems.append(f"{key}: shape {tuple(tensor.shape)} != {tuple(param.shape)}")
        else:
            mapped[name] = tensor.to(dtype)
    if problems:
        raise ModelNotFoundError(format_problems(f"encoder weights in {folder} do not match its config.json", problems[:10]))
    model.load_state_dict(mapped, assign=True, strict=True)
    return model.to(device).eval()


class FastTokenizer:
    """`tokenizers.Tokenizer` from tokenizer.json, called like transformers' fast tokenizer (pad to longest, right)."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.no_truncation()
        pad = self.tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else int(pad)

    def __call__(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        if max_length is not None:
            self.tok.enable_truncation(max_length)
        else:
            self.tok.no_truncation()
        encs = self.tok.encode_batch(texts)
        width = max(len(e.ids) for e in encs)
        ids = torch.full((len(encs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def random_bert_folder(out: Path, config: dict[str, Any], tokenizer_json: Path, seed: int = 0) -> None:
    """Write a randomly initialised BERT folder (config.json, model.safetensors, tokenizer.json) for benchmarks."""
    import shutil

    from t2lcli.engine.atomic import write_safetensors

    gen = torch.Generator().manual_seed(seed)
    from t2lcli.engine.fastload import meta_device

    with meta_device():
        shape_model = BertEncoder(config)
    state: dict[str, torch.Tensor] = {}
    for name, p in shape_model.named_parameters():
        t = torch.empty(p.shape)
        if name.endswith("weight") and p.dim() > 1:
            t.uniform_(-math.sqrt(3) * 0.02, math.sqrt(3) * 0.02, generator=gen)
        elif name.endswith("weight"):
            t.fill_(1.0)
        else:
            t.zero_()
        state[_hf_name(name)] = t
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(state, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps({**config, "model_type": "bert", "architectures": ["BertModel"]}, indent=2))
    shutil.copyfile(tokenizer_json, out / "tokenizer.json")
