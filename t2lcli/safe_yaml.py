"""Bounded YAML reading for every file t2l accepts from users (profiles, recipes, `--set` values, args.yaml, data).

`yaml.safe_load` never runs code, but on its own it still lets a small document cost unbounded time or memory or
raise exceptions other than `yaml.YAMLError`:
  * alias bombs ("billion laughs"): 10 anchors of 9 aliases each expand to 10^9 nodes; loading is fast (aliases are
    shared), but anything that walks or prints the result (an error message with `repr`) never finishes;
  * merge-key bombs (`<<: [*a, *a]` nested 25 times) take minutes inside `safe_load` itself;
  * deeply nested brackets raise RecursionError; `!!int abc`, `!!timestamp 2020-13-45` raise ValueError.
Here the document is first parsed as events (depth checked, iteratively), then composed, then its size with every
alias expanded is computed over the node graph (linear time, memoised), and only then constructed. Every failure is
one `YamlError` with a one-line reason. Stdlib + yaml only (imported lazily by the callers' modules).
"""

from __future__ import annotations

from typing import Any

MAX_BYTES = 1_000_000  # a config file is small; larger ones are refused before parsing
MAX_DEPTH = 64  # nesting of mappings/sequences, aliases expanded
MAX_NODES = 200_000  # scalars + collections, aliases expanded


class YamlError(ValueError):
    """The text is not acceptable YAML; `reason` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_yaml(text: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH, max_bytes: int = MAX_BYTES) -> Any:
    """Parse one YAML document with `yaml.SafeLoader` semantics, within size, depth and alias-expansion limits.

    Raises:
        YamlError: syntax error, tags other than plain data, invalid scalars, too large, too deep, alias bomb,
            recursive anchors.
    """
    import yaml

    if len(text) > max_bytes:
        raise YamlError(f"larger than {max_bytes / 1e6:g} MB; refusing to parse it")
    try:
        _check_event_depth(text, max_depth)
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node, max_nodes, max_depth)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except YamlError:
        raise
    except yaml.YAMLError as exc:
        raise YamlError(_first_line(exc) or "syntax error") from None
    except (ValueError, TypeError, LookupError, ArithmeticError, AttributeError, RecursionError, MemoryError) as exc:
        # invalid explicit scalars that PyYAML's constructors do not check: !!int abc, !!int '' (IndexError),
        # !!timestamp 2020-13-45, !!float x
        raise YamlError(f"invalid value: {_first_line(exc) or type(exc).__name__}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def _check_event_depth(text: str, max_depth: int) -> None:
    """Refuse deep nesting before the (recursive) composer sees it."""
    import yaml

    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > max_depth:
                raise YamlError(f"nested more than {max_depth} levels deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _check_expanded_size(root: Any, max_nodes: int, max_depth: int) -> None:
    """Size and depth of the document with every alias expanded, computed once per distinct node (iteratively)."""
    import yaml

    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            kids = _children(node, yaml)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            depth[key] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[key] > max_nodes:
                raise YamlError(f"expands to more than {max_nodes} values through anchors/aliases (an alias bomb?)")
            if depth[key] > max_depth:
                raise YamlError(f"nested more than {max_depth} levels deep through anchors/aliases")
            continue
        if key in size:
            continue
        if key in on_path:
            raise YamlError("an anchor refers to itself (recursive aliases are not supported)")
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node, yaml):
            if id(kid) not in size:
                stack.append((kid, False))


def _children(node: Any, yaml: Any) -> list[Any]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []
