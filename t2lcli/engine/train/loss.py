"""The answer loss: completion-only cross-entropy, token mean per sample, each sample weighted equally."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def answer_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                smoothing: float, per_sample: bool = False) -> torch.Tensor:
    """`sample_loss` without the full-vocabulary logits of prompt tokens: the decoder's hidden states are taken at
    the answer positions only and projected through the LM head there (SNI answers are a small share of the
    tokens, so this skips most of the 49k-wide head's forward and backward). Falls back to the full logits when
    the model does not expose its decoder and head."""
    decoder = getattr(model, "get_decoder", lambda: None)()
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if decoder is None or head is None or any(getattr(model.config, k, None) for k in ("final_logit_softcapping", "logit_scale")):
        return sample_loss(model(input_ids=input_ids, attention_mask=attention_mask).logits, labels, smoothing, per_sample)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    lab = labels[:, 1:]
    mask = lab != -100
    rows = mask.nonzero(as_tuple=True)
    logits = head(hidden[:, :-1][rows]).float()
    ce = nn.functional.cross_entropy(logits, lab[rows], reduction="none", label_smoothing=smoothing)
    per = torch.zeros(lab.shape[0], device=ce.device, dtype=ce.dtype).index_add(0, rows[0], ce)
    per = per / mask.sum(1).clamp(min=1)
    return per if per_sample else per.mean()


def sample_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float, per_sample: bool = False) -> torch.Tensor:
    """Completion-only CE, token mean per sample, then mean over samples (each sample weighted equally)."""
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    mask = labels != -100
    ce = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.clamp(min=0).reshape(-1), reduction="none", label_smoothing=smoothing
    ).view(labels.shape)
    per = (ce * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per if per_sample else per.mean()

