"""Dynamic int8 activations: a model whose matmuls round their inputs to int8 per token.

The model rounds nothing itself; a recipe with `activations = "int8-dynamic"` (recorded in the
traced config as `ModelConfig.activation_quant`) runs the model built with `RoundToInt8`, which
every matmul with a weight (the seven projections and the LM head) hands its input through.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import AS_IS, IN_AXES, Projection

INT8_MAX = 127
INT8_DYNAMIC = "int8-dynamic"


def round_activations(x: jax.Array, axes: int) -> jax.Array:
    """x with its last `axes` axes (one token's inputs to a matmul) on the int8 grid of that
    token: q * s, s = max |x| / 127, q = round(x / s)."""
    reduced = tuple(range(x.ndim - axes, x.ndim))
    # A token of zeros keeps its zeros on any positive scale: the smallest normal float32
    # (XLA flushes subnormals to zero).
    scale = jnp.maximum(jnp.max(jnp.abs(x), axis=reduced, keepdims=True) / INT8_MAX,
                        jnp.finfo(jnp.float32).tiny)
    return jnp.clip(jnp.round(x / scale), -INT8_MAX, INT8_MAX) * scale


@dataclasses.dataclass(frozen=True)
class RoundToInt8(Projection):
    """Rounds each matmul's input to int8 per token: over the weight's input axes for a
    projection, over D for the LM head (whose table's inputs are its trailing axis)."""

    def __call__(self, role: str, x: jax.Array) -> jax.Array:
        return round_activations(x, IN_AXES[role] if IN_AXES[role] > 0 else 1)


def activation_projection(config: ModelConfig) -> Projection:
    """The projection the model under `config` runs with: rounding for a config whose
    activations are int8-dynamic (`quantize.model_config`), the inputs as they are otherwise."""
    if config.activation_quant is None:
        return AS_IS
    if config.activation_quant == INT8_DYNAMIC:
        return RoundToInt8()
    raise GemmaforgeError(f"activation_quant {config.activation_quant!r} is not one gemmaforge "
                          f"runs; expected None or {INT8_DYNAMIC!r}")
