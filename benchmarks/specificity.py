"""Where does the default checkpoint's task specificity go? Description embeddings -> ΔW -> the base's answer loss.

Run from the repository root, with ../shared beside the checkout (prints the figures; ~3-5 CPU-minutes):
    .venv/bin/python benchmarks/specificity.py [--checkpoint default] [--new-tasks 40] [--items 8] -o results/specificity.json

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
  - per-layer and per-module norms of ΔW and the share of it that differs between adapters;
  - the same same-vs-different statistics one stage earlier (the description embeddings the hypernetwork reads) and
    per module (q_proj, v_proj apart), to see at which stage tasks stop being told apart;
  - one stage later (`--items`, 0 skips it; loads the base): the base's answer loss (nats/token) on validation items
    (never test items) of seen, held-out and new tasks, in both prompt styles (input only; SNI definition + input),
    under the task's own adapter, another task's, a random and an empty description's, and no adapter.
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
    "task",  # as empty as a description may be (empty or punctuation-only ones are refused)
]


def delta_gram(factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, list[float]], dict[str, torch.Tensor]]:
    """G[i, j] = <ΔW_i, ΔW_j>_F over all modules and layers (float64), per module the per-layer mean norm, and per
    module its own Gram matrix (ΔW flattened over that module's layers)."""
    n = next(iter(factors.values()))[0].shape[0]
    g = torch.zeros(n, n, dtype=torch.float64)
    per_layer: dict[str, list[float]] = {}
    per_module: dict[str, torch.Tensor] = {}
    for m, (a, b) in factors.items():
        norms = []
        gm = torch.zeros(n, n, dtype=torch.float64)
        for layer in range(a.shape[1]):
            al, bl = a[:, layer].double(), b[:, layer].double()  # [n, r, din], [n, dout, r]
            btb = torch.einsum("nor,mos->nmrs", bl, bl)
            aat = torch.einsum("nrd,msd->nmrs", al, al)
            gl = (btb * aat).sum((2, 3))
            g += gl
            gm += gl
            norms.append(float(gl.diagonal().clamp(min=0).sqrt().mean()))
        per_layer[m] = norms
        per_module[m] = gm
    return g, per_layer, per_module


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


def answer_losses(recipe, gen, fac, picked, first, special, n_items, sni, descs_dir) -> dict:
    """Mean answer NLL (nats/token) of the base on each picked task's first `n_items` validation items, per prompt
    style and condition: own (the task's first unseen description), other (the next task's in its group: the control),
    random, empty, none (no adapter). Per group: the mean per condition, other - own, and the share of tasks own wins."""
    from t2lcli.engine.base_model import load_base_model
    from t2lcli.engine.data import answer_of, build_prompt, load_sni_task
    from t2lcli.engine.lora_hooks import apply_factors
    from t2lcli.engine.train.batches import Tokenized, collate
    from t2lcli.engine.train.loss import answer_loss
    from t2lcli.hardware import ComponentSettings

    model, tok = load_base_model(recipe.base_model, ComponentSettings(device="cpu", dtype="float32", attn_implementation="sdpa"))
    model.eval()
    tk = Tokenized(tok, 256)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    paths = {m: s.path for m, s in gen.ckpt.shape.modules.items()}
    scale = gen.ckpt.config.scaling

    @torch.no_grad()
    def score(rows: list, adapter: int | None) -> float:
        batch = collate(rows, pad)
        per_layer = {}
        if adapter is not None:
            for m, (a, b) in fac.items():
                for layer in range(a.shape[1]):
                    per_layer[paths[m].format(l=layer)] = (a[adapter, layer], b[adapter, layer])
        with apply_factors(model, per_layer, scale):
            return float(answer_loss(model, batch["input_ids"], batch["attention_mask"], batch["labels"], 0.0))

    out: dict = {}
    for style in ("input", "definition"):
        out[style] = {}
        for gname, tasks in picked.items():
            per_task = {}
            for k, t in enumerate(tasks):
                full = load_sni_task(sni, t.name, descs_dir, None)
                val = full.split("val", recipe.data.train_frac, recipe.data.val_end)
                rows = [e for inst in val if (e := tk.encode(build_prompt(full, inst, style), answer_of(inst)))][:n_items]
                if not rows:
                    continue
                other = tasks[(k + 1) % len(tasks)].name
                conds = {"own": first[t.name], "other": first[other], "random": special["random"], "empty": special["empty"], "none": None}
                per_task[t.name] = {c: round(score(rows, a), 4) for c, a in conds.items()}
            means = {c: round(statistics.mean(v[c] for v in per_task.values()), 4) for c in ("own", "other", "random", "empty", "none")}
            gaps = [v["other"] - v["own"] for v in per_task.values()]
            out[style][gname] = {"tasks": len(per_task), "mean": means, "other_minus_own": round(statistics.mean(gaps), 4),
                                 "own_wins": f"{sum(x > 0 for x in gaps)}/{len(gaps)}",
                                 "own_beats_none": f"{sum(v['own'] < v['none'] for v in per_task.values())}/{len(gaps)}",
                                 "per_task": per_task}
    return out


def print_figures(report: dict) -> None:
    """The figures the docs page quotes, as plain lines."""
    print(f"checkpoint {report['checkpoint']}: {report['n_adapters']} adapters, descriptions {report['descriptions_used']}")
    print("same vs different task, mean cosine (centred = mean removed) and top-1 nearest-is-own-task:")
    for gname in ("seen", "heldout", "new"):
        e, d = report["embedding"][gname]["centered"], report["delta_w"][gname]
        mods = "  ".join(f"{m} {v[gname]['same']:.3f}/{v[gname]['different']:.3f}" for m, v in report["delta_w_per_module"].items())
        print(f"  {gname:8s} embedding centred {e['same']:.3f}/{e['different']:.3f} top1 {e['top1_same_task']:.0%} | "
              f"ΔW raw {d['raw']['same']:.3f}/{d['raw']['different']:.3f} centred {d['centered']['same']:.3f}/{d['centered']['different']:.3f} "
              f"top1 {d['centered']['top1_same_task']:.0%} | per module centred {mods}")
    shares = "  ".join(f"{m} {v['varying_share_of_energy']:.3f}" for m, v in report["delta_w_per_module"].items())
    print(f"varying share of energy: embedding {report['embedding']['varying_share_of_energy']:.3f}  ΔW {report['varying_share_of_energy']:.3f}  {shares}")
    near = report["nearest_training_task"]
    for gname in ("heldout", "new"):
        cs = [v["cosine"] for v in near.values() if v["group"] == gname]
        print(f"nearest training task ({gname}): description cosine min {min(cs):.3f} median {statistics.median(cs):.3f} max {max(cs):.3f}")
    print(f"nearest-task cosine vs centred ΔW gap, Pearson r = {report['nearest_vs_gap_pearson']}")
    for r in report["random_descriptions"]:
        print(f"  random {r['text'][:40]!r:44s} norm x{r['norm_vs_task_mean']:.2f}  raw cos to tasks {r['raw_cosine_to_task_mean']:.3f}  "
              f"centred norm x{r['centered_norm_vs_task']:.2f}")
    for m, v in report["per_layer_mean_norm"].items():
        print(f"  ΔW norm per layer {m}: " + " ".join(f"{x:.2f}" for x in v))
    for style, groups in report.get("answer_loss", {}).items():
        for gname, v in groups.items():
            mean = "  ".join(f"{c} {x:.3f}" for c, x in v["mean"].items())
            print(f"answer NLL, prompt {style:10s} {gname:8s} ({v['tasks']} tasks): {mean} | other-own {v['other_minus_own']:+.3f}, "
                  f"own wins {v['own_wins']}, own beats none {v['own_beats_none']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--seen-tasks", type=int, default=20)
    ap.add_argument("--new-tasks", type=int, default=40)
    ap.add_argument("--per-task", type=int, default=5)
    ap.add_argument("--items", type=int, default=8, help="validation items per task for the answer-loss stage (0: skip it)")
    ap.add_argument("--output-tasks", type=int, default=6, help="seen and new tasks scored in the answer-loss stage")
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
    g, per_layer, per_module = delta_gram(fac)
    raw, cen = cosine(g), cosine(center(g[:n_task_adapters, :n_task_adapters]))
    report: dict = {"checkpoint": args.checkpoint, "n_adapters": len(texts), "descriptions_used": f"{lo}..{hi - 1}",
                    "groups": {k: [t.name for t in v] for k, v in groups.items()}, "delta_w": {}}
    for gname in groups:
        idx = [i for i in range(n_task_adapters) if group_of[i] == gname]
        report["delta_w"][gname] = {"raw": group_stats(raw, labels, idx), "centered": group_stats(cen, labels, idx)}
    # every task adapter against all tasks at once: can the unseen groups be told apart among everything?
    report["delta_w"]["all_tasks_centered"] = group_stats(cen, labels, list(range(n_task_adapters)))
    # one stage earlier (what the hypernetwork reads) and per module: where do tasks stop being told apart?
    ge = emb[:n_task_adapters].double() @ emb[:n_task_adapters].double().T
    emb_raw, emb_cen = cosine(ge), cosine(center(ge))
    mod_cen = {m: cosine(center(gm[:n_task_adapters, :n_task_adapters])) for m, gm in per_module.items()}
    report["embedding"], report["delta_w_per_module"] = {}, {m: {} for m in per_module}
    for gname in groups:
        idx = [i for i in range(n_task_adapters) if group_of[i] == gname]
        report["embedding"][gname] = {"raw": group_stats(emb_raw, labels, idx), "centered": group_stats(emb_cen, labels, idx)}
        for m, c in mod_cen.items():
            report["delta_w_per_module"][m][gname] = group_stats(c, labels, idx)
    report["embedding"]["varying_share_of_energy"] = round(float(center(ge).trace() / ge.trace()), 4)
    for m, gm in per_module.items():
        sub = gm[:n_task_adapters, :n_task_adapters]
        report["delta_w_per_module"][m]["varying_share_of_energy"] = round(float(center(sub).trace() / sub.trace()), 4)

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

    if args.items:
        first = {name: i for i, name in reversed(list(enumerate(labels)))}  # each task's first unseen description
        special = {"random": len(labels) - len(RANDOM_DESCRIPTIONS), "empty": len(labels) - 1}
        picked = {"seen": groups["seen"][: args.output_tasks], "heldout": groups["heldout"], "new": groups["new"][: args.output_tasks]}
        report["answer_loss"] = answer_losses(recipe, gen, fac, picked, first, special, args.items, sni, descs_dir)

    text = json.dumps(report, indent=1)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print_figures(report)


if __name__ == "__main__":
    main()
