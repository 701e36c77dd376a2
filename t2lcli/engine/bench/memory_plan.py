"""`t2l bench --plan`: a profile's memory budget for a base's shapes, and (`--measure`, CUDA) the measured peak.
"""

from __future__ import annotations

import tempfile
from typing import Any

from t2lcli.engine.bench.baselines import base_param_counts
from t2lcli.engine.bench.request import DESCRIPTIONS
from t2lcli.engine.bench.shapes import build_shapes_checkpoint, hypernet_config
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import T2LError
from t2lcli.hardware import Profile

# ----------------------------------------------------------------------------------------------- memory plan

GIB = 2**30
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2}


def plan_memory(shape_name: str, profile: Profile, context: int = 2048, batch: int | None = None, variant: str = "L") -> dict[str, Any]:
    """GPU memory budget of a profile for a base of these shapes, the hypernetwork and the encoder.

    Generation workload: `batch` sequences of `context` tokens prefilled with the adapter applied, KV cache kept,
    logits for the last position only (as `generate` does). Returns lines (GiB), total, usable and fits.
    """
    from t2lcli.engine.hypernet import count_params_formula

    shape = load_shape(shape_name)
    cfg = shape["config"]
    counts = base_param_counts(cfg)
    b = batch or profile.base.batch_size
    base_dt = _BYTES.get(profile.base.dtype, 2)
    q = profile.base.quantization
    lines: list[dict[str, Any]] = []

    def add(item: str, nbytes: float, detail: str, on_gpu: bool = True) -> None:
        lines.append({"item": item, "gib": round(nbytes / GIB, 3) if on_gpu else 0.0, "detail": detail,
                      **({} if on_gpu else {"host_gib": round(nbytes / GIB, 3)})})

    on_gpu = profile.base.device.startswith(("cuda", "auto"))
    other = counts["embed"] + counts["lm_head"] + counts["norms"]
    if q == "none":
        add("base weights", counts["total"] * base_dt, f"{counts['total'] / 1e9:.2f}B params x {base_dt} B ({profile.base.dtype})", on_gpu)
    else:
        per = 1.0 if q == "8bit" else 0.5625  # nf4 0.5 B + one fp32 absmax per 64 weights
        add(f"base decoder linears ({q})", counts["linears"] * per, f"{counts['linears'] / 1e9:.2f}B params x {per:g} B", on_gpu)
        add("base embeddings/lm_head/norms", other * base_dt, f"{other / 1e9:.2f}B params x {base_dt} B (not quantized)", on_gpu)
    hcfg = hypernet_config(shape, variant)
    hparams = count_params_formula(hcfg)
    zero = 0
    if hcfg.ab_offset:
        zero = sum(hcfg.n_layers * hcfg.r * (d_in + d_out) for d_in, d_out in hcfg.module_dims.values())
    hdt = _BYTES.get(profile.hypernet.dtype, 4)
    add("hypernetwork", (hparams + zero) * hdt,
        f"{variant} {hcfg.latent}/{hcfg.head_in}: {hparams / 1e6:.2f}M params (+{zero / 1e6:.2f}M zero offsets) x {hdt} B",
        profile.hypernet.device.startswith(("cuda", "auto")))
    enc_params = 434_000_000 if "gte" in shape["encoder"] else 22_700_000
    edt = _BYTES.get(profile.encoder.dtype, 2 if profile.encoder.device.startswith("cuda") else 4)  # auto: bf16 on CUDA, at most fp32
    add("text encoder", enc_params * edt, f"{shape['encoder']}: {enc_params / 1e6:.0f}M params x {edt} B ({profile.encoder.device})",
        profile.encoder.device.startswith(("cuda", "auto")))
    h, nh = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    nkv, hd = int(cfg.get("num_key_value_heads") or nh), int(cfg.get("head_dim") or h // nh)
    act_dt = 2 if q != "none" else base_dt
    per_token = 2 * counts["n_layers"] * nkv * hd * act_dt
    add("KV cache", per_token * b * context, f"{per_token // 1024} KiB/token x batch {b} x {context} tokens", on_gpu)
    inter = int(cfg["intermediate_size"])
    act = b * context * (3 * inter + 2 * h) * act_dt
    add("prefill activations", act, f"batch {b} x {context} x (3 x {inter} MLP + 2 x {h}) x {act_dt} B", on_gpu)
    add("logits (last position)", b * int(cfg["vocab_size"]) * 4, f"batch {b} x {cfg['vocab_size']} x 4 B", on_gpu)
    if on_gpu:  # a CPU profile has no CUDA context: no GPU rows at all
        add("CUDA context + allocator slack", 0.8 * GIB, "measured 0.5-0.8 GiB on recent drivers", on_gpu)
    total = sum(line["gib"] for line in lines)
    budget = profile.memory_budget_gb
    usable = max(0.0, budget - 1.0) if budget else None
    return {
        "schema": "t2l-bench-plan/1", "shapes": shape_name, "profile": profile.name, "context": context, "batch": b, "lines": lines,
        "total_gib": round(total, 2), "budget_gib": budget or None, "usable_gib": usable,
        "fits": None if usable is None else total <= usable,
        "host_gib": round(sum(line.get("host_gib", 0.0) for line in lines), 2),
        "gpu": any("host_gib" not in line for line in lines),
    }


def default_plan_shapes(profile: Profile) -> str:
    """The model a profile is designed for: the GPU profiles size Llama-3.1-8B, the CPU profile the embedded SmolLM2."""
    on_gpu = profile.base.device.startswith(("cuda", "auto"))
    return "llama-3.1-8b" if on_gpu and profile.memory_budget_gb >= 16 else "smollm2-135m"


def measure_memory(shape_name: str, profile: Profile, context: int = 2048, batch: int | None = None) -> dict[str, Any]:
    """On CUDA: load the real-shaped random base with the profile's settings, the hypernetwork and encoder, generate an
    adapter, apply it and run a prefill forward; returns the measured peak next to the plan.

    Raises:
        T2LError: no CUDA, or the profile quantizes without bitsandbytes.
    """
    import torch

    if not torch.cuda.is_available():
        raise T2LError("--measure needs a CUDA GPU; this machine has none", hint="drop --measure to see the plan only")
    from transformers import AutoConfig, AutoModelForCausalLM

    from t2lcli.engine.base_model import quantization_config, torch_dtype
    from t2lcli.engine.generate import Generator
    from t2lcli.engine.lora_hooks import apply_adapter

    plan = plan_memory(shape_name, profile, context, batch)
    b = plan["batch"]
    shape = load_shape(shape_name)
    cfg = {k: v for k, v in shape["config"].items() if k not in ("torch_dtype", "architectures")}
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    free0, total = torch.cuda.mem_get_info()
    torch.cuda.reset_peak_memory_stats()
    dtype = torch_dtype(profile.base.dtype)
    qconf = quantization_config(profile.base)
    if qconf is None:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype)
    else:  # quantized: random weights on the CPU, then quantized onto the GPU by a save/load round trip
        with tempfile.TemporaryDirectory() as tmp:
            AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype).save_pretrained(tmp)
            model = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, quantization_config=qconf, device_map="cuda")
    model.eval()
    path, _ = build_shapes_checkpoint(shape_name, "L")
    gen = Generator.load(str(path), device=profile.hypernet.device, dtype=profile.hypernet.dtype, encoder_device=profile.encoder.device,
                         encoder_dtype=profile.encoder.dtype)  # the encoder in the profile's dtype, as the plan counts it
    adapters = gen.generate([DESCRIPTIONS[0]])
    assert isinstance(adapters, list)
    adapter = adapters[0]
    ids = torch.randint(0, int(cfg["vocab_size"]), (b, context), device="cuda")
    with torch.no_grad(), apply_adapter(model, adapter):
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / GIB
    free1, _ = torch.cuda.mem_get_info()
    planned = plan["total_gib"] - next((line["gib"] for line in plan["lines"] if line["item"].startswith("CUDA context")), 0.0)
    return {**plan, "measured_peak_allocated_gib": round(peak, 2), "planned_without_context_gib": round(planned, 2),
            "relative_error": round((planned - peak) / peak, 3), "device_used_gib": round((total - free1) / GIB, 2),
            "gpu": torch.cuda.get_device_name(0), "baseline_used_gib": round((total - free0) / GIB, 2)}
