"""What every config tree shares: frozen dataclasses, changed by dotted path.

A method's config is a tree of frozen dataclasses, one per component (field, renderer, each
guidance, each stage, export); presets are values of the tree. `override` changes leaves by
dotted path (`{"static.steps": 3}`), so smoke runs, tests and benchmarks name what they change
instead of rebuilding a tree; `as_dict` is what a result's metadata records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class ConfigError(ValueError):
    """A dotted path that names no field, or a value the field refuses."""


def _replace_path(node: Any, path: list[str], value: Any, full: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ConfigError(f"{full}: {'.'.join(path)} is below a value, not a config")
    names = {f.name for f in dataclasses.fields(node)}
    head, rest = path[0], path[1:]
    if head not in names:
        raise ConfigError(f"{full}: no field {head!r} in {type(node).__name__} "
                          f"(fields: {', '.join(sorted(names))})")
    new = value if not rest else _replace_path(getattr(node, head), rest, value, full)
    return dataclasses.replace(node, **{head: new})


def override(config: Any, changes: Mapping[str, Any]) -> Any:
    """`config` with the leaves named by dotted paths replaced (applied in order)."""
    for path, value in changes.items():
        config = _replace_path(config, path.split("."), value, path)
    return config


def get(config: Any, path: str) -> Any:
    """The value at a dotted path."""
    for name in path.split("."):
        config = getattr(config, name)
    return config


def as_dict(config: Any) -> dict:
    """The tree as plain data (tuples as lists), for metadata and JSON."""
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple | list):
            return [plain(v) for v in x]
        return x
    return plain(config)


def parse_changes(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """Command-line changes `PATH=VALUE` (e.g. `refine.video_every=2`) as `override` takes
    them: the value read as a Python literal (numbers, tuples, True, 'text'), else as text."""
    import ast

    changes: dict[str, Any] = {}
    for item in items or ():
        path, sep, text = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"{option} takes PATH=VALUE (e.g. refine.video_every=2), "
                              f"not {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        changes[path.strip()] = value
    return changes
