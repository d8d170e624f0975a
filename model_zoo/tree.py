"""Paths into nested parameter dicts: ("layers", 0, "attn", "q_proj")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ParamPath = tuple


def get_path(tree: dict, path: ParamPath) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def set_path(tree: dict, path: ParamPath, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def path_name(path: ParamPath) -> str:
    """("layers", 0, "attn", "q_proj") -> "layers.0.attn.q_proj"."""
    return ".".join(str(key) for key in path)


def flatten(tree: dict, prefix: ParamPath = ()) -> Iterator[tuple[ParamPath, Any]]:
    """(path, leaf) pairs of a nested dict, in insertion order."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def unflatten(pairs: Iterator[tuple[ParamPath, Any]]) -> dict:
    tree: dict = {}
    for path, value in pairs:
        set_path(tree, path, value)
    return tree


def parse_name(name: str) -> ParamPath:
    """"layers.0.attn.q_proj" -> ("layers", 0, "attn", "q_proj")."""
    return tuple(int(part) if part.isdigit() else part for part in name.split("."))
