"""The explicit KV cache: a pytree of per-layer [batch, kv_heads, max_len, head_dim] buffers.

Slot s of every layer holds the key/value of the token at absolute position s; local layers mask
by position instead of keeping a ring buffer, so every layer has the same layout (the one the
exported entry points take as `kv_cache_k_<i>` / `kv_cache_v_<i>`). The cache carries no lengths:
positions are explicit inputs of every step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer key and value buffers.

    Attributes:
      k: one [B, K, S, H] array per layer.
      v: one [B, K, S, H] array per layer.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    @classmethod
    def create(cls, config: ModelConfig, batch_size: int, max_len: int,
               dtype=jnp.float32, sharding: jax.sharding.Sharding | None = None) -> KVCache:
        """A zeroed cache of `max_len` slots per layer, placed with `sharding` when given."""
        if batch_size <= 0:
            raise GemmaforgeError(f"batch size must be positive, got {batch_size}")
        if max_len <= 0:
            raise GemmaforgeError(f"cache length (--max-len) must be positive, got {max_len}")
        shape = (batch_size, config.num_kv_heads, max_len, config.head_dim)

        def zeros():
            array = jnp.zeros(shape, dtype)
            return array if sharding is None else jax.device_put(array, sharding)

        return cls(k=tuple(zeros() for _ in range(config.num_layers)),
                   v=tuple(zeros() for _ in range(config.num_layers)))

    @property
    def batch_size(self) -> int:
        return int(self.k[0].shape[0])

    @property
    def max_len(self) -> int:
        return int(self.k[0].shape[2])

    def layer(self, index: int) -> tuple[jax.Array, jax.Array]:
        return self.k[index], self.v[index]

    @classmethod
    def from_layers(cls, layers: list[tuple[jax.Array, jax.Array]]) -> KVCache:
        return cls(k=tuple(k for k, _ in layers), v=tuple(v for _, v in layers))
