"""T2L checkpoints: the native folder format (`t2l_config.json` + `hypernet.safetensors`) and dispatch to the
official SakanaAI format (`hypermod.pt` + `args.yaml` + `adapter_config.json`, see `official.py`).

Loading is strict and shape-checked; every problem is reported at once. Saving is atomic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from t2lcli import __version__
from t2lcli.engine.adapters import tensors_sha256
from t2lcli.engine.atomic import atomic_dir, check_readable
from t2lcli.engine.base_model import ModelShape
from t2lcli.engine.checkpoint_model import T2LCheckpoint, load_strict, materialize, state_problems  # noqa: F401  (re-exported)
from t2lcli.engine.encoder import EncoderSpec
from t2lcli.engine.hypernet import HyperLoRA, HyperNetConfig
from t2lcli.errors import CheckpointError, ConfigError, format_problems, show_value

FORMAT = "t2l-checkpoint"
FORMAT_VERSION = 1
CONFIG_NAME = "t2l_config.json"
WEIGHTS_NAME = "hypernet.safetensors"
SHIPPED = {"default": "default"}


def shipped_dir(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "checkpoints" / SHIPPED[name]


def resolve_checkpoint(spec: str | None) -> Path:
    """A registry name ('default'), a local folder, or a hub path `owner/repo/sub/folder`."""
    spec = spec or "default"
    if spec in SHIPPED:
        path = shipped_dir(spec)
        if not (path / CONFIG_NAME).is_file():
            raise CheckpointError(
                "no default checkpoint is shipped in this build of t2l",
                hint="pass --checkpoint PATH (a native t2l folder or an official SakanaAI folder)",
            )
        return path
    path = Path(spec).expanduser()
    check_readable(path, "checkpoint folder")
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"checkpoint must be a folder, got a file: {path}")
        return path
    if not spec.startswith((".", "/", "~")) and spec.count("/") >= 2 and "//" not in spec:
        return hub_checkpoint(spec)
    raise CheckpointError(f"checkpoint not found: {spec}", hint="pass a folder with t2l_config.json or hypermod.pt")


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() or (path / "hypermod.pt").is_file()


def hub_checkpoint(spec: str) -> Path:
    """`owner/repo/sub/folder` on the Hugging Face hub: the local HF cache first, else download only that folder.

    Raises:
        CheckpointError: offline (or the hub unreachable) and not cached, or the folder does not exist in the repo.
    """
    import os

    owner, repo, sub = spec.strip("/").split("/", 2)
    repo_id = f"{owner}/{repo}"
    patterns = [f"{sub}/*"]
    offline_hint = (
        f'on a connected machine: hf download {repo_id} --include "{sub}/*" --local-dir DIR, '
        f"then pass --checkpoint DIR/{sub}"
    )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        raise CheckpointError(f"cannot fetch {spec}: huggingface_hub is not installed", hint=offline_hint) from None
    try:
        snap = Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
        if _is_checkpoint_dir(snap / sub):
            return snap / sub
    except Exception:  # not in the local cache
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get("T2L_OFFLINE") == "1":
        raise CheckpointError(f"cannot download checkpoint {spec}: offline (HF_HUB_OFFLINE/T2L_OFFLINE) and not in the HF cache", hint=offline_hint)
    try:
        snap = Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as exc:
        name = type(exc).__name__
        detail = (str(exc).strip().splitlines() or [""])[0].removeprefix("Got: ")[:160]
        if name in ("RepositoryNotFoundError", "RevisionNotFoundError", "RemoteEntryNotFoundError", "GatedRepoError", "HFValidationError"):
            raise CheckpointError(f"cannot download checkpoint {spec}: {repo_id} was not found or is not accessible ({name})",
                                  hint="check the spelling: owner/repo/folder, e.g. SakanaAI/text-to-lora/trained_t2l/llama_8b_t2l") from None
        raise CheckpointError(f"cannot download checkpoint {spec}: the hub is unreachable ({name}: {detail})", hint=offline_hint) from None
    if not _is_checkpoint_dir(snap / sub):
        raise CheckpointError(
            f"{sub} in {repo_id} is not a T2L checkpoint folder (no hypermod.pt or {CONFIG_NAME})",
            hint="e.g. SakanaAI/text-to-lora/trained_t2l/llama_8b_t2l",
        )
    return snap / sub


def load_checkpoint(spec: str | Path | None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> T2LCheckpoint:
    """Load a native or official checkpoint (detected from the files present).

    Raises:
        CheckpointError: missing/corrupt files, unknown format, shape or key mismatches (all listed).
    """
    path = resolve_checkpoint(str(spec) if spec is not None else None)
    for p in (path / CONFIG_NAME, path / WEIGHTS_NAME):
        check_readable(p, "checkpoint file")
    if (path / CONFIG_NAME).is_file():
        ckpt = _load_native(path)
    elif (path / "hypermod.pt").is_file():
        from t2lcli.engine.official import load_official

        ckpt = load_official(path)
    else:
        raise CheckpointError(
            f"{path} is not a T2L checkpoint (no {CONFIG_NAME} and no hypermod.pt)",
            hint="a native folder has t2l_config.json + hypernet.safetensors; an official one hypermod.pt + args.yaml",
        )
    ckpt.hypernet.to(device=device, dtype=dtype).eval()
    return ckpt


def _load_native(path: Path) -> T2LCheckpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError, RecursionError) as exc:
        raise CheckpointError(f"{path / CONFIG_NAME} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / CONFIG_NAME} is not a t2l checkpoint config (format != {FORMAT})")
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path / CONFIG_NAME}: format_version must be an integer, got {show_value(version)}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format version {version} is newer than this t2l supports ({FORMAT_VERSION})",
            hint="upgrade t2l",
        )
    try:
        cfg = HyperNetConfig.from_dict(meta["hypernet"])
        enc = _encoder_spec(meta["encoder"])
        shape = ModelShape.from_dict(meta["model_shape"])
        problems = _shape_problems(shape, cfg)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path / CONFIG_NAME} is incomplete or invalid: {' '.join(str(exc).split())[:300]}") from None
    if problems:
        raise CheckpointError(format_problems(f"{path / CONFIG_NAME} is inconsistent", problems[:10]))
    wpath = path / WEIGHTS_NAME
    if not wpath.is_file():
        raise CheckpointError(f"missing {wpath}")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{wpath} is not a valid safetensors file ({str(exc).splitlines()[0] if str(exc) else 'unreadable'})") from None
    net = materialize(cfg, state, str(wpath))
    return T2LCheckpoint(
        net, enc, str(meta.get("base_model")), shape, path, tensors_sha256(wpath), "native", meta.get("training", {})
    )


_PATH_TEMPLATE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\.\{l\}(\.[A-Za-z0-9_]+)+$")


def _encoder_spec(data: Any) -> EncoderSpec:
    """The checkpoint's encoder section, type-checked (it comes from a file)."""
    if not isinstance(data, dict):
        raise ValueError(f"encoder: expected a mapping, got {type(data).__name__}")
    spec = EncoderSpec.from_dict(data)
    for name, default in EncoderSpec().to_dict().items():
        value = getattr(spec, name)
        if type(value) is not type(default):
            raise ValueError(f"encoder.{name} must be {type(default).__name__}, got {show_value(value)}")
    if spec.dim < 1 or spec.max_length < 1:
        raise ValueError("encoder.dim and encoder.max_length must be positive")
    if spec.pooling not in ("mean", "cls", "last") or spec.normalize not in ("l2_sqrt_dim", "l2", "none"):
        raise ValueError(f"encoder pooling/normalize unknown: {show_value(spec.pooling)}/{show_value(spec.normalize)}")
    return spec


def _shape_problems(shape: ModelShape, cfg: HyperNetConfig) -> list[str]:
    """The model shape must describe exactly the config's modules, with PEFT path templates `a.b.{l}.c.d`."""
    problems = []
    if shape.n_layers != cfg.n_layers:
        problems.append(f"model_shape has {shape.n_layers} layers, the hypernet {cfg.n_layers}")
    if sorted(shape.modules) != sorted(cfg.target_modules):
        problems.append(f"model_shape modules {sorted(shape.modules)} differ from target_modules {sorted(cfg.target_modules)}")
    for name, mod in shape.modules.items():
        if not isinstance(mod.path, str) or not _PATH_TEMPLATE.match(mod.path):
            problems.append(f"model_shape.modules.{name}.path {show_value(mod.path)} is not a module path such as model.layers.{{l}}.self_attn.q_proj")
        elif name in cfg.module_dims and [mod.d_in, mod.d_out] != cfg.module_dims[name]:
            problems.append(f"model_shape.modules.{name} is [{mod.d_in}, {mod.d_out}], the hypernet {cfg.module_dims[name]}")
    return problems


def save_checkpoint(
    ckpt: T2LCheckpoint, out_dir: Path | str, force: bool = False, dtype: torch.dtype | None = None, training: dict[str, Any] | None = None
) -> Path:
    """Write a native checkpoint folder atomically. All-zero frozen buffers are never written."""
    from t2lcli.engine.atomic import write_safetensors

    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.hypernet.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "hypernet": ckpt.config.to_dict(),
        "encoder": ckpt.encoder.to_dict(),
        "base_model": ckpt.base_model,
        "model_shape": ckpt.shape.to_dict(),
        "target_modules": list(ckpt.config.target_modules),
        "r": ckpt.config.r,
        "lora_alpha": ckpt.config.lora_alpha,
        "scaling": {
            "kind": "rslora" if ckpt.config.use_rslora else "lora",
            "value": ckpt.config.scaling,
            "contract": "generated A/B assume the runtime multiplies B@A by this value",
        },
        "weights_dtype": str(next(iter(state.values())).dtype).replace("torch.", ""),
        "training": training if training is not None else ckpt.provenance,
    }
    with atomic_dir(Path(out_dir), force=force) as tmp:
        write_safetensors(state, tmp / WEIGHTS_NAME)
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(out_dir)


def build_checkpoint(
    shape: ModelShape,
    encoder: EncoderSpec,
    base_model: str,
    variant: str = "L",
    latent: int = 128,
    head_in: int = 512,
    r: int = 8,
    lora_alpha: float = 16.0,
    seed: int = 0,
    **kwargs: Any,
) -> T2LCheckpoint:
    """A freshly initialised (bias-HyperInit) hypernetwork for a base model's shapes."""
    torch.manual_seed(seed)
    try:
        cfg = HyperNetConfig(
            variant=variant,
            emb_dim=encoder.dim,
            latent=latent,
            head_in=head_in,
            n_layers=shape.n_layers,
            target_modules=list(shape.modules),
            module_dims={m: [s.d_in, s.d_out] for m, s in shape.modules.items()},
            r=r,
            lora_alpha=lora_alpha,
            **kwargs,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid hypernetwork settings: {exc}", hint="check the recipe's hypernet section") from None
    return T2LCheckpoint(HyperLoRA(cfg), encoder, base_model, shape)
