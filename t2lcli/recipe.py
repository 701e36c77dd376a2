"""Training recipes: YAML -> nested dataclasses, with every problem (unknown key, wrong type) reported at once.
Stdlib + yaml only, so `t2l train --list-recipes` stays light.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli import hypernet_defaults as defaults
from t2lcli.errors import ConfigError, UsageError, format_problems, show_key, show_value


@dataclass
class HypernetSection:
    variant: str = defaults.VARIANT
    latent: int = defaults.LATENT
    head_in: int = defaults.HEAD_IN
    r: int = defaults.RANK
    lora_alpha: float = defaults.LORA_ALPHA
    target_modules: list[str] = field(default_factory=lambda: list(defaults.TARGET_MODULES))
    dropout: float = 0.05


@dataclass
class DataSection:
    sni_dir: str = "../shared/data/sni"
    descriptions_dir: str = "../shared/data/t2l-task-descriptions/tasks"
    train_tasks: list[str] = field(default_factory=list)  # empty = every task in sni_dir not held out/excluded
    heldout_tasks: list[str] = field(default_factory=list)
    exclude_tasks: list[str] = field(default_factory=list)  # decontamination
    user_jsonl: str = ""
    user_descriptions: str = ""
    max_len: int = 160
    train_frac: float = 0.8
    val_end: float = 0.9
    n_train_descs: int = 150
    max_instances_per_task: int = 1000
    prompt: str = "input"  # input | definition | mix (a definition_frac share of the examples carry the definition)
    definition_frac: float = 0.5  # prompt: mix only; drawn per example from the sampler's seeded (resumable) RNG
    # sampling weight of label tasks (classification-like: 20 answers cover >= 90% of the training answers) against
    # 1 for the others; 1 = every task equally likely, 0 = label tasks left out
    label_task_weight: float = 1.0
    data_sha256: str = ""  # when set, training refuses data whose files hash otherwise (provenance: training.data)


@dataclass
class TrainSection:
    steps: int = 1000
    n_tasks_per_step: int = 8
    lr: float = 2e-4
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    grad_accum: int = 1
    label_smoothing: float = 0.0
    l2_generated: float = 1e-3
    neftune_alpha: float = 0.0
    lora_dropout: float = 0.05
    bf16: bool = False
    seed: int = 0
    time_budget_s: float = 0.0
    threads: int = 0
    distributed: str = "ddp"  # under torchrun/accelerate: ddp (replicated) or fsdp (sharded hypernetwork, FSDP2)
    # description-contrastive term (sft only): the answer scored under another task's generated adapter must lose to
    # the own-description one by contrastive_margin nats/token (hinge), on contrastive_examples of the step's examples
    contrastive_weight: float = 0.0
    contrastive_margin: float = 0.5
    contrastive_examples: int = 0  # 0 = every example of the step
    # hinge: mean relu(margin - (wrong - own)) over the negatives; infonce: cross-entropy of the own adapter among own +
    # negatives with logits -loss/temperature. Negatives: the adapters of the next contrastive_negatives examples'
    # descriptions (other tasks: a step's tasks are distinct)
    contrastive_loss: str = "hinge"
    contrastive_negatives: int = 1
    contrastive_temperature: float = 0.5
    init_from: str = ""  # warm start: a T2L checkpoint (sft) or a PEFT adapter (lora); fp32 master weights from it


@dataclass
class LogSection:
    every: int = 10
    val_every: int = 100
    val_examples: int = 32
    ckpt_every: int = 100
    keep_checkpoints: int = 2


@dataclass
class ReconSection:
    targets: list[str] = field(default_factory=list)  # PEFT adapter folders, one per task (folder name = task)
    loss: str = "factorized"  # factorized (L1 on A/B) | delta_w (L1 on B@A)


@dataclass
class Recipe:
    mode: str = "sft"  # sft | recon | lora
    description: str = ""
    base_model: str = "smollm2-135m-instruct"
    encoder: str = "all-minilm-l6-v2"
    hypernet: HypernetSection = field(default_factory=HypernetSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)
    recon: ReconSection = field(default_factory=ReconSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    "mode": ("sft", "recon", "lora"),
    "variant": ("L", "M", "S"),
    "schedule": ("cosine", "linear", "constant"),
    "prompt": ("input", "definition", "mix"),
    "loss": ("factorized", "delta_w"),
    "distributed": ("ddp", "fsdp"),
}


def _fill(obj: Any, data: Any, where: str, problems: list[str]) -> None:
    if not isinstance(data, dict):
        problems.append(f"{where or 'root'}: expected a mapping, got {type(data).__name__}")
        return
    hints = typing.get_type_hints(type(obj))
    fields = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{where}.{show_key(key)}" if where else show_key(key)
        if key not in fields:
            problems.append(f"unknown key '{path}'")
            continue
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, path, problems)
            continue
        typ = hints[key]
        ok, coerced = _check(typ, value)
        if not ok:
            problems.append(f"{path}: expected {_type_name(typ)}, got {show_value(value)}")
            continue
        if key in _CHOICES and coerced not in _CHOICES[key]:
            problems.append(f"{path}: {show_value(coerced)} is not one of {', '.join(_CHOICES[key])}")
            continue
        if isinstance(coerced, (int, float)) and not isinstance(coerced, bool) and coerced < 0:
            problems.append(f"{path}: must be >= 0, got {coerced}")
            continue
        setattr(obj, key, coerced)


def _type_name(typ: Any) -> str:
    return getattr(typ, "__name__", str(typ))


def _check(typ: Any, value: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(typ)
    if origin is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            return False, value
        out = []
        for v in value:
            ok, c = _check(inner, v)
            if not ok:
                return False, value
            out.append(c)
        return True, out
    if origin in (typing.Union, types.UnionType):
        return any(_check(t, value)[0] for t in typing.get_args(typ)), value
    if typ is bool:
        return isinstance(value, bool), value
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if typ is str:
        return isinstance(value, str), value
    return True, value


def recipes_dir() -> Path:
    return Path(__file__).resolve().parent / "recipes"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def _beside_recipe(recipe: Recipe, folder: Path) -> None:
    """Relative data paths are relative to the current folder, else to the recipe's folder (so the example data
    shipped beside a recipe is found from anywhere)."""
    d = recipe.data
    for attr in ("user_jsonl", "user_descriptions"):
        value = getattr(d, attr)
        if isinstance(value, str) and value and not Path(value).is_absolute() and not Path(value).exists() and (folder / value).exists():
            setattr(d, attr, str(folder / value))


def recipe_summaries() -> list[dict[str, str]]:
    """name, mode and description of each shipped recipe (what `t2l train --list-recipes` shows)."""
    from t2lcli.safe_yaml import load_yaml

    rows = []
    for name in list_recipes():
        try:
            data = load_yaml((recipes_dir() / f"{name}.yaml").read_text(encoding="utf-8")) or {}
        except Exception:  # a shipped file is valid YAML (tests load each); never fail a listing on one
            data = {}
        desc = str(data.get("description") or "").strip().splitlines()
        rows.append({"name": name, "mode": str(data.get("mode") or "sft"), "description": desc[0] if desc else ""})
    return rows


def locate_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = recipes_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(f"recipe not found: {name_or_path}", hint=f"shipped recipes: {', '.join(list_recipes())} (t2l train --list-recipes)")


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (shipped name or path), apply `--set a.b=c` overrides, validate everything at once."""
    from t2lcli.hardware import parse_set_overrides
    from t2lcli.safe_yaml import MAX_BYTES, YamlError, load_yaml

    path = Path("<stdin>") if name_or_path == "-" else locate_recipe(name_or_path)
    try:
        if name_or_path == "-":  # '-' is standard input: `t2l train --show-recipe smoke | t2l train - -o runs/x`
            import sys

            raw = sys.stdin.buffer.read(MAX_BYTES + 1)
            if len(raw) > MAX_BYTES:
                raise ConfigError("the recipe on standard input is larger than 1 MB; refusing to parse it")
            data = load_yaml(raw.decode("utf-8"))
        else:
            if path.stat().st_size > MAX_BYTES:
                raise ConfigError(f"recipe {path} is larger than 1 MB; refusing to parse it")
            data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YamlError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    recipe = Recipe()
    problems: list[str] = []
    _fill(recipe, data if data is not None else {}, "", problems)
    try:
        sets = parse_set_overrides(overrides)
    except Exception as exc:
        raise UsageError(str(exc), hint="--set takes KEY=VALUE, e.g. --set train.steps=100") from None
    set_problems: list[str] = []
    _fill(recipe, sets, "", set_problems)
    if set_problems:  # a --set that names no recipe key or gives a wrong type is a usage error (exit 2)
        raise UsageError(format_problems("invalid --set", set_problems), hint="t2l train --show-recipe default prints a valid one")
    if name_or_path != "-":
        _beside_recipe(recipe, path.parent)
    if recipe.data.train_frac >= recipe.data.val_end or recipe.data.val_end > 1:
        problems.append("data: need train_frac < val_end <= 1")
    if recipe.train.steps < 1:
        problems.append("train.steps must be >= 1")
    if recipe.train.n_tasks_per_step < 1:
        problems.append("train.n_tasks_per_step must be >= 1")
    if recipe.data.definition_frac > 1:
        problems.append(f"data.definition_frac must be between 0 and 1, got {recipe.data.definition_frac}")
    if not 0 <= recipe.data.label_task_weight <= 1:
        problems.append(f"data.label_task_weight must be between 0 and 1, got {recipe.data.label_task_weight}")
    if recipe.train.contrastive_loss not in ("hinge", "infonce"):
        problems.append(f"train.contrastive_loss must be hinge or infonce, got {recipe.train.contrastive_loss!r}")
    if recipe.train.contrastive_negatives < 1:
        problems.append(f"train.contrastive_negatives must be >= 1, got {recipe.train.contrastive_negatives}")
    if not recipe.train.contrastive_temperature > 0:
        problems.append(f"train.contrastive_temperature must be > 0, got {recipe.train.contrastive_temperature}")
    if recipe.train.contrastive_weight > 0 and recipe.mode == "recon":
        problems.append("train.contrastive_weight applies to sft training (recon distils fixed targets)")
    if problems:
        raise ConfigError(format_problems(f"invalid recipe {path}", problems), hint="t2l train --show-recipe default prints a valid one")
    return recipe
