"""Names the CLI checks before loading any model and the engine acts on: one home, stdlib only (safe to import on the
fast path where a bad flag must fail before torch is imported)."""

MERGE_METHODS = ("linear", "cat", "svd", "ties", "dare")
EXPORT_RUNTIMES = ("vllm", "sglang", "llamacpp", "ollama")  # `t2l merge --export`
COMPAT_RUNTIMES = (*EXPORT_RUNTIMES, "peft")  # `t2l inspect --compat`
