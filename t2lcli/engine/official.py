"""Official SakanaAI T2L checkpoints: `hypermod.pt` (weights_only unpickling) + `args.yaml` + `adapter_config.json`.

Loader spec: ../shared/docs/t2l-reference.md ("Loader spec"). Module order = `target_modules` in adapter_config.json
file order. Sizes come from the state-dict shapes and are cross-checked against args.yaml and adapter_config.json.
No base weights are loaded. `hypermod.pt` is memory-mapped and its tensors are adopted by a module built on the meta
device, so loading the 230M-parameter Llama-8B checkpoint costs about its file size in RSS and no extra copy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.adapters import tensors_sha256
from t2lcli.engine.checkpoint_model import T2LCheckpoint, materialize
from t2lcli.engine.encoder import EncoderSpec, encoder_spec_for
from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig
from t2lcli.engine.model_shape import ATTN_MODULES, ModelShape, ModuleShape
from t2lcli.errors import CheckpointError, format_problems, show_value

_MODULE_NAME = re.compile(r"^[A-Za-z0-9_]{1,100}$")
UNSUPPORTED_ENCODERS = ("discrete", "vq", "softmax")
SFR_PREFIX = "Instruct: Retrieve semantically similar text.\nQuery: "
FILES_HINT = "an official folder holds hypermod.pt, args.yaml and adapter_config.json (e.g. trained_t2l/llama_8b_t2l)"
# args.yaml fields kept as provenance (the rest is training configuration, e.g. 479 dataset names)
PROVENANCE_ARGS = (
    "model_dir", "emb_model", "run_name", "exp_setup", "training_task", "encoder_type", "hypernet_latent_size",
    "head_in_size", "shared_AB_head", "autoreg_gen", "learnable_pos_emb", "pred_z_score", "factorized",
    "delta_w_scaling", "mt_lora_path", "seed", "target_modules",
)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}", hint=FILES_HINT)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _read_args(path: Path) -> dict[str, Any]:
    from t2lcli.safe_yaml import YamlError, load_yaml

    if not path.is_file():
        raise CheckpointError(f"missing args.yaml in {path.parent}", hint=FILES_HINT)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (YamlError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not valid YAML (or uses tags other than plain data): {(str(exc).splitlines() or ['unreadable'])[0]}",
            hint="args.yaml is read with yaml.safe_load; objects/tags are refused",
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a YAML mapping")
    return data


def read_state_dict(path: Path, mmap: bool = True) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)`: a pickle that tries to run code is refused and nothing is executed.

    With `mmap` the tensors stay backed by the file (copy-on-write), so no second copy of the weights is made.

    Raises:
        CheckpointError: not a torch zip file, truncated, refused objects, or not a flat dict of tensors.
    """
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a torch zip checkpoint (truncated, or another format)",
            hint="re-download hypermod.pt; t2l reads only torch.save's zip format",
        )
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        raise CheckpointError(
            f"{path} was refused: its pickle references objects other than tensors, which could run code"
            + (f" ({first[:160]})" if first else ""),
            hint="t2l loads .pt files only with torch.load(weights_only=True); nothing from the file was executed",
        ) from None
    except Exception as exc:  # malformed pickles raise anything (IndexError, struct.error, ...); nothing ran
        first = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is corrupt or truncated: {first}", hint="re-download hypermod.pt") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, not a state dict (a flat dict of tensors)")
    bad = [str(k) for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise CheckpointError(
            f"{path} is not a flat dict of tensors (non-tensor entries: {', '.join(bad[:5])}{', …' if len(bad) > 5 else ''})",
            hint="pass the hypernetwork state dict itself (torch.save(hypermod.state_dict()))",
        )
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP/DataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _variant_flags(variant: str) -> str:
    return {
        "L": "shared_AB_head: false, autoreg_gen: false",
        "M": "shared_AB_head: true, autoreg_gen: false",
        "S": "shared_AB_head: true, autoreg_gen: true",
    }[variant]


def _head_rows(variant: str, r: int, d_in: int, d_out: int) -> int:
    if variant == "L":
        return r * (d_in + d_out)
    if variant == "M":
        return r * max(d_in, d_out)
    return max(d_in, d_out)


def _check_args(args: dict[str, Any]) -> None:
    """Refuse what t2l cannot run from a text description; one clear message each."""
    enc_type = args.get("encoder_type", "linear") or "linear"
    if enc_type in UNSUPPORTED_ENCODERS or enc_type != "linear":
        raise CheckpointError(
            f"args.yaml encoder_type {show_value(enc_type)} is not supported: t2l runs the 'linear' task encoder only",
            hint="the released SakanaAI checkpoints use encoder_type: linear",
        )
    if args.get("use_one_hot_task_emb"):
        raise CheckpointError(
            "args.yaml use_one_hot_task_emb is true: this checkpoint takes training-task ids, not text descriptions",
            hint="not supported; use a checkpoint trained on description embeddings (use_one_hot_task_emb: false)",
        )
    emb = args.get("emb_model")
    if emb is None or (isinstance(emb, str) and not emb.strip()):
        raise CheckpointError(
            "args.yaml emb_model is empty: this checkpoint embeds descriptions with the base LLM itself, which needs "
            "the base model's weights",
            hint="not supported: t2l never loads the base model to generate; use a checkpoint with an emb_model "
            "(e.g. Alibaba-NLP/gte-large-en-v1.5)",
        )
    if not isinstance(emb, str):
        raise CheckpointError(f"args.yaml emb_model must be a model name, got {show_value(emb)}")
    if args.get("shared_AB_head") is False and args.get("autoreg_gen") is True:
        raise CheckpointError("args.yaml autoreg_gen without shared_AB_head is not supported (variants L, M and S only)")
    task = str(args.get("training_task", "sft") or "sft")
    if task not in ("sft", "recon"):
        raise CheckpointError(f"args.yaml training_task {show_value(task)} is unknown (sft or recon)")
    if task == "recon" and args.get("pred_z_score") and not args.get("factorized", False):
        raise CheckpointError(
            "reconstruction checkpoint with pred_z_score: true and factorized: false: its outputs cannot be converted "
            "to raw scale (the reference raises NotImplementedError here too)",
            hint="not supported; use an SFT checkpoint or a factorized reconstruction checkpoint",
        )


def encoder_spec_from_args(emb_model: str, dim: int) -> EncoderSpec:
    """How the reference embeds descriptions for this emb_model (names containing 'gte' or 'SFR')."""
    low = emb_model.lower()
    if "gte" in low:
        spec = encoder_spec_for(emb_model) if "gte-large" in low else EncoderSpec(emb_model, dim, "cls", "l2_sqrt_dim", True, 8192)
    elif "sfr" in low:
        spec = EncoderSpec(emb_model, dim, "last", "l2_sqrt_dim", True, 8192, prefix=SFR_PREFIX)
    elif "minilm" in low:
        spec = encoder_spec_for(emb_model)
    else:
        raise CheckpointError(
            f"args.yaml emb_model {show_value(emb_model)} is not an encoder the reference supports (gte or SFR models)",
            hint="the released checkpoints use Alibaba-NLP/gte-large-en-v1.5",
        )
    spec.dim = dim
    return spec


def config_from_official(folder: Path) -> tuple[HyperNetConfig, dict[str, Any], dict[str, Any], dict[str, torch.Tensor], list[str]]:
    """Read the three files; derive every size from the state dict and cross-check it.

    Returns (config, args, adapter_config, state_dict, problems): `problems` are inconsistencies that the strict
    key/shape check will report together with its own findings.

    Raises:
        CheckpointError: a missing/corrupt file, an unsupported setting, or missing keys that sizes come from.
    """
    args, adapter, tm, sd = _read_folder(folder)
    where = folder / "hypermod.pt"
    shared, autoreg = bool(args.get("shared_AB_head", False)), bool(args.get("autoreg_gen", False))
    variant = "S" if autoreg else ("M" if shared else "L")
    sizes, problems = _sizes(sd, tm, adapter, where)
    problems += _cross_check(args, tm, sd, sizes, variant)
    cfg = _build_config(folder, args, adapter, tm, sd, sizes, variant, problems)
    return cfg, args, adapter, sd, problems


_SIZE_KEYS = ["task_encoder.mlp.0.weight", "layer_depth_encoder.0.weight", "layer_type_encoder.0.weight", "mixer.1.weight", "mlp3.4.weight"]


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, Any], list[str], dict[str, torch.Tensor]]:
    """args.yaml, adapter_config.json, its target_modules (the module order) and the state dict, each checked enough
    for the sizes to be read from it."""
    args = _read_args(folder / "args.yaml")
    adapter = _read_json(folder / "adapter_config.json")
    if not (folder / "hypermod.pt").is_file():
        raise CheckpointError(f"missing hypermod.pt in {folder}", hint=FILES_HINT)
    _check_args(args)
    tm = adapter.get("target_modules")
    if not isinstance(tm, list) or not tm or not all(isinstance(m, str) and _MODULE_NAME.match(m) for m in tm) or len(set(tm)) != len(tm):
        raise CheckpointError(
            "adapter_config.json target_modules must be a non-empty list of distinct module names such as q_proj "
            "(its order defines the module types)",
            hint="a regex string or a set cannot give the module order",
        )
    if str(adapter.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(f"adapter_config.json peft_type is {show_value(adapter.get('peft_type'))}, expected LORA")
    where = folder / "hypermod.pt"
    sd = read_state_dict(where)
    needed = _SIZE_KEYS + [f"AB_offset.{ab}.{m}" for m in tm for ab in "AB"]
    missing = [k for k in needed if k not in sd]
    if missing:
        stray = [k for k in sd if k.startswith("module.")]
        raise CheckpointError(
            format_problems(f"{where} is not a T2L hypernetwork state dict", [f"missing key {k}" for k in missing]),
            hint="keys carry a 'module.' prefix on only some entries" if stray else "check that this is a hypermod.pt from SakanaAI/text-to-lora",
        )
    return args, adapter, list(tm), sd


def _sizes(sd: dict[str, torch.Tensor], tm: list[str], adapter: dict[str, Any], where: Path) -> tuple[dict[str, Any], list[str]]:
    """Every size the config needs, from the state dict's shapes: (sizes, problems that do not stop the reading)."""
    problems: list[str] = []
    dims: dict[str, list[int]] = {}
    ranks: set[int] = set()
    for m in tm:
        a, b = sd[f"AB_offset.A.{m}"], sd[f"AB_offset.B.{m}"]
        if a.dim() != 3 or b.dim() != 3:
            problems.append(f"AB_offset.A/B.{m} must be [n_layers, r, d_in] / [n_layers, d_out, r], got {tuple(a.shape)} / {tuple(b.shape)}")
            continue
        dims[m] = [int(a.shape[2]), int(b.shape[1])]
        ranks.update({int(a.shape[1]), int(b.shape[2])})
    if problems:
        raise CheckpointError(format_problems(f"{where} is inconsistent", problems))
    flat = [f"{k} {tuple(sd[k].shape)}" for k in _SIZE_KEYS if sd[k].dim() != 2]
    if flat:
        raise CheckpointError(format_problems(f"{where} is inconsistent", [f"{x} must be 2-D" for x in flat]))
    if len(ranks) != 1:
        raise CheckpointError(f"{where}: AB_offset tensors disagree on the rank ({sorted(ranks)})")
    r = ranks.pop()
    r_cfg = adapter.get("r", 8)
    if not isinstance(r_cfg, int) or r_cfg != r:
        problems.append(f"adapter_config.json r={show_value(r_cfg)} but the weights have rank {r}")
    latent = int(sd["mixer.1.weight"].shape[1])
    if latent % 4:
        raise CheckpointError(f"{where}: mixer width {latent} is not divisible by 4 (not a T2L hypernetwork)")
    sizes = {"dims": dims, "r": r, "emb_dim": int(sd["task_encoder.mlp.0.weight"].shape[1]), "latent": latent,
             "head_in": int(sd["mlp3.4.weight"].shape[0]), "n_layers": int(sd["layer_depth_encoder.0.weight"].shape[0])}
    return sizes, problems


def _cross_check(args: dict[str, Any], tm: list[str], sd: dict[str, torch.Tensor], sizes: dict[str, Any], variant: str) -> list[str]:
    """Where args.yaml, adapter_config.json and the weights disagree (each one line)."""
    problems: list[str] = []
    for name, key in (("hypernet_latent_size", "latent"), ("head_in_size", "head_in")):
        if args.get(name) is not None and args[name] != sizes[key]:
            problems.append(f"args.yaml {name}={show_value(args[name])} but the weights say {sizes[key]}")
    n_mod = int(sd["layer_type_encoder.0.weight"].shape[0])
    if n_mod != len(tm):
        problems.append(f"{n_mod} module types in layer_type_encoder but {len(tm)} target_modules in adapter_config.json")
    args_tm = args.get("target_modules")
    if isinstance(args_tm, list) and sorted(map(str, args_tm)) != sorted(tm):
        problems.append(f"args.yaml target_modules {show_value(args_tm)} differ from adapter_config.json {show_value(tm)}")
    n_layers, r, head_in = sizes["n_layers"], sizes["r"], sizes["head_in"]
    for m in tm:
        d_in, d_out = sizes["dims"][m]
        if any(int(t.shape[0]) != n_layers for t in (sd[f"AB_offset.A.{m}"], sd[f"AB_offset.B.{m}"])):
            problems.append(f"AB_offset.*.{m} covers {int(sd[f'AB_offset.A.{m}'].shape[0])} layers, layer_depth_encoder {n_layers}")
        w = sd.get(f"heads.{m}.weight")
        if w is None or w.dim() != 2:
            continue  # reported by the strict check
        want = _head_rows(variant, r, d_in, d_out)
        if int(w.shape[0]) != want or int(w.shape[1]) != head_in:
            fits = [v for v in ("L", "M", "S") if _head_rows(v, r, d_in, d_out) == int(w.shape[0])]
            problems.append(
                f"heads.{m}.weight is {list(w.shape)}; variant {variant} ({_variant_flags(variant)}) needs "
                f"[{want}, {head_in}]" + (f" - the shape fits variant {fits[0]} ({_variant_flags(fits[0])})" if fits else "")
            )
    return problems


def _build_config(folder: Path, args: dict[str, Any], adapter: dict[str, Any], tm: list[str], sd: dict[str, torch.Tensor],
                  sizes: dict[str, Any], variant: str, problems: list[str]) -> HyperNetConfig:
    """The `HyperNetConfig` of an official checkpoint (appends to `problems` what the strict check reports)."""
    task = str(args.get("training_task", "sft") or "sft")
    pred_z = bool(args.get("pred_z_score", False))
    factorized = bool(args.get("factorized", False)) if task == "recon" else True
    recon_stats = any(k.startswith(("mean_recon_target.", "std_recon_target.")) for k in sd)
    if task == "recon" and factorized and pred_z and not recon_stats:
        problems.append("a z-score reconstruction checkpoint needs mean_recon_target/std_recon_target, which are missing")
    try:
        delta_w_scaling = float(args.get("delta_w_scaling", 1e4) or 1e4)
        alpha = float(adapter.get("lora_alpha", 16))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{folder}: a number in args.yaml/adapter_config.json is invalid: {exc}") from None
    try:
        return HyperNetConfig(
            variant=variant,
            emb_dim=sizes["emb_dim"],
            latent=sizes["latent"],
            head_in=sizes["head_in"],
            n_layers=sizes["n_layers"],
            target_modules=list(tm),
            module_dims=sizes["dims"],
            r=sizes["r"],
            lora_alpha=alpha,
            use_rslora=bool(adapter.get("use_rslora", False)),
            head_bias=all(f"heads.{m}.bias" in sd for m in tm),
            learnable_pos_emb=bool(args.get("learnable_pos_emb", False)),
            training_task=task,
            pred_z_score=pred_z,
            factorized=factorized,
            delta_w_scaling=delta_w_scaling,
            ab_offset=True,
            recon_stats=recon_stats,
        )
    except ValueError as exc:
        raise CheckpointError(f"{folder}: inconsistent sizes or settings: {exc}") from None


def load_official(folder: Path) -> T2LCheckpoint:
    """Load an official folder as a `T2LCheckpoint` (strict; every problem listed at once)."""
    from t2lcli.console import warn

    cfg, args, adapter, sd, problems = config_from_official(folder)
    spec = encoder_spec_from_args(str(args["emb_model"]), cfg.emb_dim)
    if "gte-large" in spec.model.lower() and cfg.emb_dim != 1024:
        problems.append(f"task_encoder expects {cfg.emb_dim}-d embeddings but {spec.model} gives 1024-d")
    net: HyperLoRA = materialize(cfg, sd, str(folder / "hypermod.pt"), problems)
    if cfg.training_task == "recon":
        warn(
            "reconstruction checkpoint: its adapter_config.json was copied from an oracle LoRA, so the module order "
            f"{list(cfg.target_modules)} (layer-type indices) may not match training"
        )
    base = str(args.get("model_dir") or adapter.get("base_model_name_or_path") or "")
    block = {m: ("self_attn" if m in ATTN_MODULES else "mlp") for m in cfg.target_modules}
    d0 = cfg.module_dims[cfg.target_modules[0]][0]
    shape = ModelShape(
        "unknown", cfg.n_layers, d0,
        {m: ModuleShape(m, f"model.layers.{{l}}.{block[m]}.{m}", *cfg.module_dims[m]) for m in cfg.target_modules},
    )
    sha = tensors_sha256(folder / "hypermod.pt")
    prov = {
        "source": str(folder.resolve()),
        "source_format": "sakana-official",
        "hypermod_sha256": sha,
        "module_order": list(cfg.target_modules),
        "module_order_source": "adapter_config.json target_modules (file order)",
        "args": {k: args.get(k) for k in PROVENANCE_ARGS if k in args},
    }
    return T2LCheckpoint(net, spec, base, shape, folder, sha, "official", prov)
