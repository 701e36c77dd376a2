"""The hypernetwork's default sizes, in one place: the engine's `HyperNetConfig` and the training recipe's `hypernet:`
section both start from these (stdlib only, so recipes load without torch)."""

VARIANT = "L"
LATENT = 128
HEAD_IN = 512
RANK = 8
LORA_ALPHA = 16.0
TARGET_MODULES = ("q_proj", "v_proj")
