"""Quantized parameters inside the model: a parameter may be a `QArray` (integer values and
scales, see `quantize.spec`) or a float16 array, and `dequantize_params` turns the tree back into
float32 inside the trace. So the quantized reference runs the same forward as the float one, and
an exported graph holds the integer constants and the dequantization, not float32 weights.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError

# How many of a weight's axes are the matmul's input features: leading axes (> 0) for the
# projections (x @ W), trailing (< 0) for the table, whose rows are the LM head's outputs.
IN_AXES = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1,
           "down_proj": 1, "embedding": -1}


def is_matrix(name: str) -> bool:
    """Whether the parameter `name` (dotted) is a matrix gemmaforge quantizes, by its role
    (the last part)."""
    return name.rsplit(".", 1)[-1] in IN_AXES


def in_axes(name: str) -> int:
    """IN_AXES of the parameter `name` (dotted), by its role (the last part)."""
    if not is_matrix(name):
        raise GemmaforgeError(f"{name} is not a matrix gemmaforge knows how to quantize")
    return IN_AXES[name.rsplit(".", 1)[-1]]


class QArray(NamedTuple):
    """values int8/uint8 [in, out]; scales float32 [in / block, out]; zeros (asymmetric grids)
    like the scales, or None."""

    values: Any
    scales: Any
    zeros: Any = None


def dequantize(q: QArray, shape: tuple[int, ...], in_axes: int) -> jax.Array:
    """float32 in the weight's own `shape`: (values - zeros) * scales, each scale repeated over
    its block of inputs."""
    groups, outputs = q.scales.shape
    values = q.values.astype(jnp.float32).reshape(groups, -1, outputs)
    if q.zeros is not None:
        values = values - q.zeros.astype(jnp.float32)[:, None, :]
    matrix = (values * q.scales[:, None, :]).reshape(-1, outputs)
    if in_axes > 0:
        return matrix.reshape(shape)
    return matrix.T.reshape(shape)


def is_quantized(params: Any) -> bool:
    leaves = jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, QArray))
    return any(isinstance(leaf, QArray) or getattr(leaf, "dtype", None) == jnp.float16
               for leaf in leaves)


def dequantize_params(config: ModelConfig, params: Any) -> Any:
    """The tree with every QArray and float16 leaf as float32 (in the trace when traced)."""
    from model_zoo.transformer import abstract_params
    from model_zoo.tree import get_path, path_name

    abstract = abstract_params(config)

    def one(key_path, leaf):
        if isinstance(leaf, QArray):
            path = tuple(key.key for key in key_path)  # the tree is nested dicts
            return dequantize(leaf, tuple(get_path(abstract, path).shape),
                              in_axes(path_name(path)))
        if getattr(leaf, "dtype", None) == jnp.float16:
            return leaf.astype(jnp.float32)
        return leaf

    return jax.tree_util.tree_map_with_path(one, params,
                                            is_leaf=lambda x: isinstance(x, QArray))


# Outside a trace: the float32 weights a runner keeps, computed once instead of at every step
# (bit for bit what the in-graph dequantization of an export computes).
dequantize_once = jax.jit(dequantize_params, static_argnums=0)


PARTS = ("values", "scales", "zeros")


def flatten_params(params: Any) -> dict[str, Any]:
    """Dotted name -> array, a QArray spread over `name.values`, `name.scales` (and
    `name.zeros`): the tensors an artifact stores and an exported program takes."""
    from model_zoo.tree import flatten, path_name

    flat = {}
    for path, leaf in flatten(params):
        name = path_name(path)
        if isinstance(leaf, QArray):
            for part in PARTS:
                if getattr(leaf, part) is not None:
                    flat[f"{name}.{part}"] = getattr(leaf, part)
        else:
            flat[name] = leaf
    return flat


def nest_params(flat: dict[str, Any]) -> Any:
    """`flatten_params` undone: the nested tree, QArrays rebuilt."""
    from model_zoo.tree import parse_name, set_path

    tree: dict = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        stem, _, part = name.rpartition(".")
        if part in PARTS and stem:
            groups.setdefault(stem, {})[part] = value
        else:
            set_path(tree, parse_name(name), value)
    for stem, parts in groups.items():
        set_path(tree, parse_name(stem), QArray(parts["values"], parts["scales"],
                                                parts.get("zeros")))
    return tree
