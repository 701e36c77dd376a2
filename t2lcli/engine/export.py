"""The old import path of the runtime exports, now `t2lcli.engine.merge.export`: kept so that code written against
it keeps working."""

from t2lcli.engine.merge.export import (  # noqa: F401
    EXPORT_RUNTIMES,
    GGUF_ARCH,
    GGUF_NAME,
    GGUF_TENSOR,
    PEFT_RUNTIME_MODULES,
    PERMUTED_ARCHS,
    RUNTIMES,
    VLLM_MAX_LORA_RANKS,
    check_rank,
    export_adapter,
    gguf_tensors,
    permute_rows,
    precheck_export,
    vllm_rank_flag,
    write_gguf_adapter,
)
