"""Generation: descriptions (or precomputed embeddings) -> PEFT adapters, with no base-model weights loaded.

Python API:
    from t2lcli.engine.generate import Generator
    gen = Generator.load("path/to/checkpoint")            # once
    adapters = gen.generate(["classify movie reviews as positive or negative"])
    gen.save(adapters[0], "out/sentiment")                # PEFT folder
    handle = gen.apply(model, adapters[0]); ...; handle.remove()   # in memory, no disk round-trip
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, overload

import torch

from t2lcli.engine.adapters import Adapter, effective_scaling, fold_scale, peft_config, write_adapter
from t2lcli.engine.checkpoint import T2LCheckpoint, load_checkpoint
from t2lcli.engine.hypernet import lora_state_dict
from t2lcli.errors import InputError, T2LError
from t2lcli.runtimes import ADAPTER_SCALINGS
from t2lcli.text import check_description, valid_text

SCALINGS = ADAPTER_SCALINGS


@dataclass
class GenerateOptions:
    """Knobs of adapter generation."""

    scale: float = 1.0  # strength multiplier folded into lora_B
    scaling: str = "rslora"  # rslora: alpha/sqrt(r) as trained; lora: alpha/r (the published vLLM-0.5.4 eval);
    # folded: the trained scale folded into lora_B, lora_alpha = r (every runtime applies it alike)
    dtype: str = "float32"  # dtype of the written tensors


@dataclass
class Timings:
    """Seconds spent by a Generator, recorded once where the work happens (load, `embed`, `factors`) and summed over
    calls; `t2l generate` reports them per adapter (`timings_ms` in --json)."""

    load_s: float = 0.0
    embed_s: float = 0.0
    forward_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def copy(self) -> Timings:
        return Timings(self.load_s, self.embed_s, self.forward_s, dict(self.extra))


class Generator:
    """A loaded checkpoint plus (lazily) its text encoder."""

    def __init__(self, ckpt: T2LCheckpoint, device: str = "cpu", encoder_device: str = "cpu", trust_remote_code: bool = False,
                 encoder_dtype: str = "float32", kernel: str = "auto") -> None:
        self.ckpt = ckpt
        self.device = device
        self.encoder_device = encoder_device
        self.trust_remote_code = trust_remote_code
        self.encoder_dtype = encoder_dtype  # a profile dtype name; "auto" picks by device and encoder size
        self._encoder: Any = None
        self.kernel = kernel  # the linears' CPU kernel policy (t2lcli.engine.kernels): auto, torch, onednn, openblas
        _configure_hypernet(ckpt.hypernet, kernel)
        self._warned_scaling = False
        self.timings = Timings()

    @classmethod
    def load(cls, spec: str | Path | None = None, device: str = "cpu", dtype: str = "float32", encoder_device: str = "cpu",
             trust_remote_code: bool = False, encoder_dtype: str = "float32", kernel: str = "auto") -> Generator:
        from t2lcli.engine.base_model import resolve_device, torch_dtype

        t0 = time.perf_counter()
        device = resolve_device(device)
        gen = cls(load_checkpoint(spec, device=device, dtype=torch_dtype(dtype)), device, resolve_device(encoder_device), trust_remote_code,
                  encoder_dtype, kernel)
        gen.timings.load_s = time.perf_counter() - t0
        return gen

    @property
    def truncated(self) -> int:
        """How many descriptions so far exceeded the encoder's token limit (`max_length`) and were cut to it."""
        return int(self._encoder.truncated) if self._encoder is not None else 0

    @property
    def max_length(self) -> int:
        """The encoder's token limit per description."""
        return int(self.ckpt.encoder.max_length)

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from dataclasses import replace

            from t2lcli.engine.encoder import TextEncoder

            # only the user grants remote code (--trust-remote-code); a value stored in a checkpoint never does
            spec = replace(self.ckpt.encoder, trust_remote_code=self.trust_remote_code)
            from t2lcli.engine.base_model import torch_dtype

            self._encoder = TextEncoder(spec, device=self.encoder_device, dtype=torch_dtype(self.encoder_dtype))
            if getattr(self._encoder, "fast", False):  # our BERT: its linears are KLinear (transformers' are not)
                from t2lcli.engine.kernels import configure

                configure(self._encoder.model, self.kernel, "encoder", packable=True)  # inference only: may pack in place
        return self._encoder

    def warm_up(self) -> None:
        """Load the encoder and run the hypernetwork twice, so that a long-lived process's first requests pay neither
        the encoder load nor packing the heads (`kernels.KLinear._pack_now`)."""
        emb = self.embed(["warm up"])
        self.factors(emb)
        self.factors(emb)

    def embed(self, descriptions: list[str], checked: bool = False) -> torch.Tensor:
        """Descriptions -> embeddings [n, dim] (timed into `timings.embed_s`); `checked`: they passed the rule already."""
        t0 = time.perf_counter()
        e = self.encoder.embed(descriptions, checked=checked)
        self.timings.embed_s += time.perf_counter() - t0
        return e

    @torch.no_grad()
    def factors(self, emb: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Embeddings [n, dim] -> {module: (A [n,L,r,d_in], B [n,L,d_out,r])} in float32 on the CPU."""
        net = self.ckpt.hypernet
        if emb.dim() != 2 or emb.shape[1] != net.config.emb_dim:
            raise InputError(f"embeddings must have shape [n, {net.config.emb_dim}], got {list(emb.shape)}")
        if not torch.isfinite(emb).all():
            raise InputError("embeddings contain NaN or Inf")
        t0 = time.perf_counter()
        dtype = next(net.parameters()).dtype
        out = net(emb.to(self.device, dtype))
        out = {m: (a.float().cpu(), b.float().cpu()) for m, (a, b) in out.items()}
        self.timings.forward_s += time.perf_counter() - t0
        return out

    def adapters_from_embeddings(self, emb: torch.Tensor, descriptions: list[str], options: GenerateOptions | None = None) -> list[Adapter]:
        opts = options or GenerateOptions()
        if opts.scaling not in SCALINGS:
            raise InputError(f"unknown scaling '{opts.scaling}'", hint=f"use one of: {', '.join(SCALINGS)}")
        fac = self.factors(emb)
        paths = {m: s.path for m, s in self.ckpt.shape.modules.items()}
        c = self.ckpt.config
        fold = opts.scaling == "folded"
        use_rslora = c.use_rslora if fold else opts.scaling == "rslora"  # folded: the scale the checkpoint was trained with
        config = peft_config(c.r, c.lora_alpha, list(c.target_modules), self.ckpt.base_model, use_rslora=use_rslora)
        effective = effective_scaling(config)
        if not fold and use_rslora != c.use_rslora and not self._warned_scaling:
            from t2lcli.console import warn

            self._warned_scaling = True
            warn(
                f"the checkpoint was trained with {'rsLoRA alpha/sqrt(r)' if c.use_rslora else 'alpha/r'} = {c.scaling:.4g}; "
                f"these adapters state {opts.scaling} = {effective:.4g} ({effective / c.scaling:.2f}x the training strength)"
            )
        result = []
        # finiteness of every item at once (a few ops for the whole batch, not a few per adapter: each op is a
        # parallel region, which costs a scheduler time slice on a busy machine); B after --scale, so an overflow
        # is caught too
        finite = torch.ones(len(descriptions), dtype=torch.bool)
        for a, b in fac.values():
            finite &= finite_items(a)
            finite &= finite_items(b * opts.scale if opts.scale != 1.0 else b)
        for i, desc in enumerate(descriptions):
            tensors = lora_state_dict(paths, fac, i)
            if opts.scale != 1.0:
                tensors = {k: (v * opts.scale if ".lora_B." in k else v) for k, v in tensors.items()}
            if not bool(finite[i]):
                raise T2LError(
                    f"the adapter for {'description' if len(descriptions) == 1 else f'item {i + 1}'} has NaN/Inf values; nothing was written for it",
                    hint="lower --scale, or check the checkpoint (t2l inspect CHECKPOINT)",
                )
            meta = {
                "description": valid_text(desc),
                "scale": opts.scale,
                "scaling": opts.scaling,
                "effective_scale": effective,
                "checkpoint": str(self.ckpt.path) if self.ckpt.path else None,
                "checkpoint_sha256": self.ckpt.sha256,
                "checkpoint_format": self.ckpt.format,
                "encoder": self.ckpt.encoder.model,
            }
            if self._encoder is not None:
                meta["encoder_dtype"] = str(self._encoder.dtype).removeprefix("torch.")
            adapter = Adapter(dict(config), tensors, meta)
            if fold:
                adapter = fold_scale(adapter)
                adapter.meta["effective_scale"] = 1.0
            result.append(adapter)
        return result

    @overload
    def generate(self, descriptions: str, options: GenerateOptions | None = None, *, checked: bool = False) -> Adapter: ...

    @overload
    def generate(self, descriptions: list[str], options: GenerateOptions | None = None, *, checked: bool = False) -> list[Adapter]: ...

    def generate(self, descriptions: str | list[str], options: GenerateOptions | None = None, *, checked: bool = False) -> Adapter | list[Adapter]:
        """One adapter per description: a single string gives one Adapter, a list gives a list.

        `checked=True`: the caller has already applied `check_descriptions` (as `run_generate` does before loading
        anything), so the rule is not applied a second time.

        Raises:
            InputError: a description that `t2lcli.text` refuses (empty, over-long, no visible text).
        """
        if isinstance(descriptions, str):
            return self.generate([descriptions], options, checked=checked)[0]
        if not descriptions:
            return []
        if not checked:
            check_descriptions(descriptions)
        return self.adapters_from_embeddings(self.embed(descriptions, checked=True), descriptions, options)

    def save(self, adapter: Adapter, out_dir: Path | str, force: bool = False, dtype: str = "float32") -> Path:
        """Write `adapter` as a PEFT folder; returns the folder."""
        self.write(adapter, out_dir, force, dtype)
        return Path(out_dir)

    def write(self, adapter: Adapter, out_dir: Path | str, force: bool = False, dtype: str = "float32") -> str:
        """Write `adapter` as a PEFT folder; returns the sha256 of its adapter_model.safetensors (the adapter's id)."""
        from t2lcli.engine.base_model import torch_dtype

        return write_adapter(adapter, out_dir, force=force, dtype=torch_dtype(dtype))

    def apply(self, model: torch.nn.Module, adapter: Adapter) -> Any:
        """Add the adapter to an already loaded model in memory; returns a handle with `.remove()`."""
        from t2lcli.engine.lora_hooks import apply_adapter

        return apply_adapter(model, adapter)


def finite_items(t: torch.Tensor) -> torch.Tensor:
    """[n, ...] -> [n] bool: every value of item i is finite. NaN/Inf propagate into a sum, one pass over the
    (strided) tensor without temporaries, ~20x faster than `isfinite().all()` on a batch's factors; an item whose sum
    is not finite is checked exactly (a sum of finite values can overflow)."""
    ok = torch.isfinite(t.sum(dim=tuple(range(1, t.dim()))))
    if not bool(ok.all()):
        ok = torch.isfinite(t).flatten(1).all(1)
    return ok


def check_descriptions(descriptions: list[str]) -> None:
    """The one description rule (`t2lcli.text`) on each description, named by its place when there are several."""
    for i, d in enumerate(descriptions):
        check_description(d, f"description {i + 1}" if len(descriptions) > 1 else "")


def _configure_hypernet(net: torch.nn.Module, kernel: str) -> None:
    """The kernel policy for the hypernetwork's linears: the heads and the trunk (everything before them) as two stages."""
    from t2lcli.engine.kernels import configure

    try:
        configure(net, kernel, "trunk", packable=True)  # a Generator only runs inference; packing is undone for anything else
        configure(cast(torch.nn.Module, net.heads), kernel, "heads", packable=True)
    except ValueError as exc:
        raise InputError(str(exc), hint="set the profile's kernel to auto or torch (--set kernel=auto)") from None


def load_embeddings(path: Path | str) -> torch.Tensor:
    """Precomputed, already-normalised description embeddings: safetensors (one tensor) or .npy, shape [n, dim]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embedding file not found: {path}")
    if path.suffix == ".npy":
        import numpy as np

        try:
            arr = np.load(str(path), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # object arrays (pickle) are refused as ValueError
            raise InputError(f"cannot read {path} as .npy: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
            raise InputError(f"{path} does not hold a numeric array")
        t = torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32))
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot read {path} as safetensors: {exc}") from None
        if len(tensors) != 1:
            key = "embedding" if "embedding" in tensors else None
            if key is None:
                raise InputError(f"{path} holds {len(tensors)} tensors; expected one (or one named 'embedding')")
            t = tensors[key].float()
        else:
            t = next(iter(tensors.values())).float()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"embeddings in {path} must be [n, dim] with n, dim > 0, got {list(t.shape)}")
    return t


def check_base_matches(ckpt: T2LCheckpoint, base_model: str | None) -> None:
    """Refuse when --base-model names a model whose shapes differ from the checkpoint's."""
    if not base_model:
        return
    from t2lcli.engine.base_model import read_config, resolve_model, shape_from_config

    shape = shape_from_config(read_config(resolve_model(base_model)), list(ckpt.config.target_modules))
    mine = {m: (s.d_in, s.d_out) for m, s in ckpt.shape.modules.items()}
    theirs = {m: (s.d_in, s.d_out) for m, s in shape.modules.items()}
    if shape.n_layers != ckpt.shape.n_layers or mine != theirs:
        raise T2LError(
            f"the checkpoint was made for {ckpt.base_model} ({ckpt.shape.n_layers} layers, {mine}); "
            f"{base_model} has {shape.n_layers} layers, {theirs}",
            hint="use a checkpoint trained for this base model",
        )
