"""Train-step cost: a T2L SFT step vs a plain peft LoRA step on the same base, batch and sequence length.

    .venv/bin/python benchmarks/train_step.py [--base smollm2-135m-instruct] [--batch 8] [--seq 96] [--steps 5] [--contrastive]

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
    ap.add_argument("--contrastive", action="store_true", help="also time the description-contrastive pass (4 examples x 1 and x 3 negatives)")
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

    def scored(fac: dict, rows: torch.Tensor) -> torch.Tensor:
        per = {paths[m].format(l=layer): (a[:, layer], b[:, layer]) for m, (a, b) in fac.items() for layer in range(a.shape[1])}
        h = apply_factors(model, per, ckpt.config.scaling, dropout=0.05)
        try:
            return sample_loss(model(input_ids=ids[rows]).logits, labels[rows], 0.0)
        finally:
            h.remove()

    def t2l_step(examples: int = 0, negatives: int = 0) -> None:
        """examples > 0: the trainer's contrastive pass too (the first `examples` rows scored again under the next
        `negatives` rows' adapters, one forward), as `train.contrastive_examples` / `contrastive_negatives` run it."""
        fac = net(emb)
        loss = scored(fac, torch.arange(args.batch))
        if examples:
            wrong = torch.tensor([(j + o) % args.batch for o in range(1, negatives + 1) for j in range(examples)])
            loss = loss + scored({m: (a[wrong], b[wrong]) for m, (a, b) in fac.items()}, torch.arange(examples).repeat(negatives))
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

    kinds = {"t2l": (0, 0), "t2l_hinge_4x1": (4, 1), "t2l_infonce_4x3": (4, 3)} if args.contrastive else {"t2l": (0, 0)}
    times: dict[str, list[float]] = {**{k: [] for k in kinds}, "peft_lora": []}
    t2l_step()  # warm-up
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, use_rslora=True, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]))
    opt_p = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    peft_step()
    for _ in range(args.steps):
        with peft_model.disable_adapter():
            for kind, (examples, negatives) in kinds.items():
                t0 = time.perf_counter()
                t2l_step(examples, negatives)
                times[kind].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peft_step()
        times["peft_lora"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "base": args.base, "batch": args.batch, "seq": args.seq, "steps": args.steps, "threads": torch.get_num_threads(),
        "t2l_s_per_step": round(med["t2l"], 3), "peft_lora_s_per_step": round(med["peft_lora"], 3),
        "ratio": round(med["t2l"] / med["peft_lora"], 3), "t2l_steps_per_s": round(1 / med["t2l"], 3),
        **{f"{k}_s_per_step": round(med[k], 3) for k in kinds if k != "t2l"},
        "hypernet_params": net.n_params(), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "all_times": {k: [round(x, 3) for x in v] for k, v in times.items()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
