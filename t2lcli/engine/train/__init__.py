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

Modules: `batches` (task selection, tokenising, collation), `loss` (the answer loss), `generators` (the fixed LoRA
baseline and warm starts), `trainer` (the step and validation), `checkpoints` (what the trainer writes and resumes
from), `state` (the run folder: fingerprint, resume/replace decisions, safe loading), `recon` (reconstruction) and
`run` (`run_train`, the entry point).
"""

from t2lcli.engine.train.batches import Tokenized, collate, prepare, select_tasks
from t2lcli.engine.train.generators import FixedLoRA
from t2lcli.engine.train.loss import answer_loss, sample_loss
from t2lcli.engine.train.recon import run_recon
from t2lcli.engine.train.run import run_train, run_training
from t2lcli.engine.train.state import RUN_NAME, STATE_NAME, TrainResult, check_output, load_pt, recipe_fingerprint
from t2lcli.engine.train.trainer import Trainer

_load_pt = load_pt  # the names before the package split
_recipe_fingerprint = recipe_fingerprint

__all__ = [
    "RUN_NAME", "STATE_NAME", "FixedLoRA", "Tokenized", "TrainResult", "Trainer", "answer_loss", "check_output", "collate",
    "load_pt", "prepare", "recipe_fingerprint", "run_recon", "run_train", "run_training", "sample_loss", "select_tasks",
]
