"""Where does the default checkpoint's task specificity go? A ΔW-space analysis (no base model, no task data).

Run from the repository root, with ../shared beside the checkout:
    .venv/bin/python tools/specificity.py [--checkpoint default] [--new-tasks 40] -o results/specificity.json

For three groups of SNI tasks - tasks the checkpoint trained on ("seen"), the recipe's held-out tasks, and tasks that
are in ../shared/data/sni but neither trained on nor held out ("new", the 242 tasks added after the default was
trained) - it makes adapters from five descriptions per task that training never used (descriptions 150..154), and
reports:
  - the mean cosine of ΔW = B·A between adapters of the same task and of different tasks, raw and mean-centred
    (the bias-HyperInit part every adapter shares dominates the raw figure);
  - top-1 retrieval: how often an adapter's nearest other adapter (centred) belongs to its own task;
  - how far each task's descriptions are from the nearest training task (cosine of mean description embeddings),
    and whether that distance predicts the same-minus-different gap;
  - what a random or empty-of-content description gives: its ΔW norm and its centred cosine to the task adapters;
  - per-layer and per-module norms of ΔW and the share of it that differs between adapters.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RANDOM_DESCRIPTIONS = [
    "purple elephant lamp quietly seventeen under the marble",
    "Do the task.",
    "zxq vorp lemniscate hollow banana fortnight",
    "This is a description.",
    "The weather in Lisbon was mild in March of 1987.",
]


def delta_gram(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """G[i, j] = <ΔW_i, ΔW_j>_F over all modules and layers (float64), and per (module) the per-layer mean norm."""
    n = next(iter(factors.values()))[0].shape[0]
    g = torch.zeros(n, n, dtype=torch.float64)
    per_layer: dict[str, list[float]] = {}
    for m, (a, b) in factors.items():
        norms = []
        for layer in range(a.shape[1]):
            al, bl = a[:, layer].double(), b[:, layer].double()  # [n, r, din], [n, dout, r]
            btb = torch.einsum("nor,mos->nmrs", bl, bl)
            aat = torch.einsum("nrd,msd->nmrs", al, al)
            gl = (btb * aat).sum((2, 3))
            g += gl
            norms.append(float(gl.diagonal().clamp(min=0).sqrt().mean()))
        per_layer[m] = norms
    return g, per_layer


def cosine(g: torch.Tensor) -> torch.Tensor:
    d = g.diagonal().clamp(min=0).sqrt()
    return g / (d[:, None] * d[None, :]).clamp(min=1e-30)


def center(g: torch.Tensor) -> torch.Tensor:
    n = g.shape[0]
    h = torch.eye(n, dtype=g.dtype) - 1.0 / n
    return h @ g @ h


def group_stats(cos: torch.Tensor, labels: list[str], idx: list[int]) -> dict[str, float]:
    same, diff, hits = [], [], 0
    for i in idx:
        row = [(float(cos[i, j]), labels[j]) for j in idx if j != i]
        best = max(row)[1]
        hits += best == labels[i]
        for j in idx:
            if j > i:
                (same if labels[i] == labels[j] else diff).append(float(cos[i, j]))
    return {"same": round(statistics.mean(same), 4), "different": round(statistics.mean(diff), 4),
            "gap": round(statistics.mean(same) - statistics.mean(diff), 4), "top1_same_task": round(hits / len(idx), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--seen-tasks", type=int, default=20)
    ap.add_argument("--new-tasks", type=int, default=40)
    ap.add_argument("--per-task", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)

    from t2lcli.engine.data import load_sni_task
    from t2lcli.engine.generate import Generator
    from t2lcli.recipe import load_recipe

    recipe = load_recipe("default")
    sni = ROOT / recipe.data.sni_dir
    descs_dir = ROOT / recipe.data.descriptions_dir
    gen = Generator.load(args.checkpoint)
    trained = list(gen.ckpt.training.get("train_tasks") or []) if isinstance(getattr(gen.ckpt, "training", None), dict) else []
    if not trained:
        trained = json.loads((ROOT / "t2lcli/checkpoints/default/t2l_config.json").read_text())["training"]["train_tasks"]
    held = list(recipe.data.heldout_tasks)
    everything = sorted(p.name[: -len(".meta.json")] for p in sni.glob("*.meta.json"))
    rng = random.Random(0)
    lo, hi = recipe.data.n_train_descs, recipe.data.n_train_descs + args.per_task

    def load(name: str):
        try:
            t = load_sni_task(sni, name, descs_dir, max_instances=1)
        except Exception:
            return None
        return t if len(t.descriptions) >= hi else None

    new_pool = [t for t in everything if t not in set(trained) | set(held)]
    groups: dict[str, list] = {"seen": [], "heldout": [], "new": []}
    for name in rng.sample(trained, len(trained)):
        if len(groups["seen"]) < args.seen_tasks and (t := load(name)):
            groups["seen"].append(t)
    groups["heldout"] = [t for n in held if (t := load(n))]
    for name in rng.sample(new_pool, len(new_pool)):
        if len(groups["new"]) < args.new_tasks and (t := load(name)):
            groups["new"].append(t)

    texts, labels, group_of = [], [], []
    for gname, tasks in groups.items():
        for t in tasks:
            for d in t.descriptions[lo:hi]:
                texts.append(d)
                labels.append(t.name)
                group_of.append(gname)
    n_task_adapters = len(texts)
    texts += RANDOM_DESCRIPTIONS
    labels += [f"random{i}" for i in range(len(RANDOM_DESCRIPTIONS))]
    group_of += ["random"] * len(RANDOM_DESCRIPTIONS)

    emb = gen.embed(texts)
    fac = gen.factors(emb)
    g, per_layer = delta_gram(fac)
    raw, cen = cosine(g), cosine(center(g[:n_task_adapters, :n_task_adapters]))
    report: dict = {"checkpoint": args.checkpoint, "n_adapters": len(texts), "descriptions_used": f"{lo}..{hi - 1}",
                    "groups": {k: [t.name for t in v] for k, v in groups.items()}, "delta_w": {}}
    for gname in groups:
        idx = [i for i in range(n_task_adapters) if group_of[i] == gname]
        report["delta_w"][gname] = {"raw": group_stats(raw, labels, idx), "centered": group_stats(cen, labels, idx)}
    # every task adapter against all tasks at once: can the unseen groups be told apart among everything?
    report["delta_w"]["all_tasks_centered"] = group_stats(cen, labels, list(range(n_task_adapters)))

    # distance of each unseen task to the nearest training task in embedding space
    train_tasks = [t for n in trained if (t := load_sni_task(sni, n, descs_dir, max_instances=1))]
    train_emb = torch.stack([torch.nn.functional.normalize(gen.embed(t.descriptions[:10]).mean(0), dim=0) for t in train_tasks])
    nearest = {}
    for gname in ("heldout", "new"):
        for t in groups[gname]:
            idx = [i for i in range(n_task_adapters) if labels[i] == t.name]
            e = torch.nn.functional.normalize(emb[idx].mean(0), dim=0)
            sims = train_emb @ e
            j = int(sims.argmax())
            own = [float(cen[i, k]) for i in idx for k in idx if k > i]
            other = [float(cen[i, k]) for i in idx for k in range(n_task_adapters) if labels[k] != t.name and group_of[k] == gname]
            nearest[t.name] = {"group": gname, "nearest_train_task": train_tasks[j].name, "cosine": round(float(sims[j]), 4),
                               "gap_centered": round(statistics.mean(own) - statistics.mean(other), 4)}
    report["nearest_training_task"] = nearest
    xs = [v["cosine"] for v in nearest.values()]
    ys = [v["gap_centered"] for v in nearest.values()]
    report["nearest_vs_gap_pearson"] = round(statistics.correlation(xs, ys), 3) if len(xs) > 2 else None

    # random descriptions: norm relative to task adapters, cosine to the task adapters' mean direction
    norms = g.diagonal().sqrt()
    gc = center(g)
    cen_all = cosine(gc)
    task_norm = float(norms[:n_task_adapters].mean())
    report["random_descriptions"] = [
        {"text": texts[i], "norm_vs_task_mean": round(float(norms[i]) / task_norm, 3),
         "raw_cosine_to_task_mean": round(float(raw[i, :n_task_adapters].mean()), 4),
         "centered_norm_vs_task": round(float(gc[i, i].clamp(min=0).sqrt()) / float(gc.diagonal()[:n_task_adapters].clamp(min=0).sqrt().mean()), 3),
         "nearest_task": labels[int(cen_all[i, :n_task_adapters].argmax())]}
        for i in range(n_task_adapters, len(texts))
    ]
    # how much of ΔW differs between adapters: centred energy / raw energy, overall
    report["varying_share_of_energy"] = round(float(center(g[:n_task_adapters, :n_task_adapters]).trace() / g[:n_task_adapters, :n_task_adapters].trace()), 4)
    report["per_layer_mean_norm"] = {m: [round(x, 5) for x in v] for m, v in per_layer.items()}

    text = json.dumps(report, indent=1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    summary = {k: report[k] for k in ("delta_w", "nearest_vs_gap_pearson", "varying_share_of_energy", "random_descriptions")}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
