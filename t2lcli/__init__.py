"""t2l: Text-to-LoRA command-line toolkit. Only the version lives here (no imports: keeps `t2l --help` fast)."""

__version__ = "0.1.0"
