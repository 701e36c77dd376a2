"""Train-step cost: a T2L SFT step vs a plain peft LoRA step on the same base, batch and sequence length.

    .venv/bin/python benchmarks/train_step.py [--base smollm2-135m-instruct] [--batch 8] [--seq 96] [--steps 5]

Both steps run forward + backward + AdamW on the same random token batch; the two kinds are interleaved so that
machine load affects them alike. Prints medians (s/step), the ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=96)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    from t2lcli.engine.base_model import load_base_model, shape_from_config
    from t2lcli.engine.checkpoint import build_checkpoint
    from t2lcli.engine.encoder import encoder_spec_for
    from t2lcli.engine.lora_hooks import apply_factors
    from t2lcli.engine.train import sample_loss
    from t2lcli.hw_profiles import ComponentSettings

    model, _ = load_base_model(args.base, ComponentSettings())
    for p in model.parameters():
        p.requires_grad_(False)
    shape = shape_from_config(model.config.to_dict(), ["q_proj", "v_proj"])
    ckpt = build_checkpoint(shape, encoder_spec_for("all-minilm-l6-v2"), args.base)
    net = ckpt.hypernet.train()
    opt_h = torch.optim.AdamW(net.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size - 1, (args.batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq // 2] = -100
    emb = torch.randn(args.batch, 384, generator=g)
    paths = {m: s.path for m, s in shape.modules.items()}

    def t2l_step() -> None:
        fac = net(emb)
        per = {paths[m].format(l=layer): (a[:, layer], b[:, layer]) for m, (a, b) in fac.items() for layer in range(a.shape[1])}
        h = apply_factors(model, per, ckpt.config.scaling, dropout=0.05)
        try:
            loss = sample_loss(model(input_ids=ids).logits, labels, 0.0)
        finally:
            h.remove()
        opt_h.zero_grad()
        loss.backward()
        opt_h.step()

    peft_model = None
    opt_p = None

    def peft_step() -> None:
        loss = sample_loss(peft_model(input_ids=ids).logits, labels, 0.0)
        opt_p.zero_grad()
        loss.backward()
        opt_p.step()

    times: dict[str, list[float]] = {"t2l": [], "peft_lora": []}
    t2l_step()  # warm-up
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, use_rslora=True, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    opt_p = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    peft_step()
    for _ in range(args.steps):
        with peft_model.disable_adapter():
            t0 = time.perf_counter()
            t2l_step()
            times["t2l"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peft_step()
        times["peft_lora"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "base": args.base, "batch": args.batch, "seq": args.seq, "steps": args.steps, "threads": torch.get_num_threads(),
        "t2l_s_per_step": round(med["t2l"], 3), "peft_lora_s_per_step": round(med["peft_lora"], 3),
        "ratio": round(med["t2l"] / med["peft_lora"], 3), "t2l_steps_per_s": round(1 / med["t2l"], 3),
        "hypernet_params": net.n_params(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "all_times": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
