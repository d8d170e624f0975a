"""Paths into nested parameter dicts: ("layers", 0, "attn", "q_proj")."""

from __future__ import annotations

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
