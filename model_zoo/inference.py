"""Prefill and decode on the JAX model: prompts of any length (in one shot or in chunks), rows of
different lengths in one batch, and the checks that keep the cache from being overrun.

Rows shorter than the longest prompt are padded on the right. Their padding writes cache slots
past the row's length, which no query of that row can see (a query at position p sees slots
<= p) and which its next decode steps overwrite before reading.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model_zoo.cache import KVCache
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import AS_IS, Projection
from model_zoo.lowering import Composites, Logits, Lowering
from model_zoo.transformer import Params, apply


@functools.partial(jax.jit, static_argnames=("config", "composites", "projection"),
                   donate_argnames=("cache",))
def step(config: ModelConfig, params: Params, tokens: jax.Array, positions: jax.Array,
         cache: KVCache, logits_index: jax.Array, *,
         composites: Composites = Composites.CORE,
         projection: Projection = AS_IS) -> tuple[jax.Array, KVCache]:
    """One jitted forward over T tokens per row; logits [B, V] at `logits_index` [B] only.

    The cache is donated: its buffers are updated in place and the `cache` passed in must not
    be used again (the same holds for `prefill` and `decode`, which call this).
    """
    logits, cache = apply(config, params, tokens, positions, cache,
                          Lowering(composites, logits=Logits.AT_INDEX), logits_index=logits_index,
                          projection=projection)
    return logits[:, 0], cache


DEFAULT_MAX_LEN = 1024


def default_max_len(config: ModelConfig) -> int:
    """The cache length used unless one is asked for: the context, at most 1024 slots."""
    return min(config.max_context, DEFAULT_MAX_LEN)


def check_fits(needed: int, cache: KVCache) -> None:
    """Refuses a sequence of `needed` tokens that the cache cannot hold."""
    if needed > cache.max_len:
        raise GemmaforgeError(
            f"the sequence needs {needed} cache slots but the cache holds {cache.max_len}; "
            "raise --max-len or shorten the prompt / --max-new-tokens")


def prefill(config: ModelConfig, params: Params, prompts: Sequence[Sequence[int]],
            cache: KVCache, *, chunk_size: int | None = None,
            composites: Composites = Composites.CORE,
            projection: Projection = AS_IS) -> tuple[jax.Array, KVCache, np.ndarray]:
    """Writes each prompt into its cache row from position 0.

    Args:
      prompts: B token-id sequences (BOS included), lengths may differ.
      cache: a cache with B rows.
      chunk_size: feed at most this many tokens per step (None: the whole prompt at once).
    Returns:
      (float32 logits [B, V] at each row's last prompt token, the cache, lengths int [B]).
    """
    if len(prompts) != cache.batch_size:
        raise GemmaforgeError(
            f"{len(prompts)} prompts for a cache of {cache.batch_size} rows")
    lengths = np.array([len(p) for p in prompts], dtype=np.int32)
    if lengths.min(initial=1) == 0 or len(prompts) == 0:
        raise GemmaforgeError("every prompt needs at least one token (BOS included)")
    if chunk_size is not None and chunk_size <= 0:
        raise GemmaforgeError(f"chunk size must be positive, got {chunk_size}")
    longest = int(lengths.max())
    check_fits(longest, cache)
    for ids in prompts:
        _check_ids(config, ids)

    chunk = longest if chunk_size is None else chunk_size
    padded = np.full((len(prompts), longest), config.pad_id, dtype=np.int32)
    for row, ids in enumerate(prompts):
        padded[row, : len(ids)] = ids

    last_logits = None
    for start in range(0, longest, chunk):
        width = min(chunk, longest - start)
        width_padded = _bucket(width, cache.max_len - start)
        tokens = np.full((len(prompts), width_padded), config.pad_id, dtype=np.int32)
        tokens[:, :width] = padded[:, start : start + width]
        positions = np.broadcast_to(np.arange(start, start + width_padded, dtype=np.int32),
                                    tokens.shape)
        index = np.clip(lengths - 1 - start, 0, width - 1).astype(np.int32)
        logits, cache = step(config, params, jnp.asarray(tokens), jnp.asarray(positions), cache,
                             jnp.asarray(index), composites=composites, projection=projection)
        ends_here = jnp.asarray((lengths - 1 >= start) & (lengths - 1 < start + width))
        last_logits = logits if last_logits is None else jnp.where(
            ends_here[:, None], logits, last_logits)
    return last_logits, cache, lengths


def decode(config: ModelConfig, params: Params, tokens: Sequence[int] | np.ndarray,
           positions: Sequence[int] | np.ndarray, cache: KVCache, *,
           composites: Composites = Composites.CORE,
           projection: Projection = AS_IS) -> tuple[jax.Array, KVCache]:
    """One new token per row at its own position.

    Args:
      tokens: int [B], the last sampled token of each row.
      positions: int [B], where each goes (a row's length so far).
    Returns:
      (float32 logits [B, V], the cache).
    """
    tokens = np.asarray(tokens, dtype=np.int32).reshape(-1, 1)
    positions = np.asarray(positions, dtype=np.int32).reshape(-1, 1)
    check_fits(int(positions.max()) + 1, cache)
    _check_ids(config, tokens.ravel())
    return step(config, params, jnp.asarray(tokens), jnp.asarray(positions), cache,
                jnp.zeros((tokens.shape[0],), jnp.int32), composites=composites,
                projection=projection)


def _bucket(width: int, room: int) -> int:
    """The padded width of a chunk: the next power of two, so that prompts of nearby lengths
    share one compiled program, or the width itself where padding would run past the cache end
    (a write past the end would be clamped onto earlier slots)."""
    padded = 1 << (width - 1).bit_length()
    return padded if padded <= room else width


def _check_ids(config: ModelConfig, ids: Sequence[int] | np.ndarray) -> None:
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        raise GemmaforgeError(
            f"token id {int(ids.max() if ids.max() >= config.vocab_size else ids.min())} is "
            f"outside the vocabulary of {config.name} (0..{config.vocab_size - 1})")
