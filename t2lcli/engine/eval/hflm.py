"""lm-eval's HFLM around an already loaded model (imported only when the hf backend starts: it imports lm-eval)."""

from __future__ import annotations

from typing import Any

from lm_eval.models.huggingface import HFLM

from t2lcli import console
from t2lcli.engine.eval import decode


class T2LHFLM(HFLM):
    """lm-eval's HFLM around an already loaded model; the description goes into the user turn.

    Log-likelihoods share the context: a multiple-choice question's prompt is run once (KV cache) and only the
    answer options are scored on top of it, with logits computed for the scored positions only. The result
    equals HFLM's own computation (tested); requests that do not fit the window use HFLM's path.
    """

    share_prefix = True  # score multiple-choice options on one shared context pass
    fast_generate = True  # greedy decoding that drops finished sequences from the batch
    gen_batch_size: int | None = None  # generation batch (decoding is memory-bound: larger batches pay off)
    batch_size_per_gpu: Any  # HFLM's, set in its __init__ (an int, or 'auto')

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        old = self.batch_size_per_gpu
        if self.gen_batch_size:
            self.batch_size_per_gpu = self.gen_batch_size
        try:
            return super().generate_until(requests, disable_tqdm)
        finally:
            self.batch_size_per_gpu = old

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return super().apply_chat_template(decode.merge_system(chat_history), add_generation_prompt)

    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, override_bs: int | None = None) -> list[tuple[float, bool]]:
        if not self.share_prefix or self.backend != "causal":
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        results: list[Any] = [None] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        other = []
        for i, (_, ctx, cont) in enumerate(requests):
            if len(ctx) + len(cont) > self.max_length + 1 or len(ctx) < 2 or not cont:
                other.append(i)  # too long for the window, or no context to cache: HFLM's own path
            else:
                groups.setdefault(tuple(ctx), []).append(i)
        if other:
            for i, r in zip(other, super()._loglikelihood_tokens([requests[i] for i in other], True, override_bs), strict=True):
                results[i] = r
        # questions of similar length together; several questions per forward pass
        items = sorted(groups.items(), key=lambda kv: -len(kv[0]))
        per_pass = max(1, int(self.batch_size) if str(self.batch_size).isdigit() else 8)
        for b in range(0, len(items), per_pass):
            batch = items[b : b + per_pass]
            try:
                scored = self._score_shared([(list(ctx), [list(requests[i][2]) for i in idx]) for ctx, idx in batch])
            except (AttributeError, NotImplementedError, TypeError) as exc:  # a model/cache without these hooks
                console.debug(f"shared-context scoring unavailable ({type(exc).__name__}: {exc}); using HFLM's path")
                self.share_prefix = False
                flat = [i for _, idx in batch for i in idx]
                scored = super()._loglikelihood_tokens([requests[i] for i in flat], True, override_bs)
            for i, r in zip([i for _, idx in batch for i in idx], scored, strict=True):
                results[i] = r
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], r)
        return results

    def _model_generate(self, context: Any, max_length: int, stop: list[str], **kwargs: Any) -> Any:
        mask = kwargs.pop("attention_mask", None)
        greedy = not kwargs.get("do_sample") and not float(kwargs.get("temperature") or 0.0)
        if not self.fast_generate or not greedy or set(kwargs) - {"do_sample", "temperature"} or self.backend != "causal":
            if mask is not None:
                kwargs["attention_mask"] = mask
            return super()._model_generate(context, max_length, stop, **kwargs)
        eos = {self.tokenizer.eos_token_id}
        cfg_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos |= set(cfg_eos if isinstance(cfg_eos, list) else [cfg_eos])
        try:
            return decode.greedy_generate(self.model, self.tokenizer, context, mask, max_length - context.shape[1], stop,
                                          {e for e in eos if e is not None}, self.tokenizer.pad_token_id or 0)
        except (AttributeError, NotImplementedError, TypeError) as exc:  # an architecture/cache without these hooks
            console.debug(f"batch-shrinking generation unavailable ({type(exc).__name__}: {exc}); using model.generate")
            self.fast_generate = False
            if mask is not None:
                kwargs["attention_mask"] = mask
            return super()._model_generate(context, max_length, stop, **kwargs)

    def _score_shared(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[tuple[float, bool]]:
        """Score each group's continuations after its context: one left-padded pass over the contexts
        (KV cache, no logits), then one pass over all continuations on the cache rows of their context."""
        import torch
        import torch.nn.functional as F

        dev, pad = self.device, self.tokenizer.pad_token_id or 0
        ctx_len = [len(c) - 1 for c, _ in groups]  # the last context token is fed with the continuation
        width_c = max(ctx_len)
        ids = torch.tensor([[pad] * (width_c - n) + c[:-1] for (c, _), n in zip(groups, ctx_len, strict=True)], device=dev)
        cmask = torch.tensor([[0] * (width_c - n) + [1] * n for n in ctx_len], device=dev)
        with torch.no_grad():
            cache = self.model(input_ids=ids, attention_mask=cmask, position_ids=(cmask.cumsum(-1) - 1).clamp(min=0),
                               use_cache=True, logits_to_keep=1).past_key_values
            rows = [(g, c) for g, (_, conts) in enumerate(groups) for c in conts]
            cache.batch_select_indices(torch.tensor([g for g, _ in rows], device=dev))
            width = max(len(c) for _, c in rows)
            inp = torch.tensor([[groups[g][0][-1], *c[:-1]] + [pad] * (width - len(c)) for g, c in rows], device=dev)
            new_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for _, c in rows], device=dev)
            mask = torch.cat([cmask[[g for g, _ in rows]], new_mask], dim=1)
            pos = torch.tensor([[ctx_len[g] + k for k in range(width)] for g, _ in rows], device=dev)
            logits = self.model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True).logits
            logp = F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)
        out: list[tuple[float, bool]] = []
        for j, (_, c) in enumerate(rows):
            lp = logp[j, : len(c)]
            toks = torch.tensor(c, device=dev)
            out.append((float(lp.gather(1, toks[:, None]).sum()), bool((lp.argmax(dim=-1) == toks).all())))
        return out
