"""Pure attention-mask helpers. Cache slot s holds the token at absolute position s."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from model_zoo.composites import MASK_VALUE


def visible(positions: jax.Array, cache_len: int, window: int | None) -> jax.Array:
    """Which cache slots each query may attend to.

    Args:
      positions: int [B, T], absolute position of each query.
      cache_len: S, the number of cache slots.
      window: local attention span W (query_pos - key_pos < W), or None for global attention.
    Returns:
      bool [B, T, S].
    """
    slots = jnp.arange(cache_len, dtype=positions.dtype)
    # [B, T, 1] against [S]
    query = positions[..., None]
    mask = slots <= query
    if window is not None:
        mask = mask & (query - slots < window)
    return mask


def additive(mask: jax.Array) -> jax.Array:
    """bool [B, T, S] -> float32 [B, 1, T, S]: 0 where visible, MASK_VALUE elsewhere."""
    return jnp.where(mask, 0.0, MASK_VALUE).astype(jnp.float32)[:, None]
