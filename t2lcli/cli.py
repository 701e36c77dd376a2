"""The `t2l` command line: a root Typer app, built-in and plugin commands, and the single error boundary.

Importing this module must stay cheap: no torch/transformers/peft/numpy here or in anything it imports.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from t2lcli import __version__, lighthelp, omp
from t2lcli.console import error, set_verbosity

lighthelp.install()  # help without rich.markdown / rich.traceback (unused here): a third of `t2l --help`

EXAMPLES = """[b]Examples[/b]

  t2l generate "Answer grade-school math word problems step by step." -o out/math
  t2l inspect out/math --compat vllm
  t2l bench --shapes llama-3.1-8b
  t2l COMMAND --help                  # every command's options and examples
"""


class _AsIs:
    """Coercion for the root's own options (--help, -v, --install-completion, ...) when click already produced the
    right type: typer would build a pydantic TypeAdapter for each, and importing pydantic costs every
    `t2l COMMAND --help` ~0.1 s, since the root's options are processed before the command's --help. Anything
    else goes to typer's own coercion."""

    def __init__(self, annotation: type) -> None:
        self.annotation = annotation

    def coerce(self, value: object, param: Any, ctx: Any) -> object:
        if (value is None and not (param.multiple or param.nargs == -1)) or type(value) is self.annotation:
            return value
        from typer._coercion import build_runtime_param

        real = param._runtime_param = build_runtime_param(param.type_descriptor)  # type: ignore[attr-defined]
        return real.coerce(value, param=param, ctx=ctx)


class _RootGroup(typer.core.TyperGroup):
    """The root group: its bool/int options skip pydantic when click's value already has the right type."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for p in params:
            desc = getattr(p, "type_descriptor", None)
            if getattr(p, "_runtime_param", "absent") is None and desc is not None and desc.annotation in (bool, int) and not desc.is_ranged:
                p._runtime_param = _AsIs(desc.annotation)  # type: ignore[attr-defined]
        return params


app = typer.Typer(
    cls=_RootGroup,
    name="t2l",
    epilog=EXAMPLES,
    help="Text-to-LoRA: turn a task description into a LoRA adapter in one forward pass.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"t2l {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More logging on stderr (repeatable).")] = 0,
) -> None:
    """Text-to-LoRA: turn a task description into a LoRA adapter in one forward pass.

    Results go to stdout (add --json for machine-readable output); logs and progress go to stderr.
    Set T2L_DEBUG=1 to see tracebacks.
    """
    set_verbosity(verbose)


def _register() -> None:
    from t2lcli.plugins import register_all

    register_all(app)


_register()


def _known_message(exc: BaseException) -> tuple[str, str | None] | None:
    """Map an exception to (message, hint) if it is one a user should see without a traceback."""
    from t2lcli.errors import T2LError

    if isinstance(exc, T2LError):
        return exc.message, exc.hint
    exc = _as_os_error(exc)
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}", "check the path"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}", "check its permissions: inputs must be readable, outputs writable, by this user"
    if isinstance(exc, OSError) and exc.errno == 28:
        return "no space left on device; nothing partial was kept", "free some disk space and retry"
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        # the environment refused a path (name too long, not a directory, read-only file system, ...): one line
        from t2lcli.errors import show_value

        where = f": {show_value(str(exc.filename), 160)}" if exc.filename is not None else ""
        return f"{exc.strerror[:1].lower()}{exc.strerror[1:]}{where}", "check the path"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return "out of GPU memory", "use a smaller profile (e.g. --profile gpu-16gb) or a smaller --set base.batch_size"
    if isinstance(exc, MemoryError):
        return "out of memory", "use smaller batches or a smaller model"
    return None


def _as_os_error(exc: BaseException) -> BaseException:
    """safetensors reports a failed write (a full disk) as `SafetensorError: ... I/O error: ... (os error 28)`: the OSError
    it stands for, so that it gets the same one-line message."""
    import re

    if type(exc).__name__ != "SafetensorError":
        return exc
    m = re.search(r"\(os error (\d+)\)", str(exc))
    if not m:
        return exc
    code = int(m.group(1))
    return OSError(code, os.strerror(code))


def main() -> None:
    """Console-script entry point: run the app inside the one error boundary."""
    # How idle OpenMP threads wait (a bounded spin on a machine that is not oversubscribed, else sleep at once; a
    # user's OMP_WAIT_POLICY / GOMP_SPINCOUNT wins): set before torch is imported. See t2lcli/omp.py.
    omp.apply()
    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("aborted\n")
        sys.exit(1)
    except Exception as exc:
        usage = _usage_error(exc)
        if usage is not None:
            sys.exit(usage)
        known = _known_message(exc)
        if known is None or os.environ.get("T2L_DEBUG"):
            raise
        message, hint = known
        error(message, hint)
        if hint is None or "T2L_DEBUG" not in hint:
            sys.stderr.write("(set T2L_DEBUG=1 for the traceback)\n")
        sys.exit(getattr(exc, "exit_code", 1) or 1)
    else:
        sys.exit(0)


def _usage_error(exc: BaseException) -> int | None:
    """Typer's vendored click usage errors: print them like click does and return exit code 2."""
    show = getattr(exc, "show", None)
    code = getattr(exc, "exit_code", None)
    if callable(show) and isinstance(code, int) and type(exc).__module__.startswith("typer"):
        show()
        return code
    return None


if __name__ == "__main__":
    main()
