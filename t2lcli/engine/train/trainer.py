"""The SFT step: each step samples n tasks, one example and one training description per task; the hypernetwork
generates one LoRA per example; the LoRAs are applied to the frozen base with forward hooks (batched einsum, no
per-token copies); the loss is completion-only cross-entropy (each sample weighted equally) plus L2 on the generated
factors, and optionally the description-contrastive hinge. Gradients flow only into the hypernetwork (or, mode lora,
into one shared LoRA). Validation scores seen and held-out tasks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2lcli.engine.data import HierarchicalSampler, answer_of, build_prompt, is_label_task
from t2lcli.engine.train.batches import Tokenized, collate, data_fingerprint, prepare
from t2lcli.engine.train.checkpoints import TrainerCheckpoints
from t2lcli.engine.train.generators import fresh_lora, warm_start_adapter, warm_start_checkpoint
from t2lcli.engine.train.loss import answer_loss
from t2lcli.errors import DataError, T2LError
from t2lcli.recipe import Recipe


class Trainer(TrainerCheckpoints):
    """Holds the frozen base, the trainable generator (hypernet or fixed LoRA), data and optimisation state."""

    def __init__(self, recipe: Recipe, output: Path, base_model: Any, tokenizer: Any, encoder: Any | None = None,
                 device: str = "cpu", log_fn: Callable[[dict[str, Any]], None] | None = None) -> None:
        from t2lcli.engine.base_model import shape_from_config
        from t2lcli.engine.checkpoint import build_checkpoint
        from t2lcli.engine.encoder import encoder_spec_for

        self.recipe, self.output, self.device = recipe, output, device
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        r, hs, tr = recipe, recipe.hypernet, recipe.train
        torch.manual_seed(tr.seed)
        self.model, self.tok_raw = base_model, tokenizer
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tok = Tokenized(tokenizer, r.data.max_len)
        self.data_info = check_data_pin(r)
        self.tasks, self.encoded, self.heldout, self.dropped, self.too_long = prepare(r, self.tok)
        self.shape = shape_from_config(base_model.config.to_dict(), hs.target_modules)
        self.enc_spec = encoder_spec_for(r.encoder)
        self.ckpt = build_checkpoint(
            self.shape, self.enc_spec, r.base_model, variant=hs.variant, latent=hs.latent, head_in=hs.head_in, r=hs.r,
            lora_alpha=hs.lora_alpha, seed=tr.seed, dropout=hs.dropout,
        )
        self.scaling = self.ckpt.config.scaling
        self.paths = {m: s.path for m, s in self.shape.modules.items()}
        self.net: nn.Module = fresh_lora(self.shape, hs.r, tr.seed) if r.mode == "lora" else self.ckpt.hypernet
        self.init_info = self._warm_start(tr.init_from) if tr.init_from else None
        self.net.to(device).train()
        self.ddp_net = self.net
        self.fsdp = self.world > 1 and tr.distributed == "fsdp"
        if self.fsdp:  # FSDP2: every head (the bulk of the parameters) is its own shard group, then the rest
            from torch.distributed.fsdp import fully_shard

            for head in getattr(self.net, "heads", {}).values():
                fully_shard(head)
            fully_shard(self.net)
        elif self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp_net = DistributedDataParallel(self.net)
        self.label_tasks = [t.name for t in self.tasks
                            if is_label_task([answer_of(i) for i in t.split("train", r.data.train_frac, r.data.val_end)])]
        labels = set(self.label_tasks)
        weights = [r.data.label_task_weight if t.name in labels else 1.0 for t in self.tasks]
        self.sampler = HierarchicalSampler(self.tasks, tr.n_tasks_per_step, r.data.n_train_descs, r.data.train_frac,
                                           r.data.val_end, tr.seed, weights)
        if self.world > 1 and self.sampler.n_tasks % self.world:
            raise T2LError(f"train.n_tasks_per_step={tr.n_tasks_per_step} must be divisible by the {self.world} processes")
        self.encoder = encoder
        self.emb_cache: dict[str, torch.Tensor] = {}
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda)
        self.step = 0
        self.log_fn = log_fn
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._val_sets: dict[str, list[tuple[list[int], int, str]]] | None = None

    def _lr_lambda(self, step: int) -> float:
        tr = self.recipe.train
        if tr.warmup_steps and step < tr.warmup_steps:
            return (step + 1) / tr.warmup_steps
        if tr.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - tr.warmup_steps) / max(1, tr.steps - tr.warmup_steps))
        if tr.schedule == "linear":
            return 1.0 - (1.0 - tr.min_lr_ratio) * frac
        return tr.min_lr_ratio + (1.0 - tr.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    # -------------------------------------------------------------- embeddings

    def embed(self, descs: list[str]) -> torch.Tensor:
        if self.recipe.mode == "lora":
            return torch.zeros(len(descs), 1)
        missing = [d for d in dict.fromkeys(descs) if d not in self.emb_cache]
        if missing:
            if self.encoder is None:
                raise T2LError("an encoder is needed for sft training")
            for i in range(0, len(missing), 64):
                part = missing[i : i + 64]
                for d, e in zip(part, self.encoder.embed(part), strict=True):
                    self.emb_cache[d] = e.cpu()
        return torch.stack([self.emb_cache[d] for d in descs]).to(self.device)

    # -------------------------------------------------------------- forward

    def _forward_loss(self, batch: dict[str, torch.Tensor], emb: torch.Tensor, train: bool,
                      contrast: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Mean answer loss, L2 of the generated factors, and (contrast > 0) the description-contrastive term of the
        first `contrast` examples: each scored again under the adapters generated for the next `contrastive_negatives`
        examples' descriptions (other tasks: the step's tasks are distinct; one forward for all of them), then hinge =
        mean relu(margin - (wrong - own)) or infonce = cross-entropy of the own adapter among own + wrong with logits
        -loss / temperature. `gap`: the mean wrong-minus-own loss."""
        tr = self.recipe.train
        net = self.ddp_net if train else self.net
        use_bf16 = tr.bf16 and self.device == "cpu" or (tr.bf16 and self.device.startswith("cuda"))
        dev_type = "cuda" if self.device.startswith("cuda") else "cpu"
        extra: dict[str, torch.Tensor] = {}
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=use_bf16):
            factors = net(emb)
            l2 = torch.zeros((), device=self.device)
            for a, b in factors.values():
                l2 = l2 + a.float().pow(2).mean() + b.float().pow(2).mean()
            per_own = self._scored(factors, batch, train)
            n = per_own.shape[0]
            k = min(contrast, n) if n > 1 else 0
            if k:
                negs = max(1, min(tr.contrastive_negatives, n - 1))
                wrong = torch.tensor([(j + o) % n for o in range(1, negs + 1) for j in range(k)], device=per_own.device)
                fac_wrong = {m: (a[wrong], b[wrong]) for m, (a, b) in factors.items()}
                sub = {key: v[:k].repeat(negs, *([1] * (v.dim() - 1))) for key, v in batch.items()}
                per_wrong = self._scored(fac_wrong, sub, train).view(negs, k).t()  # [k, negs]
                gap = per_wrong - per_own[:k, None]
                if tr.contrastive_loss == "infonce":
                    logits = -torch.cat([per_own[:k, None], per_wrong], dim=1) / tr.contrastive_temperature
                    term = torch.nn.functional.cross_entropy(logits, torch.zeros(k, dtype=torch.long, device=logits.device))
                else:
                    term = torch.relu(tr.contrastive_margin - gap).mean()
                extra = {"hinge": term, "gap": gap.detach().mean()}
        return per_own.mean(), l2, extra

    def _scored(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: dict[str, torch.Tensor], train: bool) -> torch.Tensor:
        """Per-example answer loss of the base with example i's LoRA factors applied to example i."""
        from t2lcli.engine.lora_hooks import apply_factors

        tr = self.recipe.train
        per_layer = {}
        for m, (a, b) in factors.items():
            for layer in range(a.shape[1]):
                per_layer[self.paths[m].format(l=layer)] = (a[:, layer], b[:, layer])
        handle = apply_factors(self.model, per_layer, self.scaling, dropout=tr.lora_dropout if train else 0.0)
        neft = None
        if train and tr.neftune_alpha > 0:
            neft = self.model.get_input_embeddings().register_forward_hook(self._neftune_hook)
        try:
            return answer_loss(self.model, batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                               batch["labels"].to(self.device), tr.label_smoothing if train else 0.0, per_sample=True)
        finally:
            handle.remove()
            if neft is not None:
                neft.remove()

    def _neftune_hook(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        dims = output.shape[1] * output.shape[2]
        mag = self.recipe.train.neftune_alpha / math.sqrt(dims)
        return output + torch.zeros_like(output).uniform_(-mag, mag)

    def train_step(self) -> dict[str, float]:
        tr = self.recipe.train
        self.model.eval()  # the frozen base never uses dropout; LoRA dropout is applied by the hooks
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        total, hinge, gap, n_def = 0.0, 0.0, 0.0, 0
        contrast = 0
        if tr.contrastive_weight > 0 and self.recipe.mode == "sft":  # one shared LoRA (mode lora) has no "other" adapter
            contrast = tr.contrastive_examples or self.sampler.n_tasks
        for _ in range(tr.grad_accum):
            picks = self.sampler.sample()
            styles = self._prompt_styles(len(picks))
            if self.world > 1:
                picks, styles = picks[self.rank :: self.world], styles[self.rank :: self.world]
            items = [self._encoded_for(i, inst, st) for (i, inst, _), st in zip(picks, styles, strict=True)]
            n_def += sum(st == "definition" for st in styles)
            batch = collate(items, self.pad_id)
            emb = self.embed([d for _, _, d in picks])
            loss, l2, extra = self._forward_loss(batch, emb, train=True, contrast=contrast)
            full = loss + tr.l2_generated * l2
            if extra:
                full = full + tr.contrastive_weight * extra["hinge"]
                hinge += float(extra["hinge"].detach()) / tr.grad_accum
                gap += float(extra["gap"]) / tr.grad_accum
            (full / tr.grad_accum).backward()
            total += float(loss.detach()) / tr.grad_accum
        if self.world > 1:  # log the loss of the whole (combined) batch, not this rank's share
            t = torch.tensor([total], device=self.device)
            torch.distributed.all_reduce(t)
            total = float(t) / self.world
        if not math.isfinite(total):
            raise FloatingPointError("loss is NaN/Inf")
        gnorm = torch.nn.utils.clip_grad_norm_([p for p in self.net.parameters() if p.requires_grad], tr.grad_clip or float("inf"))
        if hasattr(gnorm, "full_tensor"):  # a DTensor under FSDP
            gnorm = gnorm.full_tensor()
        self.opt.step()
        self.sched.step()
        self.step += 1
        out = {"step": self.step, "loss": total, "lr": self.sched.get_last_lr()[0], "grad_norm": float(gnorm)}
        if contrast:  # the hinge (before its weight) and the mean wrong-minus-own loss gap of the scored examples
            out.update({"contrastive": hinge, "contrastive_gap": gap})
        if self.recipe.data.prompt == "mix":
            out["definition_prompts"] = n_def
        return out

    def _prompt_styles(self, n: int) -> list[str]:
        """The prompt style of each of the step's n examples: fixed by the recipe, or (mix) drawn from the sampler's
        RNG, whose state the checkpoints save, so a resumed run draws the same styles."""
        d = self.recipe.data
        if d.prompt != "mix":
            return [d.prompt] * n
        return ["definition" if self.sampler.rng.random() < d.definition_frac else "input" for _ in range(n)]

    def _encoded_for(self, task_idx: int, inst: dict[str, Any], style: str | None = None) -> tuple[list[int], int]:
        style = style or self.recipe.data.prompt
        e = self.tok.encode(build_prompt(self.tasks[task_idx], inst, style), answer_of(inst))
        if e is None and style == "definition" and self.recipe.data.prompt == "mix":  # the same example, input only
            e = self.tok.encode(build_prompt(self.tasks[task_idx], inst, "input"), answer_of(inst))
        if e is None:  # over-long: fall back to a random fitting example of the same task
            rows = self.encoded[task_idx]
            return rows[self.sampler.rng.randrange(len(rows))]
        return e

    # -------------------------------------------------------------- validation

    def _build_val(self) -> dict[str, list[tuple[list[int], int, str]]]:
        import random

        d, n = self.recipe.data, self.recipe.log.val_examples
        rng = random.Random(1234)
        sets: dict[str, list[tuple[list[int], int, str]]] = {}
        for label, tasks, descs_from in (("seen", self.tasks, "train"), ("unseen", self.heldout, "heldout")):
            rows = []
            for t in tasks:
                val = t.split("val", d.train_frac, d.val_end)
                descs = t.descriptions[d.n_train_descs :] if descs_from == "heldout" and len(t.descriptions) > d.n_train_descs else t.descriptions[: d.n_train_descs]
                for inst in val[:50]:
                    style = d.prompt if d.prompt != "mix" else ("definition" if rng.random() < d.definition_frac else "input")
                    e = self.tok.encode(build_prompt(t, inst, style), answer_of(inst))
                    if e is not None:
                        rows.append((e[0], e[1], rng.choice(descs)))
            rng.shuffle(rows)
            if rows:
                sets[label] = rows[:n]
        return sets

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self._val_sets is None:
            self._val_sets = self._build_val()
        self.net.eval()
        res = {}
        for label, rows in self._val_sets.items():
            losses = []
            for i in range(0, len(rows), 8):
                part = rows[i : i + 8]
                batch = collate([(ids, p) for ids, p, _ in part], self.pad_id)
                loss, _, _ = self._forward_loss(batch, self.embed([d for *_, d in part]), train=False)
                losses.append(float(loss) * len(part))
            res[f"val_{label}"] = sum(losses) / len(rows)
        self.net.train()
        return res

    # -------------------------------------------------------------- checkpoints

    # -------------------------------------------------------------- start point

    def _warm_start(self, spec: str) -> dict[str, Any]:
        """Load `train.init_from` into the fresh generator: a T2L checkpoint (sft; its hypernetwork and encoder must
        match the recipe's) or a PEFT adapter (lora; same rank and modules). Returns what provenance records."""
        if self.recipe.mode == "lora":
            return warm_start_adapter(self.net, spec, self.recipe.hypernet.r, self.paths, self.shape.n_layers)
        return warm_start_checkpoint(self.net, spec, self.ckpt.config, self.enc_spec.model)


def check_data_pin(recipe: Recipe) -> dict[str, Any]:
    """The data fingerprint (`batches.data_fingerprint`), refused with a DataError when `data.data_sha256` pins
    another: the files changed since the recipe was pinned (a task added to or removed from an empty train_tasks
    list, an edited task file or description), so the run would not reproduce the checkpoint it was made for."""
    info = data_fingerprint(recipe)
    pin = recipe.data.data_sha256.strip().lower()
    if pin and pin != info["data_sha256"]:
        raise DataError(f"the training data are not the ones data.data_sha256 pins: the {info['files']} files read hash to "
                        f"{info['data_sha256'][:16]}..., the recipe pins {pin[:16]}...",
                        hint="restore the data the recipe was pinned to, or clear the pin (--set data.data_sha256=\"\") "
                             "to train on the data as they are")
    return info
