"""The Gemma building blocks in Flax NNX. Each layer takes the config; shapes use the letters

  B batch, T new tokens, S cache slots, D embed_dim, N query heads, K kv heads, H head_dim,
  F hidden_dim (one GeGLU branch), V vocab.

Every parameter carries `logical_axes` metadata, which `model_zoo.sharding` maps onto a mesh.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_zoo import composites, masks
from model_zoo.config import LayerSpec, ModelConfig
from model_zoo.lowering import Head, Lowering
from model_zoo.quantized import IN_AXES

# Random init of norm scales: Gemma initialises them at 0 (a multiplier of exactly 1), which
# would let a norm that ignores its weight, or forgets the +1, pass every random-weight test.
NORM_INIT_STDDEV = 0.1


def _param(key: jax.Array, index: int, shape: tuple[int, ...], stddev: float,
           axes: tuple) -> nnx.Param:
    """A normal(0, stddev) float32 parameter drawn from `fold_in(key, index)`.

    Modules take one PRNG key and fold in a distinct index per parameter: drawing each from
    `nnx.Rngs` costs ~17 ms of tracing per parameter, seconds for `jax.eval_shape` of a 9B model.
    The metadata keeps the logical axes (for sharding) and the stddev (for `init_params`).
    """
    value = jax.random.normal(jax.random.fold_in(key, index), shape, jnp.float32) * stddev
    return nnx.Param(value, logical_axes=axes, init_stddev=stddev)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, computed in float32, multiplied by (1 + scale)."""

    def __init__(self, dim: int, config: ModelConfig, *, key: jax.Array):
        self.scale = _param(key, 0, (dim,), NORM_INIT_STDDEV, ("norm",))
        self.epsilon = config.norm_eps

    def __call__(self, x: jax.Array, *, fused: bool) -> jax.Array:
        """x [..., dim] -> [..., dim]."""
        return composites.rms_norm(x, 1.0 + self.scale[...], epsilon=self.epsilon, fused=fused)


# The LM head in its Head.TOKENS_LEFT form; a converter that makes a fully connected op of it
# names that op's output by this equation, which is how a quantizer can find the head.
LM_HEAD_EQUATION = "BTD,VD->BTV"


class Embedder(nnx.Module):
    """The tied embedding: token lookup scaled by sqrt(D), and the LM head."""

    def __init__(self, config: ModelConfig, *, key: jax.Array):
        # Rows of unit norm, as in trained Gemma; times sqrt(D) the residual starts at RMS 1.
        self.embedding = _param(key, 0, (config.vocab_size, config.embed_dim),
                                1.0 / math.sqrt(config.embed_dim), ("vocab", "embed"))
        self.embed_dim = config.embed_dim
        self.activations = config.activation_quant

    def encode(self, tokens: jax.Array, *, fused: bool = False) -> jax.Array:
        """int [B, T] -> [B, T, D]; `fused`: the lookup as a composite (Composites.TABLE)."""
        x = composites.embedding_lookup(self.embedding[...], tokens, fused=fused)
        return x * jnp.sqrt(self.embed_dim).astype(x.dtype)

    def decode(self, x: jax.Array, *, head: Head = Head.TABLE_LEFT) -> jax.Array:
        """[B, T, D] -> logits [B, T, V], the contraction in the form `head` names."""
        x = round_activations(x, 1, self.activations)
        if head is Head.TOKENS_LEFT:
            return jnp.einsum(LM_HEAD_EQUATION, x, self.embedding[...])
        logits = jax.lax.dot_general(self.embedding[...], x, (((1,), (2,)), ((), ())))
        # [V, B, T] -> [B, T, V]
        return jnp.transpose(logits, (1, 2, 0))


def apply_rope(x: jax.Array, positions: jax.Array, base: float, scale: float, *,
               fused: bool = False) -> jax.Array:
    """Rotary embedding of x [B, T, N, H] at int positions [B, T]; see `composites._rope`."""
    return composites.rope(x, positions, base=base, scale=scale, fused=fused)


# Calibration (`quantize.gptq.projection_inputs`) sets this to a list and runs the model eagerly:
# every projection then appends (its parameter's role, its input as [tokens, in_features]), in
# the order the layers run. None (always, outside calibration) records nothing.
PROJECTION_INPUTS: list | None = None


INT8_MAX = 127


def round_activations(x: jax.Array, axes: int, mode: str | None) -> jax.Array:
    """x with its last `axes` axes (one token's inputs to a matmul) on the int8 grid of that
    token, for `mode` "int8-dynamic" (ModelConfig.activation_quant): q * s, s = max |x| / 127,
    q = round(x / s). None: x as it is."""
    if mode is None:
        return x
    reduced = tuple(range(x.ndim - axes, x.ndim))
    # A token of zeros keeps its zeros on any positive scale: the smallest normal float32
    # (XLA flushes subnormals to zero).
    scale = jnp.maximum(jnp.max(jnp.abs(x), axis=reduced, keepdims=True) / INT8_MAX,
                        jnp.finfo(jnp.float32).tiny)
    return jnp.clip(jnp.round(x / scale), -INT8_MAX, INT8_MAX) * scale


def project(role: str, equation: str, x: jax.Array, weight: jax.Array,
            activations: str | None = None) -> jax.Array:
    """jnp.einsum(equation, x, weight) for the projection `role` (q_proj, ..., down_proj),
    its input rounded first as `activations` says (`round_activations`)."""
    if PROJECTION_INPUTS is not None:
        inputs = math.prod(weight.shape[:IN_AXES[role]])
        PROJECTION_INPUTS.append((role, np.asarray(x, np.float32).reshape(-1, inputs)))
    return jnp.einsum(equation, round_activations(x, IN_AXES[role], activations), weight)


class Attention(nnx.Module):
    """Multi-query / multi-head / grouped-query attention over an explicit cache."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, *, key: jax.Array):
        d, n, k, h = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
        fan_in = 1.0 / math.sqrt(d)
        self.q_proj = _param(key, 0, (d, n, h), fan_in, ("embed", "heads", "head_dim"))
        self.k_proj = _param(key, 1, (d, k, h), fan_in, ("embed", "kv_heads", "head_dim"))
        self.v_proj = _param(key, 2, (d, k, h), fan_in, ("embed", "kv_heads", "head_dim"))
        self.o_proj = _param(key, 3, (n, h, d), 1.0 / math.sqrt(n * h),
                             ("heads", "head_dim", "embed"))
        norm_keys = jax.random.split(jax.random.fold_in(key, 4))
        self.q_norm = RMSNorm(h, config, key=norm_keys[0]) if config.use_qk_norm else None
        self.k_norm = RMSNorm(h, config, key=norm_keys[1]) if config.use_qk_norm else None
        self.spec = spec
        self.scale = config.query_scale
        self.logit_cap = config.attn_logit_softcap
        self.activations = config.activation_quant

    def __call__(self, x: jax.Array, positions: jax.Array, cache: tuple[jax.Array, jax.Array],
                 lowering: Lowering) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Attends the T new tokens to the cache after writing them into it.

        Args:
          x: [B, T, D] normalised inputs.
          positions: int32 [B, T], contiguous within each row.
          cache: (k, v), each [B, K, S, H].
        Returns:
          ([B, T, D], the updated (k, v)).
        """
        q = project("q_proj", "BTD,DNH->BTNH", x, self.q_proj[...], self.activations)
        if self.q_norm is not None:
            q = self.q_norm(q, fused=lowering.core)
        q = apply_rope(q, positions, self.spec.rope_base, self.spec.rope_scale,
                       fused=lowering.rope)
        k_cache, v_cache = self.write_cache(x, positions, cache, lowering)
        mask = masks.additive(masks.visible(positions, k_cache.shape[2], self.spec.window))
        # [B, K, S, H] -> [B, S, K, H]
        attended = composites.scaled_dot_product_attention(
            q, k_cache.transpose(0, 2, 1, 3), v_cache.transpose(0, 2, 1, 3), mask,
            scale=self.scale, logit_cap=self.logit_cap, fused=lowering.core)
        out = project("o_proj", "BTNH,NHD->BTD", attended, self.o_proj[...], self.activations)
        return out, (k_cache, v_cache)

    def write_cache(self, x: jax.Array, positions: jax.Array,
                    cache: tuple[jax.Array, jax.Array],
                    lowering: Lowering) -> tuple[jax.Array, jax.Array]:
        """Projects the T new tokens to keys and values and writes them into the cache.

        Args:
          x: [B, T, D] normalised inputs.
          positions: int32 [B, T], contiguous within each row.
          cache: (k, v), each [B, K, S, H].
        Returns:
          the updated (k, v).
        """
        k = project("k_proj", "BTD,DKH->BTKH", x, self.k_proj[...], self.activations)
        v = project("v_proj", "BTD,DKH->BTKH", x, self.v_proj[...], self.activations)
        if self.k_norm is not None:
            k = self.k_norm(k, fused=lowering.core)
        k = apply_rope(k, positions, self.spec.rope_base, self.spec.rope_scale,
                       fused=lowering.rope)
        k_cache, v_cache = cache
        # [B, T, K, H] -> [B, K, T, H]
        return composites.kv_cache_update(
            k_cache, v_cache, positions[:, 0], k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3),
            window=self.spec.window, fused=lowering.core)


class FeedForward(nnx.Module):
    """GeGLU: gelu_tanh(x W_gate) * (x W_up), projected back by W_down."""

    def __init__(self, config: ModelConfig, *, key: jax.Array):
        d, f = config.embed_dim, config.hidden_dim
        self.gate_proj = _param(key, 0, (d, f), 1.0 / math.sqrt(d), ("embed", "mlp"))
        self.up_proj = _param(key, 1, (d, f), 1.0 / math.sqrt(d), ("embed", "mlp"))
        self.down_proj = _param(key, 2, (f, d), 1.0 / math.sqrt(f), ("mlp", "embed"))
        self.activations = config.activation_quant

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        gate = jax.nn.gelu(project("gate_proj", "BTD,DF->BTF", x, self.gate_proj[...],
                                   self.activations), approximate=True)
        up = project("up_proj", "BTD,DF->BTF", x, self.up_proj[...], self.activations)
        return project("down_proj", "BTF,FD->BTD", gate * up, self.down_proj[...],
                       self.activations)
