"""The one dtype spelling table (stdlib only: the CLI's options import it on the `t2l --help` path).

Every `--dtype` flag and every `--set *.dtype=` accepts each spelling on the left.
"""

DTYPE_SPELLINGS = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
                   "fp16": "float16", "float16": "float16"}
