"""`--preview`: greedy output of the base model with and without an adapter, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from t2lcli.hw_profiles import Profile


def chat_prompt(tokenizer: Any, text: str) -> str:
    """Apply the base's chat template once (no double BOS); plain text if the tokenizer has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return text


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=not getattr(tokenizer, "chat_template", None))
    enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


_LOADED: dict[tuple[str, str], tuple[Any, Any]] = {}


def preview_adapter(adapter_dir: Path, text: str, profile: Profile, base_model: str | None, max_new_tokens: int = 64) -> dict[str, str]:
    from t2lcli.engine.adapters import load_adapter
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.lora_hooks import apply_adapter

    adapter = load_adapter(adapter_dir)
    spec = base_model or adapter.config.get("base_model_name_or_path")
    key = (str(spec), repr(profile.base))
    if key not in _LOADED:  # `--preview-all` previews many adapters of one base: load it once
        _LOADED.clear()
        _LOADED[key] = load_base_model(spec, profile.base)
    model, tok = _LOADED[key]
    prompt = chat_prompt(tok, text)
    base = greedy(model, tok, prompt, max_new_tokens)
    with apply_adapter(model, adapter):
        adapted = greedy(model, tok, prompt, max_new_tokens)
    return {"base": base, "adapted": adapted}
