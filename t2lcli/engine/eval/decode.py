"""Helpers the lm-eval model wrappers share (torch only, no lm-eval import): the chat-turn merge and greedy decoding.
"""

from __future__ import annotations

from typing import Any


def merge_system(chat_history: list[dict[str, str]]) -> list[dict[str, str]]:
    """Move lm-eval's system turn (our task description) to the front of the first user turn, so the description
    is prepended to the prompt and the base's own default system prompt stays as in every other condition."""
    msgs = [dict(m) for m in chat_history]
    if not msgs or msgs[0].get("role") != "system":
        return msgs
    text = msgs.pop(0)["content"].strip()
    for m in msgs:
        if m.get("role") == "user":
            m["content"] = f"{text}\n\n{m['content']}"
            return msgs
    return [{"role": "user", "content": text}, *msgs]


def greedy_generate(model: Any, tokenizer: Any, ids: Any, mask: Any, max_new: int, stops: list[str], eos_ids: set[int], pad_id: int) -> Any:
    """Greedy decoding with a KV cache that drops a sequence from the batch as soon as it is finished (an EOS token,
    or one of `stops` in its decoded text), so a batch no longer runs until its longest answer. Returns
    [batch, prompt + generated] token ids like `model.generate` (finished rows padded with `pad_id`); left-padded
    prompts get position ids from the attention mask, as `generate` does."""
    import torch

    batch, width = ids.shape
    device = ids.device
    if mask is None:
        mask = torch.ones_like(ids)
    mask = mask.to(device).long()
    out = torch.full((batch, max(max_new, 0)), pad_id, dtype=ids.dtype, device=device)
    if max_new <= 0:
        return ids
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache, nxt = res.past_key_values, res.logits[:, -1].argmax(-1)
        active = torch.arange(batch, device=device)
        last = pos[:, -1]
        used = 0
        for step in range(max_new):
            out[active, step] = nxt
            used = step + 1
            rows = active.tolist()
            keep = []
            for j, row in enumerate(rows):
                if int(nxt[j]) in eos_ids:
                    continue
                if stops:
                    text = tokenizer.decode(out[row, : step + 1].tolist(), skip_special_tokens=False)
                    if any(s and s in text for s in stops):
                        continue
                keep.append(j)
            if not keep or step == max_new - 1:
                break
            if len(keep) < len(rows):
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                active, nxt, mask, last = active[idx], nxt[idx], mask[idx], last[idx]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            last = last + 1
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last[:, None], past_key_values=cache, use_cache=True)
            cache, nxt = res.past_key_values, res.logits[:, -1].argmax(-1)
    return torch.cat([ids, out[:, :used]], dim=1)
