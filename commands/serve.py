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
"""

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
) -> None:
    """Serve the base model and description-made adapters over an OpenAI-compatible HTTP API."""
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
        engine = ServeEngine.load(checkpoint, base_model, prof, settings, metrics, trust_remote_code=trust_remote_code)
        app = create_app(engine, api_key, metrics)

        def ready(url: str) -> None:
            console.log(f"model {engine.base_name}, checkpoint {engine.gen.ckpt.path or checkpoint or 'default'}, "
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
