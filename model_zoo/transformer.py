"""The Gemma decoder (Gemma 1, 2 and 3 text) and its pure functional entry points.

Parameters travel as a plain nested dict of arrays (`Params`), the NNX state of `Gemma` as a
pure dict: `{"embedder": {"embedding": [V, D]}, "layers": {0: {"attn": {"q_proj": ...}}}}`.
`apply` merges them into the module inside the trace, so every entry point is a pure function
of (params, tokens, positions, cache) that jit, jax.export and the format writers can take.
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
from model_zoo.layers import PLAIN, Attention, Embedder, FeedForward, Projection, RMSNorm
from model_zoo.tree import get_path, path_name, set_path

Params = dict[str, Any]


class Block(nnx.Module):
    """One decoder layer: attention and GeGLU, each inside pre (and for Gemma 2/3 post) norms."""

    def __init__(self, config: ModelConfig, index: int, *, key: jax.Array,
                 projection: Projection = PLAIN):
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
                 *, fused: bool,
                 fused_rope: bool = False) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """x [B, T, D] -> ([B, T, D], updated layer cache)."""
        attended, cache = self.attn(self.pre_attn_norm(x, fused=fused), positions, cache,
                                    fused=fused, fused_rope=fused_rope)
        if self.post_attn_norm is not None:
            attended = self.post_attn_norm(attended, fused=fused)
        x = x + attended
        hidden = self.mlp(self.pre_ffw_norm(x, fused=fused))
        if self.post_ffw_norm is not None:
            hidden = self.post_ffw_norm(hidden, fused=fused)
        return x + hidden, cache

    def write_cache(self, x: jax.Array, positions: jax.Array,
                    cache: tuple[jax.Array, jax.Array], *, fused: bool,
                    fused_rope: bool = False) -> tuple[jax.Array, jax.Array]:
        """Only the cache write of this layer: what a prefill of the last layer needs."""
        return self.attn.write_cache(self.pre_attn_norm(x, fused=fused), positions, cache,
                                     fused=fused, fused_rope=fused_rope)


class Gemma(nnx.Module):
    """Embedding, `num_layers` blocks, final norm, tied LM head with optional soft-cap;
    `projection` (`layers.Projection`) hands each projection its input."""

    def __init__(self, config: ModelConfig, *, key: jax.Array, projection: Projection = PLAIN):
        self.config = config
        self.embedder = Embedder(config, key=jax.random.fold_in(key, 0))
        self.layers = nnx.List([Block(config, i, key=jax.random.fold_in(key, 1 + i),
                                      projection=projection)
                                for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.embed_dim, config,
                                  key=jax.random.fold_in(key, 1 + config.num_layers))

    def __call__(self, tokens: jax.Array, positions: jax.Array, cache: KVCache, *,
                 fused: bool = True,
                 logits_index: jax.Array | None = None,
                 table_left_head: bool = True,
                 logits: bool = True,
                 fused_rope: bool = False,
                 fused_lookup: bool = False) -> tuple[jax.Array | None, KVCache]:
        """Runs T new tokens per row through the model, writing them into the cache.

        Args:
          tokens: int32 [B, T].
          positions: int32 [B, T], absolute positions, contiguous within each row.
          cache: the KV cache; slot s holds position s.
          fused: trace the fused ops as composites (True) or as their plain decomposition.
          fused_rope: with `fused`, the rotary embedding as a composite too (ONNX only).
          fused_lookup: the tied table's two composites, with or without `fused`: the
            embedding lookup and the final soft-cap (quantized LiteRT only: they let
            ai-edge-quantizer store the table once, see `composites.embedding_lookup` and
            `composites.logit_soft_cap`).
          logits_index: int32 [B]: compute logits only at this index of T (the LM head is the
            largest matmul; prefill needs one row of it). None: logits at every position.
          table_left_head: the LM head's contraction form (see `Embedder.decode`).
          logits: False fills the cache only (a prefill whose logits nobody reads): the last
            layer stops at its cache write and no head is computed. Fused ops are composites,
            which dead-code elimination keeps, so this has to be said, not inferred.
        Returns:
          (float32 logits [B, T, V] or [B, 1, V] (None without logits), the updated cache).
        """
        x = self.embedder.encode(tokens, fused=fused_lookup)
        new_layers = []
        for index, block in enumerate(self.layers):
            if not logits and index == len(self.layers) - 1:
                new_layers.append(block.write_cache(x, positions, cache.layer(index),
                                                    fused=fused, fused_rope=fused_rope))
                return None, KVCache.from_layers(new_layers)
            x, layer_cache = block(x, positions, cache.layer(index), fused=fused,
                                   fused_rope=fused_rope)
            new_layers.append(layer_cache)
        if logits_index is not None:
            # [B, T, D] -> [B, 1, D]
            x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)
        x = self.final_norm(x, fused=fused)
        out = self.embedder.decode(x, table_left=table_left_head).astype(jnp.float32)
        cap = self.config.final_logit_softcap
        if cap is not None:
            out = composites.logit_soft_cap(out, cap, fused=fused or fused_lookup)
        return out, KVCache.from_layers(new_layers)


@functools.cache
def abstract_model(config: ModelConfig) -> Gemma:
    """`Gemma(config)` with `jax.ShapeDtypeStruct`s for parameters: nothing is allocated."""
    return nnx.eval_shape(lambda: Gemma(config, key=jax.random.key(0)))


@functools.cache
def graphdef(config: ModelConfig) -> nnx.GraphDef:
    """The static structure of `Gemma(config)`; with a `Params` dict it makes the module."""
    return nnx.graphdef(abstract_model(config))


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
          cache: KVCache, *, fused: bool = True,
          logits_index: jax.Array | None = None, table_left_head: bool = True,
          logits: bool = True, fused_rope: bool = False,
          fused_lookup: bool = False) -> tuple[jax.Array | None, KVCache]:
    """`Gemma.__call__` as a pure function of the float parameters. See there for shapes. (A
    quantized tree is dequantized first by its caller: `quantize.dequantize_params`.)"""
    model = nnx.merge(graphdef(config), params)
    return model(tokens, positions, cache, fused=fused, logits_index=logits_index,
                 table_left_head=table_left_head, logits=logits, fused_rope=fused_rope,
                 fused_lookup=fused_lookup)


def count_params(config: ModelConfig) -> tuple[int, int]:
    """(embedding, non-embedding) parameter counts from `jax.eval_shape`: nothing allocated."""
    sizes = {path: leaf.size for path, leaf in
             jax.tree_util.tree_leaves_with_path(abstract_params(config))}
    total = sum(sizes.values())
    embedding = abstract_params(config)["embedder"]["embedding"].size
    return embedding, total - embedding
