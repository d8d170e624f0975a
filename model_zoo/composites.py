"""The fused ops, defined once as `jax.lax.composite` regions with stable names and attributes.

A consumer maps a composite to its own fused kernel by its name (the `odml.*` names are the ones
on-device delegates recognise); one that does not know a name runs the decomposition, which is
exactly the plain computation below. docs/design.md lists which writer maps which.

Every op takes `fused`: True wraps the computation in the composite, False traces the plain
decomposition (`model_zoo.lowering.Composites` says which are fused). Both give identical
numbers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

SDPA = "odml.scaled_dot_product_attention"
RMS_NORM = "odml.rms_norm"
KV_CACHE_UPDATE = "gemmaforge.kv_cache_update"
SOFT_CAP = "gemmaforge.logit_soft_cap"
ROPE = "gemmaforge.rope"
EMBEDDING_LOOKUP = "odml.embedding_lookup"
COMPOSITE_NAMES = (SDPA, RMS_NORM, KV_CACHE_UPDATE, SOFT_CAP, ROPE, EMBEDDING_LOOKUP)

# Added to the logits of masked keys. Finite, so that a fully masked row (padding) stays NaN-free;
# float32's lowest value, which tanh soft-capping is applied before, so it is never capped.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)


def _rms_norm(x: jax.Array, weight: jax.Array, *, epsilon: float) -> jax.Array:
    """x [..., D] normalised over D in float32, times weight [D]; result in x's dtype."""
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = x32 * lax.rsqrt(variance + epsilon)
    return (normed * weight.astype(jnp.float32)).astype(x.dtype)


def _sdpa(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, scale: float,
          logit_cap: float | None = None) -> jax.Array:
    """Grouped-query attention in the layout the `odml.scaled_dot_product_attention` kernels
    expect.

    Args:
      q: queries [B, T, N, H].
      k, v: keys and values [B, S, K, H], N a multiple of K.
      mask: additive mask [B, 1, T, S] (0 visible, MASK_VALUE hidden).
      scale: multiplies the query-key logits.
      logit_cap: soft-cap of the logits (cap * tanh(x / cap)), applied before the mask.
    Returns:
      [B, T, N, H] in q's dtype.
    """
    b, t, n, h = q.shape
    groups = n // k.shape[2]
    # [B, T, K, G, H]
    q = q.reshape(b, t, k.shape[2], groups, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32) * scale
    if logit_cap is not None:
        logits = jnp.tanh(logits / logit_cap) * logit_cap
    # mask [B, 1, T, S] -> [B, 1, 1, T, S]
    logits = logits + mask[:, :, None].astype(jnp.float32)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    # [B, T, N, H]
    return out.reshape(b, t, n, h).astype(q.dtype)


def _kv_cache_update(k_cache: jax.Array, v_cache: jax.Array, start: jax.Array, k_new: jax.Array,
                     v_new: jax.Array, *, kv_cache_max: int,
                     window: int) -> tuple[jax.Array, jax.Array]:
    """Writes T new entries into each cache row at its own start slot.

    Args:
      k_cache, v_cache: [B, K, S, H] with S == kv_cache_max.
      start: int32 [B], first slot written in each row.
      k_new, v_new: [B, K, T, H].
      kv_cache_max, window: attributes for consumers whose attention op writes the cache
        itself: the cache length and the layer's local window (0: global).
    Returns:
      The updated (k_cache, v_cache).
    """
    del kv_cache_max, window
    if k_cache.shape[0] == 1:
        # One row (every on-device signature): a plain dynamic_update_slice, no scatter.
        index = (0, 0, start[0], 0)
        return (lax.dynamic_update_slice(k_cache, k_new.astype(k_cache.dtype), index),
                lax.dynamic_update_slice(v_cache, v_new.astype(v_cache.dtype), index))

    def write_row(cache, new, row_start):
        return lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, row_start, 0))

    return (jax.vmap(write_row)(k_cache, k_new, start),
            jax.vmap(write_row)(v_cache, v_new, start))


def rope_angles(positions: jax.Array, head_dim: int, base: float, scale: float) -> jax.Array:
    """Rotation angles of the rotary embedding: float32 [..., H/2] for int positions [...]."""
    exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
    inv_freq = 1.0 / (base**exponents) / scale
    return positions.astype(jnp.float32)[..., None] * inv_freq


def _rope(x: jax.Array, positions: jax.Array, *, base: float, scale: float) -> jax.Array:
    """Rotary embedding, rotating the two halves of H (Gemma's and HF's convention).

    Args:
      x: [B, T, N, H].
      positions: int [B, T].
      base: wavelength base.
      scale: linear position scaling (positions / scale).
    Returns:
      [B, T, N, H] in x's dtype.
    """
    # [B, T, H/2] -> [B, T, 1, H/2]
    angles = rope_angles(positions, x.shape[-1], base, scale)[:, :, None, :]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


def _soft_cap(x: jax.Array, *, cap: float) -> jax.Array:
    """cap * tanh(x / cap), elementwise."""
    return jnp.tanh(x / cap) * cap


def _embedding_lookup(ids: jax.Array, table: jax.Array) -> jax.Array:
    """Rows `ids` (int32 [M]) of `table` [V, D] -> [M, D]."""
    return jnp.take(table, ids, axis=0)


_rms_norm_composite = lax.composite(_rms_norm, name=RMS_NORM)
_embedding_lookup_composite = lax.composite(_embedding_lookup, name=EMBEDDING_LOOKUP)
_soft_cap_composite = lax.composite(_soft_cap, name=SOFT_CAP)
_sdpa_composite = lax.composite(_sdpa, name=SDPA)
_kv_cache_update_composite = lax.composite(_kv_cache_update, name=KV_CACHE_UPDATE)
_rope_composite = lax.composite(_rope, name=ROPE)


def rms_norm(x: jax.Array, weight: jax.Array, *, epsilon: float, fused: bool) -> jax.Array:
    """RMSNorm of x [..., D] with the full multiplier `weight` [D] (Gemma's 1 + w, folded)."""
    op = _rms_norm_composite if fused else _rms_norm
    return op(x, weight, epsilon=epsilon)


def scaled_dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                                 scale: float, logit_cap: float | None,
                                 fused: bool) -> jax.Array:
    """See `_sdpa`. `logit_cap` None leaves the attribute out of the composite."""
    op = _sdpa_composite if fused else _sdpa
    attributes = {"scale": float(scale)}
    if logit_cap is not None:
        attributes["logit_cap"] = float(logit_cap)
    return op(q, k, v, mask, **attributes)


def kv_cache_update(k_cache: jax.Array, v_cache: jax.Array, start: jax.Array, k_new: jax.Array,
                    v_new: jax.Array, *, window: int | None,
                    fused: bool) -> tuple[jax.Array, jax.Array]:
    """See `_kv_cache_update`; `window` None for a global layer."""
    op = _kv_cache_update_composite if fused else _kv_cache_update
    return op(k_cache, v_cache, start, k_new, v_new, kv_cache_max=int(k_cache.shape[2]),
              window=int(window or 0))


def logit_soft_cap(x: jax.Array, cap: float, *, fused: bool) -> jax.Array:
    """The final-logit soft-cap. A composite boundary keeps a converter from folding x / cap into
    the LM head's weights, which would store the table a second time."""
    op = _soft_cap_composite if fused else _soft_cap
    return op(x, cap=float(cap))


def rope(x: jax.Array, positions: jax.Array, *, base: float, scale: float,
         fused: bool) -> jax.Array:
    """See `_rope`. Fused only where asked (Composites.ROPE): for a consumer with rotary kernels;
    for others every composite is a partition boundary."""
    op = _rope_composite if fused else _rope
    return op(x, positions, base=float(base), scale=float(scale))


def embedding_lookup(table: jax.Array, tokens: jax.Array, *, fused: bool) -> jax.Array:
    """Rows of `table` [V, D] for int `tokens` [...] -> [..., D]. Fused (Composites.TABLE), the
    lookup of flat int32 ids is a composite a converter can turn into an embedding-lookup op,
    which a quantizer can then store once for the lookup and the LM head (a plain gather it
    may leave float)."""
    if not fused:
        return jnp.take(table, tokens, axis=0)
    ids = tokens.reshape(-1).astype(jnp.int32)
    return _embedding_lookup_composite(ids, table).reshape(*tokens.shape, table.shape[1])
