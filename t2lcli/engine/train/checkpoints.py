"""What a Trainer writes and reads back: the embedding cache, provenance, the trained artifact (a native T2L
checkpoint or, mode lora, a PEFT adapter), and the trainer state of checkpoints/step-N (optimizer, scheduler, sampler
and torch RNG) that a resumed run continues from exactly. Under FSDP gathering the full state is a collective."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from t2lcli import console
from t2lcli.engine.atomic import atomic_dir, atomic_write_bytes
from t2lcli.engine.data import HierarchicalSampler, Task
from t2lcli.engine.train.generators import fresh_lora
from t2lcli.engine.train.state import STATE_NAME, load_pt, rng_from_list, rng_to_list
from t2lcli.errors import T2LError
from t2lcli.recipe import Recipe


class TrainerCheckpoints:
    """The persistence half of `Trainer` (a mixin: `Trainer` sets every attribute annotated here)."""

    recipe: Recipe
    output: Path
    rank: int
    world: int
    fsdp: bool
    step: int
    net: nn.Module
    opt: torch.optim.Optimizer
    sched: Any
    sampler: HierarchicalSampler
    ckpt: Any
    shape: Any
    paths: dict[str, str]
    enc_spec: Any
    emb_cache: dict[str, torch.Tensor]
    tasks: list[Task]
    heldout: list[Task]
    dropped: dict[str, str]
    too_long: int
    init_info: dict[str, Any] | None
    label_tasks: list[str]
    data_info: dict[str, Any]

    def load_embedding_cache(self) -> None:
        """Embeddings of descriptions are computed lazily (the encoder is frozen) and cached on disk across resumes."""
        cache = self.output / "embeddings.pt"
        if self.recipe.mode == "lora" or not cache.is_file():
            return
        try:
            saved = load_pt(cache)
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
            "data": self.data_info,
            "dropped_tasks": self.dropped,
            "label_tasks": self.label_tasks,
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
            model_sd = cast("dict[str, torch.Tensor]", get_model_state_dict(self.net, options=opts))
            return model_sd, cast("dict[str, Any]", get_optimizer_state_dict(self.net, self.opt, options=opts))
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}, self.opt.state_dict()

    def _plain_net(self, state: dict[str, torch.Tensor] | None) -> nn.Module:
        """The trained module with ordinary tensors (a fresh copy holding the gathered state under FSDP)."""
        if not self.fsdp:
            return self.net
        from t2lcli.engine.hypernet import HyperLoRA

        plain: nn.Module = (fresh_lora(self.shape, self.recipe.hypernet.r, self.recipe.train.seed) if self.recipe.mode == "lora"
                             else HyperLoRA(self.ckpt.config))
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
                    heads_a, heads_b = cast(Any, net.A), cast(Any, net.B)  # nn.ParameterDicts of per-layer factors
                    tensors[f"{prefix}.lora_A.weight"] = heads_a[m][layer].detach().float().clone()
                    tensors[f"{prefix}.lora_B.weight"] = heads_b[m][layer].detach().float().clone()
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
                "sampler_rng": rng_to_list(self.sampler.state()),
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
            state = load_pt(ckdir / STATE_NAME)
            if self.fsdp:  # full (unsharded) states, as saved; each rank keeps its shard
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

                opts = StateDictOptions(full_state_dict=True)
                set_model_state_dict(self.net, load_pt(ckdir / "net.pt"), options=opts)
                set_optimizer_state_dict(self.net, self.opt, state["optimizer"], options=opts)
            else:
                self.net.load_state_dict(load_pt(ckdir / "net.pt"))
                self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.sampler.set_state(rng_from_list(state["sampler_rng"]))
            self.step = int(state["step"])
            return float(state.get("seconds", 0.0))
        except T2LError:
            raise
        except Exception as exc:  # a damaged or foreign trainer state: keys, shapes, types
            raise T2LError(f"cannot resume from {ckdir}: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}",
                           hint="start over with --force") from None

