"""Old import path of `t2lcli.registry` (the registry of named models), kept for code outside the package."""

from t2lcli.registry import DEFAULT_BASE, DEFAULT_ENCODER, REGISTRY, ModelEntry, lookup, t2l_home

__all__ = ["DEFAULT_BASE", "DEFAULT_ENCODER", "REGISTRY", "ModelEntry", "lookup", "t2l_home"]
