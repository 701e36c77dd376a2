"""Greedy token ids for a list of chat prompts, on peft (transformers) or on vLLM's offline engine; used by
tests/test_engines.py, each backend in its own venv and process.

usage: python greedy.py peft|vllm SPEC.json OUT.json
SPEC: {"base": dir, "prompts": [str], "max_new_tokens": n, "adapters": {name: dir or null}, "max_lora_rank": r,
       "dtype": "float32"}
OUT:  {name: [[token ids] per prompt]} plus "_seconds": {name: s}; vLLM adds "_scaling": {name: vLLM's LoRA scale}.
The prompts go through the base's chat template (one user turn, generation prompt) on both sides.
"""

from __future__ import annotations

import json
import sys
import time


def prompt_ids(tok, prompts):
    return [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False)
            for p in prompts]


def run_peft(spec):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(spec["base"])
    ids = prompt_ids(tok, spec["prompts"])
    out, secs = {}, {}
    for name, path in spec["adapters"].items():
        model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=getattr(torch, spec.get("dtype", "float32")))
        if path:
            model = PeftModel.from_pretrained(model, path)
        model.eval()
        t0 = time.perf_counter()
        res = []
        for p in ids:
            with torch.no_grad():
                g = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), do_sample=False,
                                   max_new_tokens=spec["max_new_tokens"], pad_token_id=tok.pad_token_id or tok.eos_token_id)
            res.append(g[0, len(p):].tolist())
        out[name], secs[name] = res, time.perf_counter() - t0
    out["_seconds"] = secs
    return out


def run_vllm(spec):
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.lora.request import LoRARequest

    tok = AutoTokenizer.from_pretrained(spec["base"])
    ids = prompt_ids(tok, spec["prompts"])
    llm = LLM(model=spec["base"], dtype=spec.get("dtype", "float32"), max_model_len=1024, enforce_eager=True, seed=0,
              enable_lora=True, max_lora_rank=spec.get("max_lora_rank", 8), max_loras=1)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_new_tokens"])
    max_pos = json.load(open(f"{spec['base']}/config.json"))["max_position_embeddings"]
    out, secs, scaling = {}, {}, {}
    for i, (name, path) in enumerate(spec["adapters"].items()):
        req = LoRARequest(name, i + 1, path) if path else None
        if path:
            scaling[name] = PEFTHelper.from_local_dir(path, max_pos).vllm_lora_scaling_factor
        t0 = time.perf_counter()
        gens = llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], params, lora_request=req, use_tqdm=False)
        out[name], secs[name] = [list(g.outputs[0].token_ids) for g in gens], time.perf_counter() - t0
    out["_seconds"], out["_scaling"] = secs, scaling
    return out


if __name__ == "__main__":  # vLLM's engine core spawns processes: everything runs under this guard
    which, spec_path, out_path = sys.argv[1:4]
    spec = json.load(open(spec_path))
    result = run_peft(spec) if which == "peft" else run_vllm(spec)
    with open(out_path, "w") as fh:
        json.dump(result, fh)
