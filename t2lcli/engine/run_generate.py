"""The engine behind `t2l generate`: single, batch (streamed in chunks) and precomputed-embedding generation."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t2lcli import console
from t2lcli.batch import BadLine, Item, iter_items, slugify, valid_text
from t2lcli.engine.adapters import WEIGHTS_NAME, tensors_sha256
from t2lcli.engine.atomic import EMPTY, check_output_free, t2l_output_kind
from t2lcli.errors import InputError, OutputExistsError
from t2lcli.hardware import Profile


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

    Returns all results, or only the first when `req.keep_results` is False (streamed batches: `on_result` sees each).
    """
    from t2lcli.engine.generate import GenerateOptions, Generator, check_base_matches, load_embeddings

    total: int | None = None
    n_emb = None
    if req.embedding_file is not None:
        emb = load_embeddings(req.embedding_file)
        n_emb = emb.shape[0]
    if req.from_file is not None or (n_emb is not None and n_emb > 1):
        out_dir = batch_parent(req)
        if req.from_file is not None and req.from_file != "-":
            total = _prescan(req.from_file, req.skip_bad, out_dir, req.force)
    else:
        out_dir = single_output(req)
        check_output_free(out_dir, req.force)
    if n_emb is None:
        emb = None
    if req.description is not None:
        from t2lcli.engine.encoder import EncoderSpec, preprocess

        preprocess(req.description, EncoderSpec())  # fail fast on empty/over-long input, before loading anything

    if profile.threads:  # `--set threads=N`; adapters are byte-identical for any thread count with AVX2/AVX-512 kernels (tests/test_hardening_determinism.py)
        import torch

        torch.set_num_threads(profile.threads)
    t_load = time.perf_counter()
    gen = Generator.load(
        req.checkpoint, device=profile.hypernet.device, dtype=profile.hypernet.dtype, encoder_device=profile.encoder.device,
        trust_remote_code=req.trust_remote_code, encoder_dtype=profile.encoder.dtype, kernel=profile.kernel,
    )
    load_s = time.perf_counter() - t_load
    check_base_matches(gen.ckpt, req.base_model)
    opts = GenerateOptions(scale=req.scale, scaling=req.scaling, dtype=req.dtype)
    results: list[dict[str, Any]] = []
    written = 0

    def write(adapter: Any, path: Path, name: str, desc: str, t_embed: float, t_fwd: float) -> None:
        t0 = time.perf_counter()
        gen.save(adapter, path, force=req.force, dtype=req.dtype)
        res = {
            "path": str(path), "name": name, "description": valid_text(desc), "sha256": tensors_sha256(path / WEIGHTS_NAME),
            "timings_ms": {"checkpoint_load": round(load_s * 1000, 3), "embed": round(t_embed * 1000, 3),
                           "hypernet": round(t_fwd * 1000, 3), "write": round((time.perf_counter() - t0) * 1000, 3)},
        }
        nonlocal written
        written += 1
        if req.keep_results or not results:
            results.append(res)
        if on_result:
            on_result(res)

    if emb is not None:
        if emb.shape[1] != gen.ckpt.config.emb_dim:
            raise InputError(f"embeddings have dimension {emb.shape[1]}; the checkpoint expects {gen.ckpt.config.emb_dim}")
        n = emb.shape[0]
        names = ["adapter"] if n == 1 else [f"emb-{i:06d}" for i in range(n)]
        paths = [out_dir] if n == 1 else [out_dir / nm for nm in names]
        for p in paths:
            check_output_free(p, req.force)
        for start in range(0, n, req.batch_size):
            part = emb[start : start + req.batch_size]
            t0 = time.perf_counter()
            adapters = gen.adapters_from_embeddings(part, [f"<embedding {start + i}>" for i in range(part.shape[0])], opts)
            t_fwd = (time.perf_counter() - t0) / max(1, len(adapters))
            for i, ad in enumerate(adapters):
                write(ad, paths[start + i], names[start + i], ad.meta["description"], 0.0, t_fwd)
        return results

    if req.description is not None:
        t0 = time.perf_counter()
        e = gen.embed([req.description])
        t_embed = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter = gen.adapters_from_embeddings(e, [req.description], opts)[0]
        write(adapter, out_dir, out_dir.name, req.description, t_embed, time.perf_counter() - t0)
        _warn_truncation(gen)
        return results

    assert req.from_file is not None
    with console.progress() as bar:
        task = bar.add_task("generating adapters", total=total)
        for chunk in _chunks(iter_items(req.from_file), req.batch_size, req.skip_bad):
            for it in chunk:
                check_output_free(out_dir / it.name, req.force)
            descs = [it.description for it in chunk]
            t0 = time.perf_counter()
            e = gen.embed(descs)
            t_embed = (time.perf_counter() - t0) / len(chunk)
            t0 = time.perf_counter()
            adapters = gen.adapters_from_embeddings(e, descs, opts)
            t_fwd = (time.perf_counter() - t0) / len(chunk)
            for it, ad in zip(chunk, adapters, strict=True):
                write(ad, out_dir / it.name, it.name, it.description, t_embed, t_fwd)
            bar.advance(task, len(chunk))
    if not written:
        raise InputError("no descriptions were read", hint="give one description per line")
    _warn_truncation(gen)
    return results


def _warn_truncation(gen: Any) -> None:
    enc = gen._encoder
    if enc is not None and enc.truncated:
        console.warn(f"{enc.truncated} description(s) exceeded the encoder's {enc.spec.max_length}-token limit and were truncated")
