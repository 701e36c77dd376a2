"""Text encoders: task descriptions -> fixed-size embeddings (L2-normalised, times sqrt(dim), as T2L does).

Plain BERT encoders (all-MiniLM-L6-v2) run through `bert.py` (tokenizers + safetensors, no transformers import:
the cold-start fix); others load through transformers directly (AutoModel + pooling) rather than
`import sentence_transformers`, which costs ~7 s of imports on a cold start. Pooling: "mean" (sentence-transformers models such as all-MiniLM-L6-v2),
"cls" (gte-large-en-v1.5, as the official checkpoints were trained) or "last" (decoder embedders).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from t2lcli.errors import ModelNotFoundError, T2LError
from t2lcli.text import check_description, valid_text


@dataclass
class EncoderSpec:
    """How to embed descriptions; stored in every checkpoint so generation matches training."""

    model: str = "all-minilm-l6-v2"
    dim: int = 384
    pooling: str = "mean"  # mean | cls | last
    normalize: str = "l2_sqrt_dim"  # l2_sqrt_dim | l2 | none
    add_full_stop: bool = True
    max_length: int = 256
    trust_remote_code: bool = False
    prefix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def preprocess(text: str, spec: EncoderSpec, checked: bool = False) -> str:
    """Strip; append '.' when the last character is a letter (the reference's rule). Rejects what `t2lcli.text`
    refuses, unless `checked` (the caller applied that rule already, as `t2l generate` does before loading anything).

    Raises:
        InputError: empty, over-long, or no visible text (control/zero-width/punctuation only).
    """
    if not checked:
        check_description(text)  # the one rule (t2lcli.text): empty, over-long, no visible text
    s = text.strip()
    s = valid_text(s)  # lone surrogates from bad input become U+FFFD
    if spec.add_full_stop and s[-1].isalpha():
        s += "."
    return spec.prefix + s


class TextEncoder:
    """Embeds descriptions with a transformers encoder. `embed(list[str]) -> [n, dim]` float32."""

    def __init__(self, spec: EncoderSpec, device: str = "cpu", dtype: torch.dtype | str = torch.float32) -> None:
        from t2lcli.engine.base_model import resolve_model
        from t2lcli.registry import lookup

        self.spec = spec
        entry = lookup(spec.model)
        if entry is not None and entry.remote_code and not spec.trust_remote_code:
            raise _remote_code_error(spec.model)
        try:
            path = resolve_model(spec.model, kind="encoder")
        except ModelNotFoundError as exc:
            raise ModelNotFoundError(
                f"text encoder {spec.model} is not available: {exc.message}",
                hint="download it once on a connected machine (it then loads from the HF cache), "
                "or pass precomputed embeddings with --embedding-file",
            ) from None
        if not spec.trust_remote_code and _needs_remote_code(path):
            raise _remote_code_error(spec.model)
        self.device = device
        self.truncated = 0
        from t2lcli.engine import bert

        if bert.supports(path, spec.trust_remote_code) and spec.pooling != "last":
            # the fast path: no transformers import (~3.5 s of a cold start), weights assigned without random init
            self.fast = True
            if isinstance(dtype, str):
                dtype = auto_dtype(device, bert.param_count(json.loads((path / "config.json").read_text(encoding="utf-8"))))
            self.tokenizer: Any = bert.FastTokenizer(path)
            self.model: Any = bert.load_bert(path, device=device, dtype=dtype)
            hidden = int(self.model.config["hidden_size"])
        else:
            self.fast = False
            self.tokenizer, self.model = _load_transformers(path, spec, torch.float32 if isinstance(dtype, str) else dtype)
            if isinstance(dtype, str):
                dtype = auto_dtype(device, sum(p.numel() for p in self.model.parameters()))
            self.model.to(device=device, dtype=dtype).eval()
            self.tokenizer.padding_side = "right" if spec.pooling != "last" else "left"
            hidden = int(getattr(self.model.config, "hidden_size", spec.dim))
        self.dtype: torch.dtype = dtype
        if hidden != spec.dim:
            raise T2LError(f"encoder {spec.model} has dimension {hidden}, the checkpoint expects {spec.dim}")

    @torch.no_grad()
    def embed(self, texts: list[str], checked: bool = False) -> torch.Tensor:
        """`texts` -> [n, dim]; `checked`: each text already passed `t2lcli.text.check_description`."""
        prepared = [preprocess(t, self.spec, checked) for t in texts]
        batch = self._tokenize(prepared, None)
        if batch["input_ids"].shape[1] > self.spec.max_length:
            self.truncated += sum(int(m.sum()) > self.spec.max_length for m in batch["attention_mask"])
            batch = self._tokenize(prepared, self.spec.max_length)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.fast:
            hidden = self.model(batch["input_ids"], batch["attention_mask"]).float()
        else:
            hidden = self.model(**batch).last_hidden_state.float()
        return normalize(pool(hidden, batch["attention_mask"], self.spec.pooling), self.spec.normalize)

    def _tokenize(self, texts: list[str], max_length: int | None) -> dict[str, torch.Tensor]:
        if self.fast:
            return self.tokenizer(texts, max_length)
        if max_length is None:
            return self.tokenizer(texts, padding=True, truncation=False, return_tensors="pt")
        return self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")


# Above this size a CPU forward pass over a short description is bound by reading the weights from memory
# (gte-large: 434M params, 1.7 GB in fp32): bf16 halves the bytes where the CPU computes in bf16 natively.
AUTO_BF16_MIN_PARAMS = 100_000_000


def auto_dtype(device: str, n_params: int) -> torch.dtype:
    """The profile's `encoder.dtype: auto`: bf16 on a CUDA card that has it (else fp16); on a CPU with native bf16
    (AVX512-BF16 or AMX) bf16 for encoders of >= 100M parameters (measured 1.8x faster for gte-large's size,
    embeddings at cosine 0.9999 to fp32); float32 otherwise (small encoders, and CPUs that would emulate bf16)."""
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and n_params >= AUTO_BF16_MIN_PARAMS and native_cpu_bf16():
        return torch.bfloat16
    return torch.float32


def native_cpu_bf16() -> bool:
    cpu: Any = getattr(torch, "cpu", None)
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # pragma: no cover - other torch builds
        return False


def _load_transformers(path: Path, spec: EncoderSpec, dtype: torch.dtype) -> tuple[Any, Any]:
    """Any other encoder (gte, decoder embedders): through transformers, its progress bars silenced."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=spec.trust_remote_code)
        model = AutoModel.from_pretrained(str(path), dtype=dtype, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot load encoder from {path}: {str(exc).splitlines()[0]}") from None
    return tokenizer, model


def _remote_code_error(model: str) -> T2LError:
    return T2LError(
        f"the text encoder {model} runs Python code from its repository; refusing without --trust-remote-code",
        hint=f"pass --trust-remote-code if you trust {model} (the official T2L checkpoints use gte-large-en-v1.5, which needs it)",
    )


def _needs_remote_code(path: Path) -> bool:
    """A local encoder folder whose config maps to custom code (`auto_map`)."""
    try:
        return bool(json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("auto_map"))
    except (OSError, ValueError, AttributeError):
        return False


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        if not bool(mask[:, 0].all()):
            raise T2LError("CLS pooling needs right padding")
        return hidden[:, 0]
    if how == "last":
        if not bool(mask[:, -1].all()):
            raise T2LError("last-token pooling needs left padding")
        return hidden[:, -1]
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def normalize(e: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return e
    e = torch.nn.functional.normalize(e, dim=-1)
    return e * math.sqrt(e.shape[-1]) if how == "l2_sqrt_dim" else e


def encoder_spec_for(model: str) -> EncoderSpec:
    """The spec for a known encoder name, or a mean-pooling spec read from a sentence-transformers folder."""
    low = model.lower()
    if "gte-large" in low:
        # as the official checkpoints were trained: CLS pooling, fp32, right padding, x sqrt(dim) after L2, full stop;
        # it runs remote code, which only the user can allow (--trust-remote-code), never a stored spec
        return EncoderSpec(model, 1024, "cls", "l2_sqrt_dim", True, 8192, False)
    if "minilm" in low:
        return EncoderSpec(model, 384, "mean", "l2_sqrt_dim", True, 256)
    path = Path(model)
    dim, pooling, max_len = 0, "mean", 512
    try:
        dim = int(json.loads((path / "config.json").read_text())["hidden_size"])
        pconf = path / "1_Pooling" / "config.json"
        if pconf.is_file() and json.loads(pconf.read_text()).get("pooling_mode_cls_token"):
            pooling = "cls"
        st = path / "sentence_bert_config.json"
        if st.is_file():
            max_len = int(json.loads(st.read_text()).get("max_seq_length", max_len))
    except (OSError, ValueError, KeyError):
        raise ModelNotFoundError(f"cannot read encoder config from {model}", hint="pass a sentence-transformers folder") from None
    return EncoderSpec(model, dim, pooling, "l2_sqrt_dim", True, max_len)
