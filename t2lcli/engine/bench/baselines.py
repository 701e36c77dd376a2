"""The baselines of `t2l bench`: loading the base (a fresh process, real shapes, random weights) and the prompt cost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from t2lcli import console
from t2lcli.engine.bench.measure import child_env, run_child
from t2lcli.engine.bench.shapes import bench_home
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
from t2lcli.errors import T2LError

PROMPTS_FILE = Path(__file__).resolve().parents[2] / "data" / "bench_prompts.json"
FULL_BASE_LIMIT = 3 * 2**30  # bytes: larger bases are measured at depth 4 and scaled by bytes


# ----------------------------------------------------------------------------------------------- baselines


def base_param_counts(config: dict[str, Any]) -> dict[str, int]:
    """Parameter counts of a decoder-only base from config.json: embeddings, lm_head, decoder linears, norms."""
    h, n_layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
    nh = int(config["num_attention_heads"])
    nkv = int(config.get("num_key_value_heads") or nh)
    hd = int(config.get("head_dim") or h // nh)
    inter, vocab = int(config["intermediate_size"]), int(config["vocab_size"])
    per_layer = h * nh * hd + 2 * h * nkv * hd + nh * hd * h + 3 * h * inter
    norms_per_layer = (4 if config.get("model_type") in ("gemma2", "gemma3", "gemma3_text") else 2) * h
    embed = vocab * h
    return {
        "embed": embed, "lm_head": 0 if config.get("tie_word_embeddings") else embed, "linears": per_layer * n_layers,
        "linears_per_layer": per_layer, "norms": norms_per_layer * n_layers + h, "n_layers": n_layers,
        "total": embed + (0 if config.get("tie_word_embeddings") else embed) + per_layer * n_layers + norms_per_layer * n_layers + h,
    }


def _random_base(name: str, config: dict[str, Any], depth: int, dtype: str) -> Path:
    """A base folder of the real widths at `depth` layers, random weights, cached under $T2L_HOME/bench."""
    import torch

    from t2lcli.engine.atomic import atomic_dir, file_lock

    target = bench_home() / f"base-{name}-{dtype}-d{depth}"
    with file_lock(bench_home() / f".base-{name}.lock"):
        if (target / "model.safetensors").is_file():
            return target
        from transformers import AutoConfig, AutoModelForCausalLM

        from t2lcli.engine.atomic import write_safetensors
        from t2lcli.engine.fastload import meta_device

        cfg = {k: v for k, v in config.items() if k not in ("torch_dtype", "dtype", "transformers_version", "_name_or_path")}
        cfg["num_hidden_layers"] = depth
        hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})
        with meta_device():
            model = AutoModelForCausalLM.from_config(hf_cfg)
        tdtype = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(0)
        state = {}
        for key, p in model.named_parameters():  # tied weights appear once, as save_pretrained writes them
            t = torch.empty(p.shape, dtype=tdtype)
            if p.dim() > 1:
                t.uniform_(-0.02, 0.02, generator=gen)
            else:
                t.fill_(1.0)
            state[key] = t
        console.log(f"writing a random {name} base with {depth} layer(s) ({sum(t.numel() for t in state.values()) / 1e9:.2f}B params, {dtype}) to {target}")
        with atomic_dir(target, force=True, cache=True) as tmp:
            write_safetensors(state, tmp / "model.safetensors")
            cfg_out = {**json.loads(hf_cfg.to_json_string()), "dtype": dtype}
            cfg_out.pop("torch_dtype", None)
            (tmp / "config.json").write_text(json.dumps(cfg_out, indent=2))
        del state, model
    return target


BASELINE_CODE = (
    "import json, sys, time\n"
    "t0 = time.perf_counter()\n"
    "import torch\n"
    "from transformers import AutoModelForCausalLM\n"
    "from transformers.utils import logging\n"
    "logging.disable_progress_bar()\n"
    "t1 = time.perf_counter()\n"
    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=getattr(torch, sys.argv[2]))\n"
    "t2 = time.perf_counter()\n"
    "with torch.no_grad():  # weights may still be memory-mapped: copy every byte once, as a first forward reads them\n"
    "    for p in m.parameters():\n"
    "        torch.empty_like(p).copy_(p)\n"
    "t3 = time.perf_counter()\n"
    "print(json.dumps({'import_s': t1 - t0, 'load_s': t3 - t1, 'from_pretrained_s': t2 - t1, 'page_in_s': t3 - t2,\n"
    "                  'params': sum(p.numel() for p in m.parameters())}))\n"
)


SAMPLED_DEPTH = 4


def baseline_load_base(name: str, config: dict[str, Any], mode: str = "auto", dtype: str = "bfloat16", repeats: int = 3) -> dict[str, Any]:
    """Time the reference's first step, loading the base (random weights, real shapes) with transformers, in a fresh process.

    Bases larger than `FULL_BASE_LIMIT` (or mode 'sampled') are loaded at depth 4 (`SAMPLED_DEPTH`: embeddings, head and
    4 decoder layers) and scaled to full depth by bytes: `from_pretrained`'s time as measured (mostly fixed: building
    the model, mapping the file) plus the time to read every weight byte times full bytes / sampled bytes. Reading is
    the part that grows with depth and is timed over GBs, so this is stable where a slope between two depths (a few
    hundred ms of difference, times 28 layers) was not. Each load runs `repeats` times and the fastest counts (the page
    cache holds the file after the first read, so this is a lower bound on a real load from disk).
    """
    counts = base_param_counts(config)
    n = counts["n_layers"]
    nbytes = counts["total"] * 2
    full = mode == "full" or (mode == "auto" and nbytes <= FULL_BASE_LIMIT) or n <= SAMPLED_DEPTH
    depth = n if full else SAMPLED_DEPTH
    sampled_bytes = nbytes - (n - depth) * counts["linears_per_layer"] * 2
    folder = _random_base(name, config, depth, dtype)
    runs, imports, rss = [], [], []
    for _ in range(repeats):
        code, _, peak, out, err = run_child([sys.executable, "-c", BASELINE_CODE, str(folder), dtype], env=child_env())
        if code != 0:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit {code}"
            raise T2LError(f"the load-the-base baseline failed: {last}")
        runs.append(json.loads(out.strip().splitlines()[-1]))
        imports.append(runs[-1]["import_s"])
        if peak is not None:
            rss.append(peak)
    best = min(runs, key=lambda r: r["load_s"])
    console.log(f"baseline: {name} base at depth {depth} loads in {best['load_s']:.2f} s")
    if full:
        full_s, how = best["load_s"], "measured at full depth"
    else:
        full_s = best["from_pretrained_s"] + best["page_in_s"] * nbytes / sampled_bytes
        how = (f"depth {depth} measured ({sampled_bytes / 2**30:.1f} GiB); from_pretrained {best['from_pretrained_s']:.2f} s as measured + "
               f"reading {best['page_in_s']:.2f} s x {nbytes / sampled_bytes:.2f} (full / sampled bytes)")
    read_rate = sampled_bytes / best["page_in_s"] / 2**30 if best["page_in_s"] > 0 else None
    return {
        "method": "fresh process: import transformers; AutoModelForCausalLM.from_pretrained(random safetensors of the real shapes), "
                  "then every weight byte read once (from_pretrained may leave safetensors memory-mapped; touching one value per page "
                  "measured only the mapping, ~5 ms per 436 MB Llama layer)",
        "dtype": dtype, "base_params": counts["total"], "base_bytes": nbytes, "depths": [depth],
        "load_s": {str(depth): round(best["load_s"], 3)}, "from_pretrained_s": round(best["from_pretrained_s"], 3),
        "per_layer_s": None if full else round(best["page_in_s"] * counts["linears_per_layer"] * 2 / sampled_bytes, 4),
        "read_s": round(best["page_in_s"], 3), "read_gib_per_s": None if read_rate is None else round(read_rate, 2),
        "full_load_s": round(full_s, 3), "extrapolated": not full, "estimate": how, "import_s": round(min(imports), 3),
        "peak_rss_mb": max(rss) if rss else None, "page_cache": "warm (a lower bound on a cold read from disk)",
    }


def _tokenizer_for(shape_name: str | None, base: str) -> tuple[Any, str, str]:
    """(tokenizers.Tokenizer, name, note): the base's own tokenizer offline, or a named stand-in."""
    from tokenizers import Tokenizer

    from t2lcli import models as registry
    from t2lcli.engine.base_model import converted_dir

    own: list[Path] = [Path(base)]
    entry = registry.lookup(base) or (registry.lookup(load_shape(shape_name)["registry_name"]) if shape_name else None)
    if entry is not None and entry.source == "gguf-package":
        own.append(converted_dir(entry))
    if entry is not None and entry.source == "hub":
        try:
            from huggingface_hub import snapshot_download

            own.append(Path(snapshot_download(entry.hub_id, allow_patterns=["tokenizer.json"], local_files_only=True)))
        except Exception:
            pass
    for folder in own:
        if (folder / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(folder / "tokenizer.json")), entry.name if entry else str(folder), "the base's own tokenizer"
    smol = converted_dir(registry.REGISTRY["smollm2-135m-instruct"])
    if (smol / "tokenizer.json").is_file():
        return (Tokenizer.from_file(str(smol / "tokenizer.json")), "smollm2-135m-instruct",
                "stand-in: the base's tokenizer is not available offline; SmolLM2's BPE (49k vocab) counts instead")
    from t2lcli.engine.base_model import resolve_model

    mini = resolve_model("all-minilm-l6-v2", kind="encoder")
    return (Tokenizer.from_file(str(mini / "tokenizer.json")), "all-minilm-l6-v2",
            "stand-in: no decoder tokenizer is available offline; bert-base-uncased WordPiece counts instead")


def baseline_prompt(shape_name: str | None, base: str, config: dict[str, Any] | None) -> dict[str, Any]:
    """Tokens added to every request by the description-in-prompt and 3-shot alternatives (T2L adds none)."""
    data = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    tok, name, note = _tokenizer_for(shape_name, base)
    tok.no_truncation()  # an encoder's tokenizer.json (MiniLM's: 128) would cap the 3-shot count
    tok.no_padding()
    sep = data["separator"]
    desc_text = data["description"] + sep
    shots = sep.join(data["example_template"].format(**ex) for ex in data["examples"]) + sep
    n_desc = len(tok.encode(desc_text, add_special_tokens=False).ids)
    n_icl = len(tok.encode(shots, add_special_tokens=False).ids)
    kv = None
    if config is not None:
        h, nh = int(config["hidden_size"]), int(config["num_attention_heads"])
        kv = 2 * int(config["num_hidden_layers"]) * int(config.get("num_key_value_heads") or nh) * int(config.get("head_dim") or h // nh) * 2
    return {
        "tokenizer": name, "tokenizer_note": note, "description_tokens": n_desc, "icl_3shot_tokens": n_icl,
        "desc_plus_icl_tokens": n_desc + n_icl, "t2l_tokens": 0, "kv_bytes_per_token": kv,
        "texts": {"description": data["description"], "examples": len(data["examples"])},
    }
