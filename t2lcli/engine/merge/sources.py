"""Where a merge's adapter comes from: compatible adapter folders, or descriptions mixed in the hypernetwork's task space."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from t2lcli import registry
from t2lcli.engine.adapters import WEIGHTS_NAME, Adapter, peft_config, tensors_sha256
from t2lcli.errors import InputError, ShapeMismatchError

if TYPE_CHECKING:
    from t2lcli.hw_profiles import Profile

MIX_SPACE = "task-encoder output z (hypernet.encode), weights normalised to sum 1"


def _base_key(name: str | None) -> str | None:
    """A base model name as the registry knows it (so aliases compare equal), else the name as given."""
    if not name:
        return None
    entry = registry.lookup(name)
    return entry.name if entry is not None else str(name).rstrip("/")


def check_compatible(adapters: list[Adapter], names: list[str], base_model: str | None) -> str | None:
    """Refuse different bases, target modules, layers or shapes. Returns the base name to record."""
    bases = [_base_key(a.config.get("base_model_name_or_path")) for a in adapters]
    if base_model is None and len(set(bases)) > 1:
        listed = "; ".join(f"{n} -> {b}" for n, b in zip(names, bases, strict=True))
        raise ShapeMismatchError(
            f"the adapters were made for different base models ({listed})",
            hint="combine adapters of one base; if these names denote the same model, pass --base-model NAME",
        )
    mods = [sorted(a.modules()) for a in adapters]
    if any(m != mods[0] for m in mods[1:]):
        listed = "; ".join(f"{n}: {','.join(m)}" for n, m in zip(names, mods, strict=True))
        raise ShapeMismatchError(f"the adapters target different modules ({listed})", hint="combine adapters with the same target_modules")
    ref = adapters[0]
    ref_shapes = {p: (ref.tensors[f"{p}.lora_B.weight"].shape[0], ref.tensors[f"{p}.lora_A.weight"].shape[1]) for p in ref.prefixes()}
    for a, n in zip(adapters[1:], names[1:], strict=True):
        shapes = {p: (a.tensors[f"{p}.lora_B.weight"].shape[0], a.tensors[f"{p}.lora_A.weight"].shape[1]) for p in a.prefixes()}
        if set(shapes) != set(ref_shapes):
            diff = sorted(set(shapes) ^ set(ref_shapes))
            raise ShapeMismatchError(f"{n} and {names[0]} adapt different layers (e.g. {diff[0]})", hint="combine adapters of one base model")
        bad = [p for p in shapes if shapes[p] != ref_shapes[p]]
        if bad:
            raise ShapeMismatchError(
                f"{n} and {names[0]} have different shapes at {bad[0]}: {shapes[bad[0]]} vs {ref_shapes[bad[0]]} (different base models)",
                hint="combine adapters of one base model",
            )
    return base_model or ref.config.get("base_model_name_or_path")


def mix_descriptions(
    descriptions: list[str], weights: list[float], checkpoint: str | None, profile: Profile, base_model: str | None = None,
    trust_remote_code: bool = False,
) -> Adapter:
    """One adapter from a weighted average of the descriptions' task codes z = hypernet.encode(embedding).

    z is the hypernetwork's own task representation (the LayerNorm output of its task encoder), which every layer and
    module head consumes; the raw sentence embeddings are unit vectors whose average leaves the sphere the encoder was
    trained on. Weights are normalised to sum to 1, so `--weights 1,0` reproduces the first description exactly.
    """
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise InputError("description weights must be >= 0 with a positive total (they are normalised to sum to 1)")
    from t2lcli.engine.generate import Generator, check_base_matches
    from t2lcli.engine.hypernet import lora_state_dict

    gen = Generator.load(
        checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype, encoder_device=profile.encoder.device,
        trust_remote_code=trust_remote_code, encoder_dtype=profile.encoder.dtype,
    )
    check_base_matches(gen.ckpt, base_model)
    emb = gen.embed(descriptions)
    net = gen.ckpt.hypernet
    dtype = next(net.parameters()).dtype
    total = sum(weights)
    w = torch.tensor([x / total for x in weights], dtype=torch.float32)
    with torch.no_grad():
        z = net.encode(emb.to(gen.device, dtype)).float()
        z_mix = (w.to(z.device)[:, None] * z).sum(0, keepdim=True).to(dtype)
        fac = {m: tuple(t.float().cpu() for t in net.generate_module(z_mix, m)) for m in net.config.target_modules}
    paths = {m: s.path for m, s in gen.ckpt.shape.modules.items()}
    c = gen.ckpt.config
    config = peft_config(c.r, c.lora_alpha, list(c.target_modules), gen.ckpt.base_model, use_rslora=True)
    label = " + ".join(f"{x / total:.3g}×“{d}”" for x, d in zip(weights, descriptions, strict=True) if x)
    meta = {
        "description": f"mix of {label}",
        "descriptions": list(descriptions),
        "weights": [x / total for x in weights],
        "mix_space": MIX_SPACE,
        "scaling": "rslora",
        "checkpoint": str(gen.ckpt.path) if gen.ckpt.path else None,
        "checkpoint_sha256": gen.ckpt.sha256,
        "encoder": gen.ckpt.encoder.model,
    }
    return Adapter(config, lora_state_dict(paths, fac, 0), meta)  # type: ignore[arg-type]


def source_info(path: str, adapter: Adapter, weight: float | None = None) -> dict[str, Any]:
    """What the provenance records about one source adapter folder."""
    wfile = Path(path) / WEIGHTS_NAME
    return {
        "path": str(Path(path).resolve()),
        "description": adapter.meta.get("description"),
        "r": adapter.r,
        "lora_alpha": adapter.config.get("lora_alpha"),
        "use_rslora": bool(adapter.config.get("use_rslora")),
        "effective_scale": round(adapter.scaling, 8),
        "weight": weight,
        "sha256": tensors_sha256(wfile) if wfile.is_file() else None,
    }
