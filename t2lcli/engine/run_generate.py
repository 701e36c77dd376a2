"""The engine behind `t2l generate`: single, batch (streamed in chunks) and precomputed-embedding generation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2lcli import console
from t2lcli.descriptions import BadLine, Item, iter_items, slugify
from t2lcli.engine.atomic import EMPTY, check_output_free, t2l_output_kind
from t2lcli.errors import InputError, OutputExistsError
from t2lcli.hw_profiles import Profile

if TYPE_CHECKING:
    import torch

    from t2lcli.engine.adapters import Adapter
    from t2lcli.engine.generate import GenerateOptions, Generator, Timings


@dataclass
class GenerateRequest:
    description: str | None = None
    output: Path | None = None  # None: DEFAULT_OUTPUT (a single adapter goes to out/<slug>/, a batch to out/<name>/)
    from_file: str | None = None
    embedding_file: Path | None = None
    checkpoint: str | None = None
    base_model: str | None = None
    dtype: str = "float32"
    scale: float = 1.0
    scaling: str = "rslora"
    batch_size: int = 64
    skip_bad: bool = False
    force: bool = False
    trust_remote_code: bool = False
    keep_results: bool = True  # False: return only the first result (a long batch then runs in flat memory)


DEFAULT_OUTPUT = Path("out")


def single_output(req: GenerateRequest) -> Path:
    """Where one adapter goes: `-o` exactly when given, else `out/<slug of the description>/` (the same layout as a
    batch uses), so a later batch into `out/` lands beside it and `--force` never replaces a whole `out/`."""
    if req.output is not None:
        return req.output
    name = slugify(req.description[:60], "adapter") if req.description is not None else "adapter"
    return DEFAULT_OUTPUT / name


def batch_parent(req: GenerateRequest) -> Path:
    """The parent folder of a batch (one folder per item inside it); never a t2l output folder itself."""
    parent = req.output if req.output is not None else DEFAULT_OUTPUT
    kind = t2l_output_kind(parent)
    if kind not in (None, EMPTY):
        raise OutputExistsError(f"-o {parent} is {kind}; a batch writes one folder per item inside -o",
                                hint="choose another -o, e.g. its parent folder")
    return parent


def _chunks(items: Iterator[Item | BadLine], size: int, skip_bad: bool) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for it in items:
        if isinstance(it, BadLine):
            if not skip_bad:
                raise InputError(f"line {it.line}: {it.reason}", hint="fix the line or pass --skip-bad to continue past bad lines")
            console.warn(f"skipping line {it.line}: {it.reason}")
            continue
        chunk.append(it)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prescan(source: str, skip_bad: bool, output: Path, force: bool) -> int:
    """Validate a batch file before any model is loaded (files only; stdin is checked while streaming)."""
    count = 0
    for it in iter_items(source):
        if isinstance(it, BadLine):
            if not skip_bad:
                raise InputError(f"{source}: line {it.line}: {it.reason}", hint="fix the line or pass --skip-bad")
            continue
        check_output_free(output / it.name, force)
        count += 1
    if count == 0:
        raise InputError(f"{source} holds no descriptions")
    return count


def run_generate(req: GenerateRequest, profile: Profile, on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Generate and write adapters; calls `on_result` after each one is complete on disk.

    Every input is checked before the checkpoint is loaded (a description once, by the one rule; a batch file line
    by line; an embedding file by reading it). Returns all results, or only the first when `req.keep_results` is
    False (streamed batches: `on_result` sees each).
    """
    from t2lcli.engine.generate import GenerateOptions, Generator, check_base_matches, check_descriptions, load_embeddings

    total: int | None = None
    emb = load_embeddings(req.embedding_file) if req.embedding_file is not None else None
    if req.from_file is not None or (emb is not None and emb.shape[0] > 1):
        out_dir = batch_parent(req)
        if req.from_file is not None and req.from_file != "-":
            total = _prescan(req.from_file, req.skip_bad, out_dir, req.force)
    else:
        out_dir = single_output(req)
        check_output_free(out_dir, req.force)
    if req.description is not None:
        check_descriptions([req.description])  # fail fast on empty/over-long input, before loading anything

    if profile.threads:  # `--set threads=N`; adapters are byte-identical for any thread count with AVX2/AVX-512 kernels (tests/test_hardening_determinism.py)
        import torch

        torch.set_num_threads(profile.threads)
    gen = Generator.load(
        req.checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype, encoder_device=profile.encoder.device,
        trust_remote_code=req.trust_remote_code, encoder_dtype=profile.encoder.dtype, kernel=profile.kernel,
    )
    check_base_matches(gen.ckpt, req.base_model)
    sink = _Writer(gen, req, on_result)
    opts = GenerateOptions(scale=req.scale, scaling=req.scaling, dtype=req.dtype)
    if emb is not None:
        _from_embeddings(gen, emb, out_dir, opts, sink)
    elif req.description is not None:
        before = gen.timings.copy()
        sink.write(gen.generate([req.description], opts, checked=True)[0], out_dir, out_dir.name, before)
        _warn_truncation(gen)
    else:
        assert req.from_file is not None
        _from_file(gen, req.from_file, total, out_dir, opts, sink)
        if not sink.written:
            raise InputError("no descriptions were read", hint="give one description per line")
        _warn_truncation(gen)
    return sink.results


class _Writer:
    """Writes each adapter, builds its result (path, name, description, sha256, per-adapter timings) and passes it on."""

    def __init__(self, gen: Generator, req: GenerateRequest, on_result: Callable[[dict[str, Any]], None] | None) -> None:
        self.gen, self.req, self.on_result = gen, req, on_result
        self.results: list[dict[str, Any]] = []
        self.written = 0

    def write(self, adapter: Adapter, path: Path, name: str, before: Timings, n: int = 1) -> None:
        """`before`: the generator's timings before the call that made this adapter and `n`-1 others."""
        t0 = time.perf_counter()
        sha = self.gen.write(adapter, path, force=self.req.force, dtype=self.req.dtype)
        now = self.gen.timings
        res = {
            "path": str(path), "name": name, "description": adapter.meta["description"], "sha256": sha,
            "timings_ms": {"checkpoint_load": _ms(now.load_s), "embed": _ms((now.embed_s - before.embed_s) / n),
                           "hypernet": _ms((now.forward_s - before.forward_s) / n), "write": _ms(time.perf_counter() - t0)},
        }
        self.written += 1
        if self.req.keep_results or not self.results:
            self.results.append(res)
        if self.on_result:
            self.on_result(res)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _from_embeddings(gen: Generator, emb: torch.Tensor, out_dir: Path, opts: GenerateOptions, sink: _Writer) -> None:
    """Precomputed embeddings: one adapter into `out_dir`, or many into `out_dir/emb-NNNNNN/`."""
    if emb.shape[1] != gen.ckpt.config.emb_dim:
        raise InputError(f"embeddings have dimension {emb.shape[1]}; the checkpoint expects {gen.ckpt.config.emb_dim}")
    n = emb.shape[0]
    names = ["adapter"] if n == 1 else [f"emb-{i:06d}" for i in range(n)]
    paths = [out_dir] if n == 1 else [out_dir / nm for nm in names]
    for p in paths:
        check_output_free(p, sink.req.force)
    for start in range(0, n, sink.req.batch_size):
        part = emb[start : start + sink.req.batch_size]
        before = gen.timings.copy()
        adapters = gen.adapters_from_embeddings(part, [f"<embedding {start + i}>" for i in range(part.shape[0])], opts)
        for i, ad in enumerate(adapters):
            sink.write(ad, paths[start + i], names[start + i], before, max(1, len(adapters)))


def _from_file(gen: Generator, source: str, total: int | None, out_dir: Path, opts: GenerateOptions, sink: _Writer) -> None:
    """A batch file (or stdin), streamed in chunks of --batch-size; one folder per item under `out_dir`."""
    with console.progress() as bar:
        task = bar.add_task("generating adapters", total=total)
        for chunk in _chunks(iter_items(source), sink.req.batch_size, sink.req.skip_bad):
            for it in chunk:
                check_output_free(out_dir / it.name, sink.req.force)
            before = gen.timings.copy()
            adapters = gen.generate([it.description for it in chunk], opts, checked=True)  # each line passed the rule in iter_items
            for it, ad in zip(chunk, adapters, strict=True):
                sink.write(ad, out_dir / it.name, it.name, before, len(chunk))
            bar.advance(task, len(chunk))


def _warn_truncation(gen: Generator) -> None:
    if gen.truncated:
        console.warn(f"{gen.truncated} description(s) exceeded the encoder's {gen.max_length}-token limit and were truncated")
