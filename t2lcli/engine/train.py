"""Training: SFT of the T2L hypernetwork, a multi-task/oracle LoRA baseline (`lora`), and reconstruction (`recon`).

SFT (the T2L recipe): each step samples n tasks, one example and one training description per task; the
hypernetwork generates one LoRA per example; the LoRAs are applied to the frozen base with forward hooks (batched
einsum, no per-token copies); the loss is completion-only cross-entropy (each sample weighted equally) plus L2 on the
generated factors. Gradients flow only into the hypernetwork.

Options for specificity (issue #22): `data.prompt: mix` (a seeded share of the examples carry the task definition in
the prompt, the rest the input only), a description-contrastive hinge (`train.contrastive_weight`: the answer scored
under another task's generated adapter must lose by `train.contrastive_margin`), and a warm start
(`train.init_from`: continue from a shipped checkpoint or adapter instead of a fresh initialisation).

Resumable: every `log.ckpt_every` steps a native checkpoint + trainer state (optimizer, scheduler, sampler and torch
RNG) is written atomically; `resume=True` continues exactly. Runs under torchrun (DDP, gloo/nccl) unchanged.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2lcli import console
from t2lcli.engine.atomic import TMP_MARK, atomic_dir, atomic_write_bytes, check_output_free, t2l_output_kind
from t2lcli.engine.data import HierarchicalSampler, Task, answer_of, build_prompt, load_sni_task, load_user_tasks
from t2lcli.errors import DataError, T2LError
from t2lcli.recipe import Recipe

STATE_NAME = "trainer_state.pt"
RUN_NAME = "run.json"


# ------------------------------------------------------------------------------------------- generators of factors


class FixedLoRA(nn.Module):
    """One learned LoRA shared by every example (the multi-task / oracle baseline); ignores the task embedding."""

    def __init__(self, n_layers: int, dims: dict[str, list[int]], r: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.modules_order = list(dims)
        self.A = nn.ParameterDict(
            {m: nn.Parameter((torch.rand(n_layers, r, d[0], generator=g) * 2 - 1) / math.sqrt(d[0])) for m, d in dims.items()}
        )
        self.B = nn.ParameterDict({m: nn.Parameter(torch.zeros(n_layers, d[1], r)) for m, d in dims.items()})

    def forward(self, emb: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        n = emb.shape[0]
        return {m: (self.A[m].expand(n, *self.A[m].shape), self.B[m].expand(n, *self.B[m].shape)) for m in self.modules_order}


# ------------------------------------------------------------------------------------------- data preparation


@dataclass
class Prepared:
    tasks: list[Task]
    heldout: list[Task]
    dropped: dict[str, str]
    too_long: int


def select_tasks(recipe: Recipe) -> tuple[list[Task], list[Task]]:
    d = recipe.data
    if d.user_jsonl:
        tasks = load_user_tasks(Path(d.user_jsonl), Path(d.user_descriptions))
        held = [t for t in tasks if t.name in set(d.heldout_tasks)]
        return [t for t in tasks if t.name not in set(d.heldout_tasks) | set(d.exclude_tasks)], held
    sni = Path(d.sni_dir)
    if not sni.is_dir():
        raise DataError(f"SNI data folder not found: {sni}", hint="set data.sni_dir (paths are relative to the current folder)")
    desc_dir = Path(d.descriptions_dir) if d.descriptions_dir else None
    if desc_dir is not None and not desc_dir.is_dir():
        raise DataError(f"descriptions folder not found: {desc_dir}", hint="set data.descriptions_dir")
    names = d.train_tasks or sorted(p.name[: -len(".meta.json")] for p in sni.glob("*.meta.json"))
    skip = set(d.heldout_tasks) | set(d.exclude_tasks)
    train = [load_sni_task(sni, n, desc_dir, d.max_instances_per_task) for n in names if n not in skip]
    held = [load_sni_task(sni, n, desc_dir, None) for n in d.heldout_tasks]
    if not train:
        raise DataError("no training tasks selected")
    return train, held


class Tokenized:
    """Tokenises prompt/answer pairs through the base's chat template; completion-only labels."""

    def __init__(self, tokenizer: Any, max_len: int) -> None:
        self.tok = tokenizer
        self.max_len = max_len
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.has_template:
            ids = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tok(prompt)["input_ids"])

    def encode(self, prompt: str, answer: str) -> tuple[list[int], int] | None:
        p = self.prompt_ids(prompt)
        a = list(self.tok(answer, add_special_tokens=False)["input_ids"])
        eos = self.tok.eos_token_id
        if self.has_template:
            end = self.tok.convert_tokens_to_ids("<|im_end|>")
            if isinstance(end, int) and end != self.tok.unk_token_id:
                eos = end
        ids = p + a + ([eos] if eos is not None else [])
        if len(ids) > self.max_len or not a:
            return None
        return ids, len(p)


def prepare(recipe: Recipe, tok: Tokenized) -> tuple[list[Task], list[list[tuple[list[int], int]]], list[Task], dict[str, str], int]:
    """Tokenise the train split of every task; drop over-long examples (counted) and tasks left without any."""
    train, held = select_tasks(recipe)
    d = recipe.data
    kept, encoded, dropped, too_long = [], [], {}, 0
    for t in train:
        rows = []
        for inst in t.split("train", d.train_frac, d.val_end):
            # mix: an example counts as fitting when its input-only prompt fits (a too-long definition prompt falls
            # back to it at sampling time)
            e = tok.encode(build_prompt(t, inst, "input" if d.prompt == "mix" else d.prompt), answer_of(inst))
            if e is None:
                too_long += 1
            else:
                rows.append(e)
        if rows:
            kept.append(t)
            encoded.append(rows)
        else:
            dropped[t.name] = f"no example fits max_len={d.max_len}"
    if not kept:
        raise DataError(f"no training example fits data.max_len={d.max_len}", hint="raise data.max_len")
    return kept, encoded, held, dropped, too_long


def collate(items: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), -100, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, (ids, plen) in enumerate(items):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, plen : len(ids)] = torch.tensor(ids[plen:])
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


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


# ------------------------------------------------------------------------------------------- the trainer


@dataclass
class TrainResult:
    output: Path
    steps: int
    final: Path | None
    metrics_path: Path
    last_loss: float
    seconds: float
    stopped: str


class Trainer:
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
        self.tasks, self.encoded, self.heldout, self.dropped, self.too_long = prepare(r, self.tok)
        self.shape = shape_from_config(base_model.config.to_dict(), hs.target_modules)
        self.enc_spec = encoder_spec_for(r.encoder)
        self.ckpt = build_checkpoint(
            self.shape, self.enc_spec, r.base_model, variant=hs.variant, latent=hs.latent, head_in=hs.head_in, r=hs.r,
            lora_alpha=hs.lora_alpha, seed=tr.seed, dropout=hs.dropout,
        )
        self.scaling = self.ckpt.config.scaling
        self.paths = {m: s.path for m, s in self.shape.modules.items()}
        self.net: nn.Module = self._fresh_lora() if r.mode == "lora" else self.ckpt.hypernet
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
        self.sampler = HierarchicalSampler(self.tasks, tr.n_tasks_per_step, r.data.n_train_descs, r.data.train_frac, r.data.val_end, tr.seed)
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

    def load_embedding_cache(self) -> None:
        """Embeddings of descriptions are computed lazily (the encoder is frozen) and cached on disk across resumes."""
        cache = self.output / "embeddings.pt"
        if self.recipe.mode == "lora" or not cache.is_file():
            return
        try:
            saved = _load_pt(cache)
        except T2LError as exc:
            console.warn(f"{exc.message}; the embeddings are computed again")
            return
        if isinstance(saved, dict) and saved.get("encoder") == self.enc_spec.model:
            self.emb_cache.update(dict(zip(saved["texts"], saved["emb"], strict=True)))

    def save_embedding_cache(self) -> None:
        if self.recipe.mode == "lora" or self.rank != 0 or not self.emb_cache:
            return
        texts = list(self.emb_cache)
        buf = io.BytesIO()
        torch.save({"encoder": self.enc_spec.model, "texts": texts, "emb": torch.stack([self.emb_cache[x] for x in texts])}, buf)
        atomic_write_bytes(self.output / "embeddings.pt", buf.getvalue())

    # -------------------------------------------------------------- forward

    def _forward_loss(self, batch: dict[str, torch.Tensor], emb: torch.Tensor, train: bool,
                      contrast: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Mean answer loss, L2 of the generated factors, and (contrast > 0) the description-contrastive terms of the
        first `contrast` examples: each scored again under the adapter generated for the next example's description
        (another task: the step's tasks are distinct), with hinge = relu(margin - (wrong - own)) per example."""
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
                wrong = torch.tensor([(j + 1) % n for j in range(k)], device=per_own.device)
                fac_wrong = {m: (a[wrong], b[wrong]) for m, (a, b) in factors.items()}
                per_wrong = self._scored(fac_wrong, {key: v[:k] for key, v in batch.items()}, train)
                gap = per_wrong - per_own[:k]
                extra = {"hinge": torch.relu(tr.contrastive_margin - gap).mean(), "gap": gap.detach().mean()}
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

    def provenance(self, seconds: float) -> dict[str, Any]:
        from t2lcli import __version__

        r = self.recipe
        return {
            "tool_version": __version__,
            "mode": r.mode,
            "recipe": r.to_dict(),
            "steps": self.step,
            "seconds": round(seconds, 1),
            "train_tasks": [t.name for t in self.tasks],
            "heldout_tasks": [t.name for t in self.heldout],
            "dropped_tasks": self.dropped,
            "examples_too_long": self.too_long,
            "n_train_descriptions_per_task": r.data.n_train_descs,
            "torch": torch.__version__,
            "world_size": self.world,
            **({"init_from": self.init_info} if self.init_info else {}),
        }

    def heldout_descriptions(self) -> dict[str, Any]:
        """Descriptions never used in training for every held-out task, keyed as `t2l eval --tasks sni:...` names
        them: the input of `t2l eval --descriptions-file` for the unseen-task comparison."""
        k = self.recipe.data.n_train_descs
        doc: dict[str, Any] = {"_note": f"held-out tasks of this run (never trained on); descriptions from index {k} on "
                                        "(never used in training for any task); for t2l eval --descriptions-file"}
        for t in self.heldout:
            doc[f"sni:{t.name}"] = t.descriptions[k:] or t.descriptions
        return doc

    def full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The unsharded model and optimizer state on the CPU. Under FSDP this is a collective: every rank calls it."""
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.net, options=opts), get_optimizer_state_dict(self.net, self.opt, options=opts)
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}, self.opt.state_dict()

    def _warm_start(self, spec: str) -> dict[str, Any]:
        """Load `train.init_from` into the fresh generator: a T2L checkpoint (sft; its hypernetwork and encoder must
        match the recipe's) or a PEFT adapter (lora; same rank and modules). Weights become fp32 master weights
        (a bf16 checkpoint is upcast). Returns what provenance records about the start point."""
        from t2lcli.engine.checkpoint import load_checkpoint, load_strict

        if self.recipe.mode == "lora":
            from t2lcli.engine.adapters import load_adapter, tensors_sha256

            ad = load_adapter(spec)
            if ad.r != self.recipe.hypernet.r:
                raise DataError(f"train.init_from {spec}: rank {ad.r} differs from hypernet.r={self.recipe.hypernet.r}")
            state = {}
            try:
                for m, path in self.paths.items():
                    for name, key in (("A", "lora_A"), ("B", "lora_B")):
                        state[f"{name}.{m}"] = torch.stack([ad.tensors[f"base_model.model.{path.format(l=layer)}.{key}.weight"].float()
                                                            for layer in range(self.shape.n_layers)])
            except KeyError as exc:
                raise DataError(f"train.init_from {spec} lacks {exc.args[0]}", hint="the adapter must target the recipe's base and modules") from None
            load_strict(self.net, state, str(spec))
            training = ad.meta.get("training") if isinstance(ad.meta.get("training"), dict) else {}
            return {"path": str(spec), "sha256": tensors_sha256(Path(spec) / "adapter_model.safetensors"),
                    "steps": training.get("steps"), "seconds": training.get("seconds"), "dtype": "fp32 master weights from the adapter's tensors"}
        ck = load_checkpoint(spec)
        mine, theirs = self.ckpt.config, ck.config
        problems = [f"{k}: checkpoint {getattr(theirs, k)!r}, recipe {getattr(mine, k)!r}"
                    for k in ("variant", "latent", "head_in", "r", "lora_alpha", "target_modules", "use_rslora")
                    if getattr(theirs, k) != getattr(mine, k)]
        if ck.encoder.model != self.enc_spec.model:
            problems.append(f"encoder: checkpoint {ck.encoder.model!r}, recipe {self.enc_spec.model!r}")
        if problems:
            raise DataError(f"train.init_from {spec} does not match the recipe: " + "; ".join(problems),
                            hint="set the recipe's hypernet section and encoder to the checkpoint's")
        load_strict(self.net, {k: v.float() if v.is_floating_point() else v for k, v in ck.hypernet.state_dict().items()}, str(spec))
        prov = ck.provenance if isinstance(ck.provenance, dict) else {}
        return {"path": str(spec), "sha256": ck.sha256, "steps": prov.get("steps"), "seconds": prov.get("seconds"),
                "train_tasks": len(prov.get("train_tasks") or []), "dtype": "fp32 master weights from the checkpoint's tensors"}

    def _fresh_lora(self) -> FixedLoRA:
        dims = {m: [s.d_in, s.d_out] for m, s in self.shape.modules.items()}
        return FixedLoRA(self.shape.n_layers, dims, self.recipe.hypernet.r, self.recipe.train.seed)

    def _plain_net(self, state: dict[str, torch.Tensor] | None) -> nn.Module:
        """The trained module with ordinary tensors (a fresh copy holding the gathered state under FSDP)."""
        if not self.fsdp:
            return self.net
        from t2lcli.engine.hypernet import HyperLoRA

        plain: nn.Module = self._fresh_lora() if self.recipe.mode == "lora" else HyperLoRA(self.ckpt.config)
        plain.load_state_dict(state if state is not None else self.full_state()[0])
        return plain

    def save_artifact(self, folder: Path, seconds: float, force: bool = True, state: dict[str, torch.Tensor] | None = None) -> Path:
        """The trained thing: a native T2L checkpoint (sft/recon) or a PEFT adapter (lora). Under FSDP pass the
        gathered `state` (from `full_state`, which every rank must call)."""
        net = self._plain_net(state)
        if self.recipe.mode == "lora":
            from t2lcli.engine.adapters import Adapter, peft_config, save_adapter

            c = self.ckpt.config
            tensors = {}
            for m, path in self.paths.items():
                for layer in range(self.shape.n_layers):
                    prefix = "base_model.model." + path.format(l=layer)
                    tensors[f"{prefix}.lora_A.weight"] = net.A[m][layer].detach().float().clone()
                    tensors[f"{prefix}.lora_B.weight"] = net.B[m][layer].detach().float().clone()
            cfg = peft_config(c.r, c.lora_alpha, list(c.target_modules), self.recipe.base_model, use_rslora=c.use_rslora)
            meta = {"description": self.recipe.description or "multi-task LoRA trained by t2l", "training": self.provenance(seconds)}
            return save_adapter(Adapter(cfg, tensors, meta), folder, force=force)
        from dataclasses import replace

        from t2lcli.engine.checkpoint import save_checkpoint

        ckpt = self.ckpt if net is self.net else replace(self.ckpt, hypernet=net)
        return save_checkpoint(ckpt, folder, force=force, training=self.provenance(seconds))

    def save_state(self, seconds: float) -> dict[str, torch.Tensor] | None:
        """Checkpoint + trainer state, atomically; `latest` points at the newest complete one. Every rank calls it
        (under FSDP gathering the state is a collective); rank 0 writes. Returns the gathered model state (None on
        ranks that had nothing to gather)."""
        if self.rank != 0 and not self.fsdp:
            return None
        model_state, optim_state = self.full_state()
        if self.rank != 0:
            return model_state
        ckdir = self.output / "checkpoints" / f"step-{self.step:07d}"
        with atomic_dir(ckdir, force=True, cache=True) as tmp:
            self.save_artifact(tmp / "model", seconds, state=model_state)
            state = {
                "step": self.step,
                "optimizer": optim_state,
                "scheduler": self.sched.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "sampler_rng": _rng_to_list(self.sampler.state()),
                "seconds": seconds,
            }
            torch.save(state, tmp / STATE_NAME)
            torch.save(model_state, tmp / "net.pt")
        atomic_write_bytes(self.output / "latest", ckdir.name.encode())
        self.save_embedding_cache()
        old = sorted((self.output / "checkpoints").glob("step-*"))[: -self.recipe.log.keep_checkpoints]
        for o in old:
            shutil.rmtree(o, ignore_errors=True)
        return model_state

    def load_state(self) -> float:
        latest = self.output / "latest"
        if not latest.is_file():
            return 0.0
        name = latest.read_text(encoding="utf-8", errors="replace").strip()
        if not name.startswith("step-") or not name[5:].isdigit():
            raise T2LError(f"{latest} does not name a checkpoint (step-NNNNNNN)", hint="start over with --force")
        ckdir = self.output / "checkpoints" / name
        try:
            state = _load_pt(ckdir / STATE_NAME)
            if self.fsdp:  # full (unsharded) states, as saved; each rank keeps its shard
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

                opts = StateDictOptions(full_state_dict=True)
                set_model_state_dict(self.net, _load_pt(ckdir / "net.pt"), options=opts)
                set_optimizer_state_dict(self.net, self.opt, state["optimizer"], options=opts)
            else:
                self.net.load_state_dict(_load_pt(ckdir / "net.pt"))
                self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.sampler.set_state(_rng_from_list(state["sampler_rng"]))
            self.step = int(state["step"])
            return float(state.get("seconds", 0.0))
        except T2LError:
            raise
        except Exception as exc:  # a damaged or foreign trainer state: keys, shapes, types
            raise T2LError(f"cannot resume from {ckdir}: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
                           hint="start over with --force") from None


def _load_pt(path: Path) -> Any:
    """A file this trainer wrote, read back with `torch.load(weights_only=True)`: a pickle that would run code is
    refused; damage is one T2LError."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise T2LError(f"{path} was refused: it references objects other than tensors and plain data, which could run code",
                       hint="nothing from it was executed; start over with --force") from None
    except Exception as exc:
        raise T2LError(f"{path} is damaged or truncated: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
                       hint="start over with --force") from None


def _rng_to_list(state: Any) -> list[Any]:
    version, internal, gauss = state
    return [int(version), [int(x) for x in internal], gauss]


def _rng_from_list(data: list[Any]) -> Any:
    return (int(data[0]), tuple(int(x) for x in data[1]), data[2])


def _recipe_fingerprint(recipe: Recipe) -> str:
    import hashlib

    d = recipe.to_dict()
    for volatile in ("steps", "time_budget_s", "threads"):
        d["train"].pop(volatile, None)
    if d["train"].get("distributed") == "ddp":  # the default leaves the fingerprints of earlier runs unchanged
        d["train"].pop("distributed")
    for section, key, default in (("train", "contrastive_weight", 0.0), ("train", "contrastive_margin", 0.5),
                                  ("train", "contrastive_examples", 0), ("train", "init_from", ""), ("data", "definition_frac", 0.5)):
        if d[section].get(key) == default:  # options added later: at their defaults, earlier runs still resume
            d[section].pop(key)
    d.pop("log", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def check_output(output: Path, recipe: Recipe, resume: bool, force: bool) -> bool:
    """Decide what to do with an existing output folder. Returns True when a run is to be resumed."""
    run = output / RUN_NAME
    if output.is_dir() and not output.is_symlink() and not any(p for p in output.iterdir() if not p.name.startswith(TMP_MARK)):
        return False  # empty, or only the temporaries of a run killed before it wrote run.json
    if not output.exists() and not output.is_symlink():
        return False
    try:
        info = json.loads(run.read_text(encoding="utf-8")) if run.is_file() else None
    except (ValueError, OSError, RecursionError):
        info = "damaged"  # a run killed while writing it, or a corrupted disk: still t2l's run
    if info is None or (info != "damaged" and t2l_output_kind(output) != "a t2l training run"):
        check_output_free(output, force=True)  # refuses a folder t2l did not write, naming what is there
        if not force:
            raise T2LError(f"{output} holds {t2l_output_kind(output)}, not a training run",
                           hint="choose another --output, or pass --force to replace it")
        shutil.rmtree(output)
        return False
    if force:
        shutil.rmtree(output)
        return False
    if not resume:
        raise T2LError(f"{output} already holds a training run", hint="pass --resume to continue it or --force to start over")
    if not isinstance(info, dict):
        raise T2LError(f"{run} is damaged; this run cannot be resumed", hint="start over with --force")
    if info.get("fingerprint") != _recipe_fingerprint(recipe):
        raise T2LError(f"{output} holds a run of a different recipe", hint="use the same recipe (steps/time budget may change) or --force")
    return True


def run_training(recipe: Recipe, output: Path, resume: bool = False, force: bool = False, max_steps: int | None = None,
                 time_budget_s: float | None = None, device: str = "cpu", base_dtype: str = "float32",
                 on_metrics: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train per the recipe into `output` (checkpoints/, metrics.jsonl, final/). See module docstring."""
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.hardware import ComponentSettings

    tr = recipe.train
    if tr.threads:
        torch.set_num_threads(tr.threads)
    if recipe.mode == "recon":
        if resume:
            raise T2LError("--resume is not supported for reconstruction runs (they are short)", hint="rerun with --force")
        return run_recon(recipe, output, force=force, max_steps=max_steps, on_metrics=on_metrics)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    rank = int(os.environ.get("RANK", "0"))
    resuming = check_output(output, recipe, resume, force) if rank == 0 else resume
    if resuming and world == 1:
        done = _finished(output, min(tr.steps, max_steps) if max_steps else tr.steps)
        if done is not None:  # nothing left to do: return before loading the base, the encoder and the data
            console.log(f"{output} is already complete at step {done.steps}; nothing to resume")
            return done
    if world > 1:
        torch.distributed.barrier()
    output.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        atomic_write_bytes(output / RUN_NAME, json.dumps({"fingerprint": _recipe_fingerprint(recipe), "recipe": recipe.to_dict()}, indent=2).encode())
    model, tok = load_base_model(recipe.base_model, ComponentSettings(device=device, dtype=base_dtype, attn_implementation="sdpa"))
    encoder = None
    if recipe.mode != "lora":
        from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

        encoder = TextEncoder(encoder_spec_for(recipe.encoder), device=device)
    trainer = Trainer(recipe, output, model, tok, encoder, device)
    if rank == 0 and trainer.heldout:
        atomic_write_bytes(output / "heldout_descriptions.json", json.dumps(trainer.heldout_descriptions(), indent=1, ensure_ascii=False).encode())
    elapsed0 = trainer.load_state() if resuming else 0.0
    if resuming:
        console.log(f"resuming from step {trainer.step}")
    console.log(
        f"{len(trainer.tasks)} training tasks, {len(trainer.heldout)} held out, {trainer.too_long} over-long examples skipped"
        + (f", dropped: {', '.join(trainer.dropped)}" if trainer.dropped else "")
    )
    trainer.load_embedding_cache()
    total_steps = min(tr.steps, max_steps) if max_steps else tr.steps
    budget = time_budget_s if time_budget_s is not None else tr.time_budget_s
    metrics_path = output / "metrics.jsonl"
    t_start = time.perf_counter()
    last_loss, stopped = float("nan"), "steps"
    last_ckpt_step = trainer.step
    lg = recipe.log
    with console.progress() as bar, open(metrics_path, "a") as mf:
        task = bar.add_task("training", total=total_steps, completed=trainer.step)
        while trainer.step < total_steps:
            t0 = time.perf_counter()
            try:
                m = trainer.train_step()
            except FloatingPointError:
                stopped = "nan"
                console.error(f"loss became NaN/Inf at step {trainer.step + 1}; stopping (the last good checkpoint is kept)",
                              "lower train.lr or raise train.warmup_steps")
                break
            m["step_s"] = round(time.perf_counter() - t0, 3)
            m["elapsed_s"] = round(elapsed0 + time.perf_counter() - t_start, 1)
            last_loss = m["loss"]
            if lg.val_every and trainer.step % lg.val_every == 0:
                m.update(trainer.validate())
            if rank == 0 and (trainer.step % lg.every == 0 or "val_seen" in m or trainer.step == 1):
                mf.write(json.dumps(m) + "\n")
                mf.flush()
                if on_metrics:
                    on_metrics(m)
            bar.update(task, completed=trainer.step, description=f"training loss {m['loss']:.3f}")
            if lg.ckpt_every and trainer.step % lg.ckpt_every == 0:
                trainer.save_state(m["elapsed_s"])
                last_ckpt_step = trainer.step
            if budget and time.perf_counter() - t_start > budget:
                stopped = "time_budget"
                break
    seconds = elapsed0 + time.perf_counter() - t_start
    final = None
    if stopped != "nan":
        state = trainer.save_state(seconds) if trainer.step != last_ckpt_step else None
        if trainer.step >= total_steps:
            if trainer.fsdp and state is None:  # gathering is a collective under FSDP; done once
                state = trainer.full_state()[0]
            if rank == 0:
                final = trainer.save_artifact(output / "final", seconds, force=True, state=state)
    if world > 1:
        torch.distributed.barrier()
    return TrainResult(output, trainer.step, final, metrics_path, last_loss, seconds, stopped)


def _finished(output: Path, total_steps: int) -> TrainResult | None:
    """The result of a run that already reached `total_steps` and wrote final/, or None."""
    try:
        name = (output / "latest").read_text(encoding="utf-8").strip()
        step = int(name.removeprefix("step-"))
    except (OSError, ValueError):
        return None
    final = output / "final"
    if step < total_steps or t2l_output_kind(final) not in ("a t2l checkpoint", "a t2l adapter"):
        return None
    last_loss, seconds = float("nan"), 0.0
    try:
        lines = (output / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        last = json.loads(lines[-1]) if lines else {}
        last_loss, seconds = float(last.get("loss", last_loss)), float(last.get("elapsed_s", 0.0))
    except (OSError, ValueError):
        pass
    return TrainResult(output, step, final, output / "metrics.jsonl", last_loss, seconds, "steps")


# ------------------------------------------------------------------------------------------- reconstruction


def run_recon(recipe: Recipe, output: Path, force: bool = False, max_steps: int | None = None,
              on_metrics: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Distil a library of per-task LoRAs into the hypernetwork: L1 on A/B (`factorized`) or on ΔW = B@A (`delta_w`).

    Needs no base weights (shapes come from the base's config.json). Targets are PEFT folders; a folder's name is its
    task, whose descriptions come from the SNI data when it is there, else from the adapter's card.
    """
    import glob
    import random

    from t2lcli.engine.adapters import load_adapter
    from t2lcli.engine.base_model import read_config, resolve_model, shape_from_config
    from t2lcli.engine.checkpoint import build_checkpoint, save_checkpoint
    from t2lcli.engine.encoder import TextEncoder, encoder_spec_for

    tr, hs, d = recipe.train, recipe.hypernet, recipe.data
    folders = sorted({Path(p) for pat in recipe.recon.targets for p in (glob.glob(pat) or [pat])})
    if not folders:
        raise DataError("recon.targets lists no adapter folders", hint="set recon.targets to PEFT folders (globs allowed)")
    check_output(output, recipe, resume=False, force=force)
    shape = shape_from_config(read_config(resolve_model(recipe.base_model)), hs.target_modules)
    ckpt = build_checkpoint(shape, encoder_spec_for(recipe.encoder), recipe.base_model, variant=hs.variant, latent=hs.latent,
                            head_in=hs.head_in, r=hs.r, lora_alpha=hs.lora_alpha, seed=tr.seed, dropout=hs.dropout)
    targets: list[tuple[str, dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]] = []
    for folder in folders:
        ad = load_adapter(folder)
        if ad.r != hs.r:
            raise DataError(f"{folder}: rank {ad.r} differs from hypernet.r={hs.r}")
        fac = {}
        for m, s in shape.modules.items():
            a = torch.stack([ad.tensors[f"base_model.model.{s.path.format(l=layer)}.lora_A.weight"].float() for layer in range(shape.n_layers)])
            b = torch.stack([ad.tensors[f"base_model.model.{s.path.format(l=layer)}.lora_B.weight"].float() for layer in range(shape.n_layers)])
            fac[m] = (a, b)
        descs: list[str] = []
        sni = Path(d.sni_dir)
        if (sni / f"{folder.name}.meta.json").is_file():
            descs = load_sni_task(sni, folder.name, Path(d.descriptions_dir) if d.descriptions_dir else None, 1).descriptions[: d.n_train_descs]
        if not descs and ad.meta.get("description"):
            descs = [str(ad.meta["description"])]
        if not descs:
            raise DataError(f"target {folder} has no descriptions (not an SNI task name and no description in its card)")
        targets.append((folder.name, fac, descs))
    encoder = TextEncoder(encoder_spec_for(recipe.encoder))
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output / RUN_NAME, json.dumps({"fingerprint": _recipe_fingerprint(recipe), "recipe": recipe.to_dict()}, indent=2).encode())
    torch.manual_seed(tr.seed)
    rng = random.Random(tr.seed)
    net = ckpt.hypernet.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=tr.lr, weight_decay=tr.weight_decay)
    steps = min(tr.steps, max_steps) if max_steps else tr.steps
    cache: dict[str, torch.Tensor] = {}
    t0, last = time.perf_counter(), float("nan")
    with open(output / "metrics.jsonl", "a") as mf:
        for step in range(1, steps + 1):
            picks = rng.sample(range(len(targets)), min(tr.n_tasks_per_step, len(targets)))
            descs = [rng.choice(targets[i][2]) for i in picks]
            new = [x for x in dict.fromkeys(descs) if x not in cache]
            if new:
                cache.update(zip(new, encoder.embed(new), strict=True))
            out = net(torch.stack([cache[x] for x in descs]))
            loss = torch.zeros(())
            for m, (a, b) in out.items():
                ta = torch.stack([targets[i][1][m][0] for i in picks])
                tb = torch.stack([targets[i][1][m][1] for i in picks])
                if recipe.recon.loss == "delta_w":
                    loss = loss + (b @ a - tb @ ta).abs().mean()
                else:
                    loss = loss + ((a - ta).abs().mean() + (b - tb).abs().mean()) / 2
            loss = loss / len(out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), tr.grad_clip or float("inf"))
            opt.step()
            last = float(loss.detach())
            if not math.isfinite(last):
                raise T2LError(f"reconstruction loss became NaN at step {step}", hint="lower train.lr")
            if step % recipe.log.every == 0 or step == 1 or step == steps:
                m = {"step": step, "loss": last, "elapsed_s": round(time.perf_counter() - t0, 1)}
                mf.write(json.dumps(m) + "\n")
                if on_metrics:
                    on_metrics({**m, "lr": tr.lr, "step_s": 0.0})
    seconds = time.perf_counter() - t0
    ckpt.config.training_task = "sft"  # outputs are raw A/B already (no z-scoring, no offset): generate as SFT does
    prov = {"mode": "recon", "recipe": recipe.to_dict(), "steps": steps, "seconds": round(seconds, 1),
            "targets": [str(f) for f in folders], "loss": recipe.recon.loss}
    final = save_checkpoint(ckpt, output / "final", force=True, training=prov)
    return TrainResult(output, steps, final, output / "metrics.jsonl", last, seconds, "steps")
