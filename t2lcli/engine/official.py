"""Official SakanaAI T2L checkpoints: `hypermod.pt` (weights_only unpickling) + `args.yaml` + `adapter_config.json`.

Loader spec: ../shared/docs/t2l-reference.md ("Loader spec"). Module order = `target_modules` in adapter_config.json
file order. Sizes come from the state-dict shapes and are cross-checked against args.yaml. No base weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from t2lcli.engine.adapters import tensors_sha256
from t2lcli.engine.base_model import ModelShape, ModuleShape
from t2lcli.engine.encoder import EncoderSpec, encoder_spec_for
from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig
from t2lcli.errors import CheckpointError, format_problems

_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
UNSUPPORTED_ENCODERS = ("discrete", "vq", "softmax")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"missing {path.name} in {path.parent}", hint="an official folder has hypermod.pt, args.yaml and adapter_config.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def _read_args(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise CheckpointError(f"missing args.yaml in {path.parent}", hint="an official folder has hypermod.pt, args.yaml and adapter_config.json")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a YAML mapping")
    return data


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """`torch.load(weights_only=True)`: a pickle that tries to run code is refused, nothing executed."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a torch zip checkpoint (truncated or another format)")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{path} was refused: it contains objects other than tensors, which could run code ({first[:160]})",
            hint="t2l only loads plain tensor dicts from .pt files",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{path} is not a flat dict of tensors")
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def config_from_official(folder: Path) -> tuple[HyperNetConfig, dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    args = _read_args(folder / "args.yaml")
    adapter = _read_json(folder / "adapter_config.json")
    sd = read_state_dict(folder / "hypermod.pt")
    problems: list[str] = []
    enc_type = args.get("encoder_type", "linear")
    if enc_type in UNSUPPORTED_ENCODERS or enc_type != "linear":
        raise CheckpointError(f"encoder_type '{enc_type}' is not supported (only 'linear')")
    if args.get("use_one_hot_task_emb"):
        raise CheckpointError("use_one_hot_task_emb checkpoints take task ids, not text descriptions; not supported")
    if not args.get("emb_model"):
        raise CheckpointError(
            "this checkpoint embeds descriptions with the base LLM itself (empty emb_model), which needs the base weights",
            hint="not supported: t2l never loads the base to generate",
        )
    tm = adapter.get("target_modules")
    if not isinstance(tm, list) or not tm or not all(isinstance(m, str) for m in tm):
        raise CheckpointError("adapter_config.json target_modules must be a non-empty list (its order defines the module types)")
    if str(adapter.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {adapter.get('peft_type')} is not LORA")
    r = int(adapter.get("r", 8))
    for key in ("task_encoder.mlp.0.weight", "layer_depth_encoder.0.weight", "layer_type_encoder.0.weight", "mixer.1.weight", "mlp3.4.weight"):
        if key not in sd:
            problems.append(f"missing key {key}")
    dims: dict[str, list[int]] = {}
    for m in tm:
        a, b = sd.get(f"AB_offset.A.{m}"), sd.get(f"AB_offset.B.{m}")
        if a is None or b is None:
            problems.append(f"missing AB_offset.A/B.{m} (needed for the module shapes)")
            continue
        dims[m] = [int(a.shape[2]), int(b.shape[1])]
    if problems:
        raise CheckpointError(format_problems(f"{folder / 'hypermod.pt'} is not a T2L hypernetwork", problems))
    shared, autoreg = bool(args.get("shared_AB_head", False)), bool(args.get("autoreg_gen", False))
    if autoreg and not shared:
        raise CheckpointError("autoreg_gen without shared_AB_head is not supported")
    variant = "S" if autoreg else ("M" if shared else "L")
    latent = int(sd["mixer.1.weight"].shape[1])
    head_in = int(sd["mlp3.4.weight"].shape[0])
    for name, derived in (("hypernet_latent_size", latent), ("head_in_size", head_in)):
        if name in args and args[name] is not None and int(args[name]) != derived:
            problems.append(f"args.yaml {name}={args[name]} but the weights say {derived}")
    n_mod = int(sd["layer_type_encoder.0.weight"].shape[0])
    if n_mod != len(tm):
        problems.append(f"{n_mod} module types in the weights but {len(tm)} target_modules")
    task = str(args.get("training_task", "sft"))
    if problems:
        raise CheckpointError(format_problems(f"{folder} is inconsistent", problems))
    cfg = HyperNetConfig(
        variant=variant,
        emb_dim=int(sd["task_encoder.mlp.0.weight"].shape[1]),
        latent=latent,
        head_in=head_in,
        n_layers=int(sd["layer_depth_encoder.0.weight"].shape[0]),
        target_modules=list(tm),
        module_dims=dims,
        r=r,
        lora_alpha=float(adapter.get("lora_alpha", 16)),
        use_rslora=bool(adapter.get("use_rslora", True)),
        head_bias=all(f"heads.{m}.bias" in sd for m in tm),
        learnable_pos_emb=bool(args.get("learnable_pos_emb", False)),
        training_task=task,
        pred_z_score=bool(args.get("pred_z_score", False)),
        factorized=bool(args.get("factorized", False)) if task == "recon" else True,
        delta_w_scaling=float(args.get("delta_w_scaling", 1e4) or 1e4),
        ab_offset=True,
        recon_stats=any(k.startswith("mean_recon_target.") for k in sd),
    )
    return cfg, args, adapter, sd


def load_official(folder: Path) -> Any:
    from t2lcli.console import warn
    from t2lcli.engine.checkpoint import T2LCheckpoint, load_strict

    cfg, args, adapter, sd = config_from_official(folder)
    if cfg.training_task == "recon":
        warn("reconstruction checkpoint: its module order comes from a copied oracle adapter_config.json and may not match training")
    net = HyperLoRA(cfg)
    load_strict(net, sd, str(folder / "hypermod.pt"))
    emb_model = str(args.get("emb_model"))
    spec: EncoderSpec = encoder_spec_for(emb_model) if ("gte" in emb_model.lower() or "minilm" in emb_model.lower()) else EncoderSpec(emb_model, cfg.emb_dim, "cls")
    spec.dim = cfg.emb_dim
    base = str(args.get("model_dir") or adapter.get("base_model_name_or_path") or "")
    block = {m: ("self_attn" if m in _ATTN else "mlp") for m in cfg.target_modules}
    shape = ModelShape(
        "unknown", cfg.n_layers, cfg.module_dims[cfg.target_modules[0]][0],
        {m: ModuleShape(m, f"model.layers.{{l}}.{block[m]}.{m}", *cfg.module_dims[m]) for m in cfg.target_modules},
    )
    prov = {"source": str(folder), "source_format": "sakana-official", "hypermod_sha256": tensors_sha256(folder / "hypermod.pt")}
    return T2LCheckpoint(net, spec, base, shape, folder, prov["hypermod_sha256"], "official", prov)
