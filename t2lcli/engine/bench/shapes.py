"""Random checkpoints of the official sizes (`--shapes`), cached under $T2L_HOME/bench, and `--clean`.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from t2lcli import console
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)

GTE_LARGE_PROXY = {  # gte-large-en-v1.5 sizes as a plain BERT (its GLU FFN 4096 has the params/FLOPs of a 6144 FFN)
    "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 6144,
    "vocab_size": 30528, "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
}


# ----------------------------------------------------------------------------------------------- shapes


def hypernet_config(shape: dict[str, Any], variant: str) -> Any:
    """The HyperNetConfig of the official checkpoint for these shapes (no weights)."""
    from t2lcli.engine.base_model import shape_from_config
    from t2lcli.engine.hypernet import HyperNetConfig

    hn = shape["hypernet"]
    ms = shape_from_config(shape["config"], hn["target_modules"])
    return HyperNetConfig(
        variant=variant, emb_dim=1024 if "gte" in shape["encoder"] else 384, latent=hn["latent"], head_in=hn["head_in"],
        n_layers=ms.n_layers, target_modules=list(hn["target_modules"]),
        module_dims={m: [s.d_in, s.d_out] for m, s in ms.modules.items()}, ab_offset=bool(hn.get("ab_offset")),
    )


def bench_home() -> Path:
    from t2lcli.models import t2l_home

    return t2l_home() / "bench"


def _encoder_folder(shape: dict[str, Any]) -> tuple[str, str, Any]:
    """(encoder spec model, note, EncoderSpec) for a shapes run; gte-large becomes a cached random proxy."""
    from t2lcli.engine.base_model import resolve_model
    from t2lcli.engine.encoder import EncoderSpec, encoder_spec_for

    if "gte" not in shape["encoder"]:
        return shape["encoder"], "the real encoder (shipped in a package)", encoder_spec_for(shape["encoder"])
    from t2lcli.engine.atomic import atomic_dir, file_lock
    from t2lcli.engine.bert import random_bert_folder

    target = bench_home() / "encoder-gte-large-proxy"
    with file_lock(bench_home() / ".encoder.lock"):
        if not (target / "model.safetensors").is_file():
            console.log(f"building a random gte-large-sized encoder in {target} (one time, ~1.7 GB)")
            tok = resolve_model("all-minilm-l6-v2", kind="encoder") / "tokenizer.json"
            with atomic_dir(target, force=True, cache=True) as tmp:
                random_bert_folder(tmp, GTE_LARGE_PROXY, tok)
    note = ("random BERT of gte-large-en-v1.5's size (24 x 1024, FFN 6144 ~ its GLU 4096; 434M params), "
            "bert-base-uncased WordPiece; the real gte runs remote code and is not available offline")
    return str(target), note, EncoderSpec(str(target), 1024, "cls", "l2_sqrt_dim", True, 512)


def build_shapes_checkpoint(name: str, variant: str) -> tuple[Path, dict[str, Any]]:
    """A native checkpoint of the official sizes for `name`, random weights, cached under $T2L_HOME/bench.

    Returns:
        (checkpoint folder, info with encoder note and build time)
    """
    from t2lcli.engine.atomic import file_lock
    from t2lcli.engine.base_model import shape_from_config
    from t2lcli.engine.checkpoint import T2LCheckpoint, save_checkpoint
    from t2lcli.engine.hypernet import HyperLoRA

    shape = load_shape(name)
    cfg = hypernet_config(shape, variant)
    enc_model, enc_note, spec = _encoder_folder(shape)
    target = bench_home() / f"ckpt-{name}-{variant}"
    info = {"encoder": shape["encoder"] if "gte" not in shape["encoder"] else "gte-large-en-v1.5 (random proxy)",
            "encoder_note": enc_note, "build_s": 0.0, "note": shape["note"]}
    with file_lock(bench_home() / f".ckpt-{name}-{variant}.lock"):
        if not (target / "t2l_config.json").is_file():
            console.log(f"building a random {variant} hypernetwork of the official {name} sizes in {target} (one time)")
            t0 = time.perf_counter()
            import torch

            torch.manual_seed(0)
            net = HyperLoRA(cfg)
            with torch.no_grad():  # random head weights so adapters differ per description (bias-HyperInit zeroes them)
                for head in net.heads.values():
                    weight = head.weight
                    assert isinstance(weight, torch.Tensor)
                    weight.uniform_(-1e-3, 1e-3)
            ms = shape_from_config(shape["config"], cfg.target_modules)
            ckpt = T2LCheckpoint(net, spec, shape["hub_id"], ms, provenance={"bench_shapes": name, "random": True})
            save_checkpoint(ckpt, target, force=True)
            info["build_s"] = round(time.perf_counter() - t0, 3)
    return target, info



def clean_cache() -> float:
    """Remove $T2L_HOME/bench; returns the GiB freed."""
    home = bench_home()
    if not home.exists():
        return 0.0
    size = sum(f.stat().st_size for f in home.rglob("*") if f.is_file())
    shutil.rmtree(home)
    return size / 2**30
