"""The Gemma decoder (Gemma 1, 2 and 3 text) and its pure functional entry points.

Parameters travel as a plain nested dict of arrays (`Params`), the NNX state of `Gemma` as a
pure dict: `{"embedder": {"embedding": [V, D]}, "layers": {0: {"attn": {"q_proj": ...}}}}`.
`apply` merges them into the module inside the trace, so every entry point is a pure function
of (params, tokens, positions, cache) that jit and jax.export can take; a `Lowering` says how
it is traced.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_zoo import composites
from model_zoo.cache import KVCache
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import AS_IS, Attention, Embedder, FeedForward, Projection, RMSNorm
from model_zoo.lowering import FUSED, Logits, Lowering
from model_zoo.tree import flatten, get_path, path_name, set_path

Params = dict[str, Any]
EMBEDDING = "embedder.embedding"  # the tied table's dotted name: token lookup and LM head


class Block(nnx.Module):
    """One decoder layer: attention and GeGLU, each inside pre (and for Gemma 2/3 post) norms."""

    def __init__(self, config: ModelConfig, index: int, *, key: jax.Array,
                 projection: Projection = AS_IS):
        d = config.embed_dim
        keys = jax.random.split(key, 6)
        self.pre_attn_norm = RMSNorm(d, config, key=keys[0])
        self.attn = Attention(config, config.layer(index), key=keys[1], projection=projection)
        self.post_attn_norm = (RMSNorm(d, config, key=keys[2]) if config.use_post_attn_norm
                               else None)
        self.pre_ffw_norm = RMSNorm(d, config, key=keys[3])
        self.mlp = FeedForward(config, key=keys[4], projection=projection)
        self.post_ffw_norm = RMSNorm(d, config, key=keys[5]) if config.use_post_ffw_norm else None

    def __call__(self, x: jax.Array, positions: jax.Array, cache: tuple[jax.Array, jax.Array],
                 lowering: Lowering) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [B, T, D] -> ([B, T, D], updated layer cache)."""
        fused = lowering.core
        attended, cache = self.attn(self.pre_attn_norm(x, fused=fused), positions, cache,
                                    lowering)
        if self.post_attn_norm is not None:
            attended = self.post_attn_norm(attended, fused=fused)
        x = x + attended
        hidden = self.mlp(self.pre_ffw_norm(x, fused=fused))
        if self.post_ffw_norm is not None:
            hidden = self.post_ffw_norm(hidden, fused=fused)
        return x + hidden, cache

    def write_cache(self, x: jax.Array, positions: jax.Array,
                    cache: tuple[jax.Array, jax.Array],
                    lowering: Lowering) -> tuple[jax.Array, jax.Array]:
        """Only the cache write of this layer: what a prefill of the last layer needs."""
        return self.attn.write_cache(self.pre_attn_norm(x, fused=lowering.core), positions,
                                     cache, lowering)


class Gemma(nnx.Module):
    """Embedding, `num_layers` blocks, final norm, tied LM head with optional soft-cap;
    `projection` (`layers.Projection`) hands each matmul with a weight its input."""

    def __init__(self, config: ModelConfig, *, key: jax.Array, projection: Projection = AS_IS):
        self.config = config
        self.embedder = Embedder(config, key=jax.random.fold_in(key, 0), projection=projection)
        self.layers = nnx.List([Block(config, i, key=jax.random.fold_in(key, 1 + i),
                                      projection=projection)
                                for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.embed_dim, config,
                                  key=jax.random.fold_in(key, 1 + config.num_layers))

    def __call__(self, tokens: jax.Array, positions: jax.Array, cache: KVCache,
                 lowering: Lowering = FUSED, *,
                 logits_index: jax.Array | None = None) -> tuple[jax.Array | None, KVCache]:
        """Runs T new tokens per row through the model, writing them into the cache.

        Args:
          tokens: int32 [B, T].
          positions: int32 [B, T], absolute positions, contiguous within each row.
          cache: the KV cache; slot s holds position s.
          lowering: how the forward is traced (`model_zoo.lowering`); the numbers are the same.
          logits_index: int32 [B], the index of T that gets logits, with Logits.AT_INDEX only.
        Returns:
          (float32 logits [B, T, V], [B, 1, V] at `logits_index`, or None with Logits.NONE;
          the updated cache).
        """
        if (logits_index is not None) != (lowering.logits is Logits.AT_INDEX):
            raise GemmaforgeError("logits_index goes with Logits.AT_INDEX and only with it")
        x = self.embedder.encode(tokens, fused=lowering.table)
        new_layers = []
        for index, block in enumerate(self.layers):
            if lowering.logits is Logits.NONE and index == len(self.layers) - 1:
                new_layers.append(block.write_cache(x, positions, cache.layer(index), lowering))
                return None, KVCache.from_layers(new_layers)
            x, layer_cache = block(x, positions, cache.layer(index), lowering)
            new_layers.append(layer_cache)
        if logits_index is not None:
            # [B, T, D] -> [B, 1, D]
            x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)
        x = self.final_norm(x, fused=lowering.core)
        out = self.embedder.decode(x, head=lowering.head).astype(jnp.float32)
        cap = self.config.final_logit_softcap
        if cap is not None:
            out = composites.logit_soft_cap(out, cap, fused=lowering.core or lowering.table)
        return out, KVCache.from_layers(new_layers)


@functools.cache
def abstract_model(config: ModelConfig, projection: Projection = AS_IS) -> Gemma:
    """`Gemma(config, projection=projection)` with `jax.ShapeDtypeStruct`s for parameters:
    nothing is allocated."""
    return nnx.eval_shape(lambda: Gemma(config, key=jax.random.key(0), projection=projection))


@functools.cache
def graphdef(config: ModelConfig, projection: Projection = AS_IS) -> nnx.GraphDef:
    """The static structure of `Gemma(config, projection=projection)`; with a `Params` dict it
    makes the module."""
    return nnx.graphdef(abstract_model(config, projection))


def abstract_params(config: ModelConfig) -> Params:
    """The parameter tree as `jax.ShapeDtypeStruct`s: nothing is allocated."""
    return nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))


def iter_random_params(config: ModelConfig, seed: int = 0) -> Iterator[tuple[tuple, np.ndarray]]:
    """Seeded random float32 parameters as (path, numpy array), drawn one at a time.

    Each parameter has its own generator seeded by (seed, crc32 of its path) and the stddev its
    layer declares, so any one can be drawn again alone: an exporter can stream a model that
    never exists whole in memory. (XLA takes seconds to compile a random init even for the
    tiny presets, and ~45 s for the 270M model, where numpy takes ~2 s.)
    """
    for path, var in nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param)):
        rng = np.random.default_rng([seed, zlib.crc32(path_name(path).encode())])
        stddev = np.float32(var.get_metadata()["init_stddev"])
        yield path, rng.standard_normal(var.get_value().shape, np.float32) * stddev


def init_params(config: ModelConfig, seed: int = 0, *, shardings: Any = None) -> Params:
    """Seeded random float32 parameters (`iter_random_params`) on the device, each placed with
    its entry of `shardings` when given (a tree shaped like the parameters; see
    `model_zoo.sharding`)."""
    params: Params = {}
    for path, value in iter_random_params(config, seed):
        sharding = get_path(shardings, path) if shardings is not None else None
        set_path(params, path, jax.device_put(value, sharding))
    return params


def apply(config: ModelConfig, params: Params, tokens: jax.Array, positions: jax.Array,
          cache: KVCache, lowering: Lowering = FUSED, *,
          logits_index: jax.Array | None = None,
          projection: Projection = AS_IS) -> tuple[jax.Array | None, KVCache]:
    """`Gemma.__call__` as a pure function of the float parameters, the model built with
    `projection` (see `Gemma`). See there for shapes. (A quantized tree is dequantized first by
    its caller, and a model with rounded activations takes the projection that rounds them:
    `quantize.dequantize_params`, `quantize.activation_projection`.)"""
    model = nnx.merge(graphdef(config, projection), params)
    return model(tokens, positions, cache, lowering, logits_index=logits_index)


def weight_specs(config: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Dotted parameter names -> float32 shape and dtype, in the parameters' order: what the
    weights file holds and what an exported program takes."""
    return {path_name(path): jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype)
            for path, leaf in flatten(abstract_params(config))}


def count_params(config: ModelConfig) -> tuple[int, int]:
    """(embedding, non-embedding) parameter counts from `jax.eval_shape`: nothing allocated."""
    sizes = {path: leaf.size for path, leaf in
             jax.tree_util.tree_leaves_with_path(abstract_params(config))}
    total = sum(sizes.values())
    embedding = abstract_params(config)["embedder"]["embedding"].size
    return embedding, total - embedding
