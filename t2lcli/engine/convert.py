"""`t2l convert`: any checkpoint t2l can load (official SakanaAI or native) -> the native format.

The native folder is `t2l_config.json` + `hypernet.safetensors`: no pickle, every size and the module order explicit,
provenance recorded (source folder, sha256 of `hypermod.pt`, the relevant args.yaml fields), optional bf16.
Frozen buffer groups that cannot change the generated LoRA are dropped (about 10.2M floats for Llama/Mistral):
  * `AB_offset` when it is all zero (or unused: non-factorized reconstruction checkpoints);
  * `mean_recon_target` / `std_recon_target` unless the forward pass uses them (factorized z-score reconstruction);
    the released SFT checkpoints never use them.
Dropping is exact: fp32 generation from the converted folder is byte-identical to the source.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from t2lcli import __version__
from t2lcli.dtypes import DTYPE_SPELLINGS
from t2lcli.engine.atomic import check_output_free
from t2lcli.engine.checkpoint import CONFIG_NAME, WEIGHTS_NAME, T2LCheckpoint, load_checkpoint, materialize, save_checkpoint
from t2lcli.engine.hypernet import HyperNetConfig
from t2lcli.errors import InputError

# the dtypes a converted checkpoint may be stored in (every spelling of t2lcli.dtypes; no float16: its range is too small)
DTYPES = {k: getattr(torch, v) for k, v in DTYPE_SPELLINGS.items() if v != "float16"}


def _offset_used(cfg: HyperNetConfig) -> bool:
    return cfg.training_task != "recon" or cfg.factorized


def _stats_used(cfg: HyperNetConfig) -> bool:
    return cfg.training_task == "recon" and cfg.factorized and cfg.pred_z_score


def droppable_buffers(cfg: HyperNetConfig, state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Buffer groups (state-dict prefixes) that do not affect generation -> why."""
    out: dict[str, str] = {}
    if cfg.ab_offset:
        vals = [v for k, v in state.items() if k.startswith("AB_offset.")]
        if not _offset_used(cfg):
            out["AB_offset"] = "unused (non-factorized reconstruction checkpoint)"
        elif all(not bool(v.any()) for v in vals):
            out["AB_offset"] = "all zero"
    if cfg.recon_stats and not _stats_used(cfg):
        zero = all(not bool(v.any()) for k, v in state.items() if k.startswith(("mean_recon_target.", "std_recon_target.")))
        why = f"unused by {cfg.training_task} generation" + (", all zero" if zero else "")
        out["mean_recon_target"] = out["std_recon_target"] = why
    return out


def convert_checkpoint(source: str, output: Path, dtype: str = "fp32", force: bool = False) -> dict[str, Any]:
    """Convert `source` (folder or hub path) into a native checkpoint folder at `output` (atomic).

    Returns a summary: paths, variant, dtype, parameters, dropped buffer groups, sizes, provenance.

    Raises:
        OutputExistsError: `output` exists and `force` is False (checked before anything is loaded).
        CheckpointError: the source cannot be loaded (see `load_checkpoint`).
        InputError: an unknown dtype.
    """
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}'", hint="use fp32 or bf16")
    output = Path(output)
    check_output_free(output, force)
    ckpt = load_checkpoint(source)
    if ckpt.path is not None and output.resolve() == Path(ckpt.path).resolve():
        raise InputError("the output folder is the source folder", hint="choose another -o")
    cfg = ckpt.config
    state = ckpt.hypernet.state_dict()
    dropped = droppable_buffers(cfg, state)
    new_cfg = replace(
        cfg,
        ab_offset=cfg.ab_offset and "AB_offset" not in dropped,
        recon_stats=cfg.recon_stats and "mean_recon_target" not in dropped,
        target_modules=list(cfg.target_modules),
        module_dims={k: list(v) for k, v in cfg.module_dims.items()},
    )
    kept = {k: v for k, v in state.items() if k.split(".", 1)[0] not in dropped}
    net = materialize(new_cfg, kept, str(ckpt.path))
    n_dropped = sum(v.numel() for k, v in state.items() if k.split(".", 1)[0] in dropped)
    prov = dict(ckpt.provenance)
    if ckpt.format != "official":
        # a native source keeps its training provenance at the top level (what `t2l inspect` and tests read);
        # the conversion is recorded beside it. The source path is recorded as given (no absolute local path).
        conv_keys = {"source", "source_format", "source_sha256", "source_training", "hypermod_sha256", "converted_by",
                     "converted_dtype", "dropped_buffers", "dropped_values", "previous_conversion"}
        prov = {**{k: v for k, v in ckpt.provenance.items() if k not in conv_keys},
                "source": source, "source_format": ckpt.format, "source_sha256": ckpt.sha256}
        earlier = {k: v for k, v in ckpt.provenance.items() if k in conv_keys}
        if earlier:  # the source was itself converted (e.g. official -> native fp32 -> bf16)
            prov["previous_conversion"] = earlier
    prov.update({
        "converted_by": f"t2l {__version__}",
        "converted_dtype": str(DTYPES[dtype]).replace("torch.", ""),
        "dropped_buffers": dropped,
        "dropped_values": n_dropped,
    })
    native = T2LCheckpoint(net, ckpt.encoder, ckpt.base_model, ckpt.shape, None, "", "native", prov)
    save_checkpoint(native, output, force=force, dtype=DTYPES[dtype], training=prov)
    from t2lcli.engine.adapters import tensors_sha256

    src_file = Path(ckpt.path) / ("hypermod.pt" if ckpt.format == "official" else WEIGHTS_NAME) if ckpt.path else None
    return {
        "path": str(output),
        "source": prov.get("source"),
        "source_format": ckpt.format,
        "source_sha256": prov.get("hypermod_sha256") or prov.get("source_sha256"),
        "variant": cfg.variant,
        "target_modules": list(cfg.target_modules),
        "dtype": prov["converted_dtype"],
        "parameters": net.n_params(),
        "dropped_buffers": dropped,
        "dropped_values": n_dropped,
        "source_bytes": src_file.stat().st_size if src_file and src_file.is_file() else None,
        "bytes": (output / WEIGHTS_NAME).stat().st_size + (output / CONFIG_NAME).stat().st_size,
        "sha256": tensors_sha256(output / WEIGHTS_NAME),
    }
