"""The Gemma building blocks in Flax NNX. Each layer takes the config; shapes use the letters

  B batch, T new tokens, S cache slots, D embed_dim, N query heads, K kv heads, H head_dim,
  F hidden_dim (one GeGLU branch), V vocab.

Every parameter carries `logical_axes` metadata, which `model_zoo.sharding` maps onto a mesh.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from model_zoo import composites, masks
from model_zoo.config import LayerSpec, ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.lowering import Head, Lowering

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


@dataclasses.dataclass(frozen=True)
class Projection:
    """What every matmul with a weight hands that weight: its input, as it is. A caller that
    needs to see or change the inputs builds the model with a subclass: calibration records
    them (`quantize.gptq`), a model with dynamic int8 activations rounds them
    (`quantize.activations`). The model itself keeps nothing and rounds nothing."""

    def __call__(self, role: str, x: jax.Array) -> jax.Array:
        """The input `x` of the matmul with the weight `role` (q_proj, ..., down_proj, or
        "embedding" for the LM head: x [B, T, D])."""
        return x


AS_IS = Projection()


class Embedder(nnx.Module):
    """The tied embedding: token lookup scaled by sqrt(D), and the LM head."""

    def __init__(self, config: ModelConfig, *, key: jax.Array, projection: Projection = AS_IS):
        # Rows of unit norm, as in trained Gemma; times sqrt(D) the residual starts at RMS 1.
        self.embedding = _param(key, 0, (config.vocab_size, config.embed_dim),
                                1.0 / math.sqrt(config.embed_dim), ("vocab", "embed"))
        self.embed_dim = config.embed_dim
        self.projection = projection

    def encode(self, tokens: jax.Array, *, fused: bool = False) -> jax.Array:
        """int [B, T] -> [B, T, D]; `fused`: the lookup as a composite (Composites.TABLE)."""
        x = composites.embedding_lookup(self.embedding[...], tokens, fused=fused)
        return x * jnp.sqrt(self.embed_dim).astype(x.dtype)

    def decode(self, x: jax.Array, *, head: Head = Head.TABLE_LEFT) -> jax.Array:
        """[B, T, D] -> logits [B, T, V], the contraction in the form `head` names."""
        x = self.projection("embedding", x)
        if head is Head.TOKENS_LEFT:
            return jnp.einsum(LM_HEAD_EQUATION, x, self.embedding[...])
        logits = jax.lax.dot_general(self.embedding[...], x, (((1,), (2,)), ((), ())))
        # [V, B, T] -> [B, T, V]
        return jnp.transpose(logits, (1, 2, 0))


def apply_rope(x: jax.Array, positions: jax.Array, base: float, scale: float, *,
               fused: bool = False) -> jax.Array:
    """Rotary embedding of x [B, T, N, H] at int positions [B, T]; see `composites._rope`."""
    return composites.rope(x, positions, base=base, scale=scale, fused=fused)


# How many of a weight's axes are the matmul's input features: leading axes (> 0) for the
# projections (x @ W), trailing (< 0) for the table, whose rows are the LM head's outputs.
IN_AXES = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1,
           "down_proj": 1, "embedding": -1}


def is_matrix(name: str) -> bool:
    """Whether the parameter `name` (dotted) is a matrix the model multiplies by (a projection
    or the table), by its role (the last part)."""
    return name.rsplit(".", 1)[-1] in IN_AXES


def in_axes(name: str) -> int:
    """IN_AXES of the parameter `name` (dotted), by its role (the last part)."""
    if not is_matrix(name):
        raise GemmaforgeError(f"{name} is not a matrix gemmaforge knows how to quantize")
    return IN_AXES[name.rsplit(".", 1)[-1]]


def project(module: nnx.Module, role: str, equation: str, x: jax.Array) -> jax.Array:
    """jnp.einsum(equation, x, W) for the projection `role` (q_proj, ..., down_proj) of `module`
    (W its parameter of that name), the input as the module's `projection` hands it."""
    return jnp.einsum(equation, module.projection(role, x), getattr(module, role)[...])


class Attention(nnx.Module):
    """Multi-query / multi-head / grouped-query attention over an explicit cache."""

    def __init__(self, config: ModelConfig, spec: LayerSpec, *, key: jax.Array,
                 projection: Projection = AS_IS):
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
        self.projection = projection

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
        q = project(self, "q_proj", "BTD,DNH->BTNH", x)
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
        out = project(self, "o_proj", "BTNH,NHD->BTD", attended)
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
        k = project(self, "k_proj", "BTD,DKH->BTKH", x)
        v = project(self, "v_proj", "BTD,DKH->BTKH", x)
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

    def __init__(self, config: ModelConfig, *, key: jax.Array, projection: Projection = AS_IS):
        d, f = config.embed_dim, config.hidden_dim
        self.gate_proj = _param(key, 0, (d, f), 1.0 / math.sqrt(d), ("embed", "mlp"))
        self.up_proj = _param(key, 1, (d, f), 1.0 / math.sqrt(d), ("embed", "mlp"))
        self.down_proj = _param(key, 2, (f, d), 1.0 / math.sqrt(f), ("mlp", "embed"))
        self.projection = projection

    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, D]."""
        gate = jax.nn.gelu(project(self, "gate_proj", "BTD,DF->BTF", x), approximate=True)
        up = project(self, "up_proj", "BTD,DF->BTF", x)
        return project(self, "down_proj", "BTF,FD->BTD", gate * up)
