"""Names the CLI checks before loading any model and the engine acts on: one home, stdlib only (safe to import on the
fast path where a bad flag must fail before torch is imported)."""

MERGE_METHODS = ("linear", "cat", "svd", "ties", "dare")
EXPORT_RUNTIMES = ("vllm", "sglang", "llamacpp", "ollama")  # `t2l merge --export`
COMPAT_RUNTIMES = (*EXPORT_RUNTIMES, "peft")  # `t2l inspect --compat`
# `t2l generate --scaling`: how the written adapter_config.json states the scale. rslora (the reference's format, as
# trained): alpha/sqrt(r), applied by peft and vLLM >= 0.7; lora: alpha/r; folded: the trained scale multiplied into
# lora_B and lora_alpha = r (scale 1), which every runtime applies the same way, Ollama and llama.cpp included.
ADAPTER_SCALINGS = ("rslora", "lora", "folded")

# --- what the serving runtimes accept (read by export, inspect --compat and eval's vLLM backend)
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py
PEFT_RUNTIME_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GGUF_TENSOR = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
# HF model_type -> llama.cpp architecture name (MistralForCausalLM converts as `llama`)
GGUF_ARCH = {
    "llama": "llama", "mistral": "llama", "gemma": "gemma", "gemma2": "gemma2", "gemma3": "gemma3",
    "gemma3_text": "gemma3", "qwen2": "qwen2", "qwen3": "qwen3",
}
PERMUTED_ARCHS = ("llama",)


def vllm_rank_flag(r: int) -> int | None:
    """The smallest vLLM max_lora_rank that admits rank r (None: above vLLM's largest)."""
    return next((v for v in VLLM_MAX_LORA_RANKS if v >= r), None)
