"""`t2l bench`: how fast and how small adaptation is, measured on the machine at hand, with baselines in the same run.

What is measured (every number comes from this run; nothing is copied from elsewhere):
  * stages: generate-path imports (fresh interpreter), checkpoint load, encoder load, description embedding,
    hypernetwork forward, PEFT tensor build, adapter write (atomic folder, fsync'd);
  * warm latency: description -> adapter in memory, in this process, p50/p95/p99 over `runs`;
  * cold latency: a fresh `t2l generate` process end to end (wall clock), p50/p95/p99 over `cold_runs`;
  * throughput: adapters/s for a batch of descriptions (embed + forward + tensors), at each batch size;
  * memory: peak RSS of this process and of the cold `t2l generate` child (`os.wait4`), peak VRAM on CUDA;
  * baseline "load the base": a fresh process imports transformers and loads a randomly initialised base of the real
    shapes (bf16, safetensors written once under $T2L_HOME/bench) with `AutoModelForCausalLM.from_pretrained`, as the
    reference implementation does before it can generate. Bases over `FULL_BASE_LIMIT` bytes are loaded at depths 1
    and 4 and extrapolated to the full depth (the method is stated in the output);
  * baseline "prompt cost": tokens the task description and a 3-shot prompt add to every request (T2L adds 0), with the
    base's own tokenizer when it is available offline, otherwise a named stand-in.

`--shapes NAME` builds a random hypernetwork of the official size (no download) and, for the gte-large encoder of the
official checkpoints, a random BERT of gte-large-en-v1.5's size (24 x 1024, FFN 6144 = its GLU 4096, 434M params).

JSON schema (`t2l-bench/1`, stable; new keys may be added, none renamed): see `request.BENCH_SCHEMA` and docs/bench.md.
"""

# Modules: request (what was asked, the report file), shapes (random checkpoints of official sizes), measure,
# floor, baselines, targets, memory_plan (--plan), run (`run_bench`). Everything the old single module held is
# importable from here, as before.

from __future__ import annotations

from t2lcli.engine.bench.baselines import (  # noqa: F401
    BASELINE_CODE,
    FULL_BASE_LIMIT,
    PROMPTS_FILE,
    SAMPLED_DEPTH,
    base_param_counts,
    baseline_load_base,
    baseline_prompt,
)
from t2lcli.engine.bench.floor import (  # noqa: F401
    FLOOR_STAGES,
    _stage_floor,
    cold_floor,
    measure_floor,
    torch_ops,
)
from t2lcli.engine.bench.measure import (  # noqa: F401
    IMPORTS_CODE,
    machine_info,
    percentiles,
)
from t2lcli.engine.bench.memory_plan import (  # noqa: F401
    GIB,
    default_plan_shapes,
    measure_memory,
    plan_memory,
)
from t2lcli.engine.bench.request import (  # noqa: F401
    BENCH_SCHEMA,
    DESCRIPTIONS,
    SCHEMA,
    BenchRequest,
    check_writable,
    parse_batch,
    validate_request,
    write_report,
)
from t2lcli.engine.bench.run import (  # noqa: F401
    run_bench,
)
from t2lcli.engine.bench.shapes import (  # noqa: F401
    GTE_LARGE_PROXY,
    bench_home,
    build_shapes_checkpoint,
    clean_cache,
    hypernet_config,
)
from t2lcli.engine.bench.targets import (  # noqa: F401
    FLOOR_TARGETS,
    TARGETS,
    evaluate_targets,
)
from t2lcli.engine.shapes import SHAPES_DIR, base_config, load_shape, shape_names  # noqa: F401  (re-exported)
