"""Keep Typer's help renderer light: `typer.rich_utils` imports `rich.markdown` (markdown-it, pygments) and
`rich.traceback` (rich.pretty, attrs) at module level, about a third of `t2l --help`'s time, and t2l uses neither:
help is rendered in rich markup mode (not markdown) and pretty exceptions are off.

`install()` adds an import hook for `typer.rich_utils` only: while that module executes, the two are placeholders
whose `Markdown` / `Traceback` import the real module on first use (a plugin's markdown help still works), and
afterwards they are removed from `sys.modules`, so any later `import rich.markdown` gets the real module.
"""

from __future__ import annotations

import sys
import types
from typing import Any

DEFERRED = {"rich.markdown": ("Markdown",), "rich.traceback": ("Traceback",)}
_MARK = "__t2l_placeholder__"


def _real(module_name: str) -> Any:
    if getattr(sys.modules.get(module_name), _MARK, False):
        del sys.modules[module_name]
    import importlib

    return importlib.import_module(module_name)


class _Deferred(type):
    """A stand-in class: calling it or reading an attribute uses the real class of the real module."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return getattr(_real(cls._module), cls.__name__)(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(getattr(_real(cls._module), cls.__name__), name)


def _placeholder(name: str, attrs: tuple[str, ...]) -> types.ModuleType:
    mod = types.ModuleType(name)
    setattr(mod, _MARK, True)
    for attr in attrs:
        setattr(mod, attr, _Deferred(attr, (), {"_module": name, "__module__": name}))

    def rest(attr: str) -> Any:  # anything else: from the real module (dunders such as __path__: not there)
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_real(name), attr)

    mod.__getattr__ = rest  # type: ignore[method-assign]
    return mod


class _Hook:
    """A `sys.meta_path` finder for `typer.rich_utils` alone; it removes itself on first use."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "typer.rich_utils":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            placed = [n for n in DEFERRED if n not in sys.modules]
            for n in placed:
                sys.modules[n] = _placeholder(n, DEFERRED[n])
            try:
                run(module)
            finally:
                for n in placed:
                    if getattr(sys.modules.get(n), _MARK, False):
                        del sys.modules[n]

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]  # this spec's own loader instance
        return spec


def install() -> None:
    if "typer.rich_utils" not in sys.modules and not any(isinstance(f, _Hook) for f in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
