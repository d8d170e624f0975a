"""The one quantized-tensor type, rounding onto a grid, and the parameter-tree transforms
around it.

A quantized parameter tree is the model's tree with some leaves a `QuantizedTensor` (integer
values and scales, see `quantize.spec`) or a float16 array. The model itself takes float32 trees
only: `dequantize_params` turns a quantized tree back into one, inside the trace when traced, so
the quantized reference runs the same forward as the float one and an exported graph holds the
integer constants and the dequantization, not float32 weights.

`QuantizedTensor` is a JAX pytree (its arrays the children, the rest static), so a quantized
tree passes through `jax.jit` and `jax.export` as its arrays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from model_zoo.config import ModelConfig
from model_zoo.layers import in_axes
from model_zoo.transformer import abstract_params
from model_zoo.tree import flatten, get_path, parse_name, path_name, set_path
from quantize.spec import QuantSpec, block_of, to_matrix


@dataclasses.dataclass(frozen=True)
class QuantizedTensor:
    """values int8 / uint8 [in, out]; scales float32 [in / block (1 per channel), out]; zeros of
    the scales' shape for asymmetric grids (int8 / uint8, float32 for float zero points), or None;
    `shape` and `in_axes` restore the weight's own layout (its leading (in_axes > 0) or trailing
    (< 0) axes form `in`). `spec` is the grid it was rounded onto; None for a tensor read back
    from an artifact, whose manifest records the spec."""

    values: Any
    scales: Any
    zeros: Any
    spec: QuantSpec | None
    shape: tuple[int, ...]
    in_axes: int

    def dequantize(self) -> np.ndarray:
        """float32 in the weight's own shape, computed as the model's trace computes it."""
        return np.asarray(dequantize(self))


jax.tree_util.register_dataclass(QuantizedTensor, data_fields=["values", "scales", "zeros"],
                                 meta_fields=["spec", "shape", "in_axes"])


def quantize_tensor(name: str, weight: np.ndarray, spec: QuantSpec,
                    in_axes: int) -> QuantizedTensor:
    """Round-to-nearest onto `spec`'s grid, scales from each group's range."""
    matrix = to_matrix(np.asarray(weight, np.float32), in_axes)
    inputs, outputs = matrix.shape
    block = block_of(name, spec, inputs)
    groups = matrix.reshape(inputs // block, block, outputs)
    if spec.symmetric:
        scales = np.abs(groups).max(axis=1) / spec.qmax
        zeros = None
    else:
        low = np.minimum(groups.min(axis=1), 0.0)
        high = np.maximum(groups.max(axis=1), 0.0)
        scales = (high - low) / (spec.qmax - spec.qmin)
    scales = np.where(scales > 0, scales, 1.0).astype(np.float32)
    storage = np.int8 if spec.qmax < 128 else np.uint8
    if spec.zero_point == "float":
        zeros = (-low / scales).astype(np.float32)
    elif not spec.symmetric:
        zeros = np.clip(np.round(-low / scales), spec.qmin, spec.qmax).astype(storage)
    shifted = groups / scales[:, None, :]
    if zeros is not None:
        shifted = shifted + zeros[:, None, :]
    values = np.clip(np.round(shifted), spec.qmin, spec.qmax).astype(storage)
    values = values.reshape(inputs, outputs)
    return QuantizedTensor(values, scales, zeros, spec, tuple(weight.shape), in_axes)


def _is_tensor(leaf: Any) -> bool:
    return isinstance(leaf, QuantizedTensor)


def dequantize(q: QuantizedTensor) -> jax.Array:
    """float32 in the weight's own shape: (values - zeros) * scales, each scale repeated over
    its block of inputs."""
    groups, outputs = q.scales.shape
    values = q.values.astype(jnp.float32).reshape(groups, -1, outputs)
    if q.zeros is not None:
        values = values - q.zeros.astype(jnp.float32)[:, None, :]
    matrix = (values * q.scales[:, None, :]).reshape(-1, outputs)
    if q.in_axes > 0:
        return matrix.reshape(q.shape)
    return matrix.T.reshape(q.shape)


def is_quantized(params: Any) -> bool:
    """Whether the tree holds a QuantizedTensor or a float16 leaf."""
    leaves = jax.tree_util.tree_leaves(params, is_leaf=_is_tensor)
    return any(_is_tensor(leaf) or getattr(leaf, "dtype", None) == jnp.float16
               for leaf in leaves)


def dequantize_params(params: Any) -> Any:
    """The tree with every QuantizedTensor and float16 leaf as float32 (in the trace when
    traced); float32 leaves as they are."""

    def one(leaf):
        if _is_tensor(leaf):
            return dequantize(leaf)
        if getattr(leaf, "dtype", None) == jnp.float16:
            return leaf.astype(jnp.float32)
        return leaf

    return jax.tree_util.tree_map(one, params, is_leaf=_is_tensor)


# Outside a trace: the float32 weights a runner keeps, computed once instead of at every step
# (bit for bit what the in-graph dequantization of an export computes).
dequantize_once = jax.jit(dequantize_params)


PARTS = ("values", "scales", "zeros")


def flatten_params(params: Any) -> dict[str, Any]:
    """Dotted name -> array, a QuantizedTensor spread over `name.values`, `name.scales` (and
    `name.zeros`): the tensors an artifact stores and an exported program takes."""
    flat = {}
    for path, leaf in flatten(params):
        name = path_name(path)
        if _is_tensor(leaf):
            for part in PARTS:
                if getattr(leaf, part) is not None:
                    flat[f"{name}.{part}"] = getattr(leaf, part)
        else:
            flat[name] = leaf
    return flat


def nest_params(config: ModelConfig, flat: dict[str, Any]) -> Any:
    """`flatten_params` undone: the nested tree, QuantizedTensors rebuilt with their weight's
    shape under `config` (their spec None: the manifest records it)."""
    abstract = abstract_params(config)
    tree: dict = {}
    groups: dict[str, dict[str, Any]] = {}
    for name, value in flat.items():
        stem, _, part = name.rpartition(".")
        if part in PARTS and stem:
            groups.setdefault(stem, {})[part] = value
        else:
            set_path(tree, parse_name(name), value)
    for stem, parts in groups.items():
        path = parse_name(stem)
        set_path(tree, path, QuantizedTensor(parts["values"], parts["scales"],
                                             parts.get("zeros"), None,
                                             tuple(get_path(abstract, path).shape),
                                             in_axes(stem)))
    return tree
