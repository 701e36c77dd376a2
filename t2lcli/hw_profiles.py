"""Hardware profiles (formerly `t2lcli.hardware`, which still re-exports it): dtype, quantization and placement for
the hypernetwork, the text encoder and the base model.

Precedence: dataclass defaults < profile YAML (by name or path) < `--set a.b=c` overrides < explicit flags.
Only stdlib and (lazily) yaml are imported here, so the CLI can use it on the `--help` path.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t2lcli.dtypes import DTYPE_SPELLINGS
from t2lcli.errors import ProfileError, format_problems, show_key, show_value

DTYPES = ("float32", "bfloat16", "float16", "auto")
QUANTIZATION = ("none", "8bit", "4bit")
ATTN = ("eager", "sdpa", "flash_attention_2", "auto")
DEVICES = ("cpu", "cuda", "auto", "mps")
KERNEL_POLICIES = ("auto", "torch", "onednn", "openblas")  # t2lcli.engine.kernels.POLICIES (this module stays torch-free)
DEFAULT_PROFILE = "cpu"


@dataclass
class ComponentSettings:
    """Where and how one model (hypernetwork, encoder or base) is loaded."""

    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:N, mps or auto"})
    device_map: str | None = field(default=None, metadata={"help": "transformers device_map (e.g. auto); base only"})
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16, float16 or auto"})
    quantization: str = field(default="none", metadata={"help": "none, 8bit or 4bit (bitsandbytes, imported only then)"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "eager, sdpa, flash_attention_2 or auto"})
    offload: bool = field(default=False, metadata={"help": "allow CPU offload of weights that do not fit"})
    batch_size: int = field(default=8, metadata={"help": "batch size for this component's forward passes"})


@dataclass
class Profile:
    """A resolved hardware profile."""

    name: str = DEFAULT_PROFILE
    description: str = "CPU only, float32 (the default)"
    threads: int = field(default=0, metadata={"help": "torch CPU threads; 0 = library default"})
    kernel: str = field(default="auto", metadata={"help": "CPU kernel of the encoder/hypernet linears: auto (measured once per "
                                                           "machine, cached in $T2L_HOME), torch, onednn or openblas"})
    hypernet: ComponentSettings = field(default_factory=ComponentSettings)
    encoder: ComponentSettings = field(default_factory=lambda: ComponentSettings(batch_size=64))
    base: ComponentSettings = field(default_factory=ComponentSettings)
    memory_budget_gb: float = field(default=0.0, metadata={"help": "VRAM budget the profile is designed for (0 = none)"})
    source: str = "defaults"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_COMPONENTS = ("hypernet", "encoder", "base")


def profiles_dir() -> Path:
    """The folder holding the shipped profiles (`t2lcli.profiles` package data)."""
    import importlib.util

    spec = importlib.util.find_spec("t2lcli.profiles")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - broken install
        raise ProfileError("the shipped profiles are missing from this installation", hint="reinstall t2l")
    return Path(list(spec.submodule_search_locations)[0])


def list_profiles() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.yaml"))


def _read_yaml(path: Path) -> Any:
    from t2lcli.safe_yaml import MAX_BYTES, YamlError, load_yaml

    try:
        if path.stat().st_size > MAX_BYTES:
            raise ProfileError(f"profile {path} is larger than 1 MB; refusing to parse it")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from None
    try:
        return load_yaml(text)
    except YamlError as exc:
        raise ProfileError(f"profile {path} is not valid YAML: {exc.reason}") from None


def _locate(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or "/" in name_or_path:
        if not candidate.is_file():
            raise ProfileError(
                f"profile file not found: {name_or_path}",
                hint=f"shipped profiles: {', '.join(list_profiles())}",
            )
        return candidate
    shipped = profiles_dir() / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ProfileError(
            f"unknown profile '{name_or_path}'",
            hint=f"choose one of: {', '.join(list_profiles())}, or pass a path to a .yaml file",
        )
    return shipped


def _check_value(where: str, key: str, value: Any, default: Any, problems: list[str]) -> Any:
    """Type-check one scalar against the type of its default; returns the (possibly coerced) value."""
    if key == "device_map":
        if value is not None and not isinstance(value, str):
            problems.append(f"{where}{key}: expected a string or null, got {type(value).__name__}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            problems.append(f"{where}{key}: expected true/false, got {show_value(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}{key}: expected an integer, got {show_value(value)}")
        elif value < 0:
            problems.append(f"{where}{key}: must be >= 0, got {show_value(value)}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}{key}: expected a number, got {show_value(value)}")
            return value
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            problems.append(f"{where}{key}: expected a string, got {show_value(value)}")
            return value
        if key == "dtype":
            value = DTYPE_SPELLINGS.get(value.lower(), value)
        allowed = {"dtype": (*DTYPES, *(k for k in DTYPE_SPELLINGS if k not in DTYPES)),
                   "quantization": QUANTIZATION, "attn_implementation": ATTN, "kernel": KERNEL_POLICIES}.get(key)
        if allowed and value not in allowed:
            problems.append(f"{where}{key}: {show_value(value)} is not one of {', '.join(allowed)}")
        if key == "device" and value.split(":")[0] not in DEVICES:
            problems.append(f"{where}{key}: {show_value(value)} is not one of {', '.join(DEVICES)} (cuda:N allowed)")
        return value
    return value


def _apply(profile: Profile, data: Any, origin: str, problems: list[str]) -> None:
    if data is None:
        return
    if not isinstance(data, dict):
        problems.append(f"{origin}: the root must be a mapping of keys, got {type(data).__name__}")
        return
    top_fields = {f.name: f for f in dataclasses.fields(Profile)}
    for key, value in data.items():
        if not isinstance(key, str) or key not in top_fields or key == "source":
            problems.append(f"{origin}: unknown key '{show_key(key)}' (known: {', '.join(k for k in top_fields if k != 'source')})")
            continue
        if key in _COMPONENTS:
            if not isinstance(value, dict):
                problems.append(f"{origin}: {key}: expected a mapping, got {type(value).__name__}")
                continue
            comp = getattr(profile, key)
            comp_fields = {f.name for f in dataclasses.fields(ComponentSettings)}
            for sub, subval in value.items():
                if sub not in comp_fields:
                    problems.append(f"{origin}: unknown key '{key}.{show_key(sub)}' (known: {', '.join(sorted(comp_fields))})")
                    continue
                coerced = _check_value(f"{origin}: {key}.", sub, subval, getattr(ComponentSettings(), sub), problems)
                setattr(comp, sub, coerced)
        else:
            coerced = _check_value(f"{origin}: ", key, value, getattr(Profile(), key), problems)
            setattr(profile, key, coerced)


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn `["base.dtype=bfloat16", "threads=2"]` into a nested dict; values are parsed as YAML scalars.

    Raises:
        ProfileError: an item is not KEY=VALUE, the key is not dotted identifiers, or the value is not a scalar.
    """
    problems: list[str] = []
    result = _parse_set(items, problems)
    if problems:
        raise ProfileError(format_problems("bad --set override", problems), hint="write --set section.key=value, e.g. --set base.dtype=bfloat16")
    return result


def _parse_set(items: list[str] | None, problems: list[str]) -> dict[str, Any]:
    from t2lcli.safe_yaml import YamlError, load_yaml

    result: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            problems.append(f"--set {show_value(item)} is not KEY=VALUE (e.g. --set base.dtype=bfloat16)")
            continue
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part.isidentifier() for part in key.split(".")):
            problems.append(f"--set {show_value(item)}: {show_value(key)} is not a dotted key such as base.dtype")
            continue
        try:
            value = load_yaml(raw) if raw.strip() else ""
        except YamlError:
            value = raw
        if isinstance(value, (dict, list)):
            problems.append(f"--set {show_value(item)}: only scalar values can be set")
            continue
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                problems.append(f"--set {show_value(item)}: '{part}' is set both as a value and as a section")
                break
            node = nxt
        else:
            node[parts[-1]] = value
    return result


def load_profile(name_or_path: str | None = None, overrides: list[str] | None = None) -> Profile:
    """Resolve a profile: defaults < YAML < `--set` overrides. Reports every problem (YAML and --set) at once.

    Args:
        name_or_path: a shipped profile name (`cpu`, `gpu-16gb`, ...) or a path to a YAML file; None = `cpu`.
        overrides: `--set` items such as `base.dtype=bfloat16`.

    Returns:
        the resolved Profile (explicit command-line flags are applied on top by the caller).

    Raises:
        ProfileError: unknown name, missing file, invalid YAML, unknown keys, wrong types or values, bad --set syntax.
    """
    name = name_or_path or DEFAULT_PROFILE
    path = _locate(name)
    profile = Profile(name=path.stem, source=str(path))
    problems: list[str] = []
    _apply(profile, _read_yaml(path), str(path), problems)
    _apply(profile, _parse_set(overrides, problems), "--set", problems)
    if problems:
        raise ProfileError(format_problems("invalid profile", problems), hint="see `t2l inspect profile cpu` for the schema")
    return profile
