"""The model as pure entry points with explicit state: what every format writer lowers.

Entry points (batch 1, the on-device contract LiteRT-LM also reads):

  prefill_<T>(tokens int32[1, T], input_pos int32[T], kv_cache) -> kv_cache
  decode(tokens int32[1, 1], input_pos int32[1], kv_cache) -> (logits f32[1, 1, V], kv_cache)
  prefill: prefill_<T> with T symbolic, 1 <= T <= max_len (composites off)

`kv_cache` is a dict of `kv_cache_k_<i>` / `kv_cache_v_<i>`, each float32 [1, K, max_len, H],
taken and returned under the same names. Prefill returns no logits: a runner prefills all prompt
tokens but the last and decodes the last one, which yields the first logits (LiteRT-LM's engine
does the same), so a padded prefill never has to say which row is real. Padding tokens write
cache slots past the prompt that no real query sees and that decode steps overwrite.

Parameters are either arguments (`weights`, a dict keyed by dotted names, first argument; the
StableHLO artifacts use this: one weights file shared by every entry point, shardable) or
constants baked into the function (for formats whose converters need them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from model_zoo.cache import KVCache
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.inference import DEFAULT_MAX_LEN, default_max_len
from model_zoo.lowering import Composites, Logits, Lowering
from model_zoo.transformer import Params, apply
from model_zoo.tree import flatten, path_name
from quantize.activations import activation_projection
from quantize.tensor import dequantize_params, nest_params

DEFAULT_BUCKETS = (32, 128, 512)
SYMBOLIC_PREFILL = "prefill"
DECODE = "decode"


def kv_names(config: ModelConfig) -> list[str]:
    """Cache tensor names, layer by layer: kv_cache_k_0, kv_cache_v_0, kv_cache_k_1, ..."""
    return [f"kv_cache_{kind}_{i}" for i in range(config.num_layers) for kind in "kv"]


def flat_weights(params: Params) -> dict[str, jax.Array]:
    return {path_name(path): leaf for path, leaf in flatten(params)}


def nested_weights(config: ModelConfig, weights: dict[str, jax.Array]) -> Params:
    """Dotted names -> the parameter tree (quantized tensors as `quantize.QuantizedTensor`s)."""
    return nest_params(config, weights)


@dataclasses.dataclass(frozen=True)
class EntryPoint:
    """One exported function.

    Attributes:
      name: "prefill_<T>", "decode" or "prefill" (symbolic length).
      tokens: T, the tokens it takes; None when symbolic.
      returns_logits: decode does, prefill does not.
      every_position: logits for every new token ([1, T, V]) instead of the last ([1, 1, V]),
        as onnxruntime-genai reads them.
    """

    name: str
    tokens: int | None
    returns_logits: bool
    every_position: bool = False

    @property
    def symbolic(self) -> bool:
        return self.tokens is None


@dataclasses.dataclass(frozen=True)
class TraceOptions:
    """What to trace.

    Attributes:
      max_len: the cache length (context).
      buckets: prompt lengths of the fixed-shape prefill entry points.
      symbolic_prefill: also trace `prefill` with a symbolic length.
      composites: the fused regions asked for (`--fused`: Composites.CORE, `--no-fused`:
        Composites.NONE); each writer adds what its format needs and drops them where its
        converter cannot lower them (the symbolic prefill, several platforms).
    """

    max_len: int = DEFAULT_MAX_LEN
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    symbolic_prefill: bool = True
    composites: Composites = Composites.CORE

    def __post_init__(self):
        if not isinstance(self.composites, Composites):
            raise GemmaforgeError(f"composites must be a Composites flag, got {self.composites!r}")

    @property
    def fused(self) -> bool:
        """Whether the core fused ops are composites (the manifest's "fused")."""
        return Composites.CORE in self.composites

    def entry_points(self) -> list[EntryPoint]:
        points = [EntryPoint(f"prefill_{t}", t, False) for t in self.buckets]
        points.append(EntryPoint(DECODE, 1, True))
        if self.symbolic_prefill:
            points.append(EntryPoint(SYMBOLIC_PREFILL, None, False))
        return points


def resolve_options(config: ModelConfig, max_len: int | None = None,
                    buckets: tuple[int, ...] | None = None, **rest) -> TraceOptions:
    """Defaults filled in and checked: max_len min(context, 1024); buckets the defaults that fit.

    A cache longer than the model's context or a bucket longer than the cache is an error.
    """
    if max_len is None:
        max_len = default_max_len(config)
    if max_len <= 0:
        raise GemmaforgeError(f"--max-len must be positive, got {max_len}")
    if max_len > config.max_context:
        raise GemmaforgeError(f"--max-len {max_len} exceeds {config.name}'s context of "
                              f"{config.max_context} tokens")
    if buckets is None:
        buckets = tuple(b for b in DEFAULT_BUCKETS if b <= max_len) or (max_len,)
    buckets = tuple(sorted(set(buckets)))
    if not buckets or buckets[0] <= 0:
        raise GemmaforgeError(f"prefill buckets must be positive, got {list(buckets)}")
    if buckets[-1] > max_len:
        raise GemmaforgeError(f"prefill bucket {buckets[-1]} is longer than the cache "
                              f"(--max-len {max_len}); use buckets <= {max_len}")
    return TraceOptions(max_len=max_len, buckets=buckets, **rest)


def input_specs(config: ModelConfig, entry: EntryPoint, max_len: int,
                length: object | None = None) -> tuple[jax.ShapeDtypeStruct, ...]:
    """(tokens, input_pos, kv_cache) specs; `length` stands in for a symbolic T."""
    t = entry.tokens if entry.tokens is not None else length
    kv = jax.ShapeDtypeStruct((1, config.num_kv_heads, max_len, config.head_dim), jnp.float32)
    return (jax.ShapeDtypeStruct((1, t), jnp.int32), jax.ShapeDtypeStruct((t,), jnp.int32),
            {name: kv for name in kv_names(config)})


def _step(config: ModelConfig, params: Params, entry: EntryPoint, lowering: Lowering,
          tokens: jax.Array, input_pos: jax.Array, kv_cache: dict[str, jax.Array]):
    cache = KVCache(k=tuple(kv_cache[f"kv_cache_k_{i}"] for i in range(config.num_layers)),
                    v=tuple(kv_cache[f"kv_cache_v_{i}"] for i in range(config.num_layers)))
    last = (jnp.full((1,), tokens.shape[1] - 1, jnp.int32)
            if lowering.logits is Logits.AT_INDEX else None)
    # A quantized tree is dequantized here, inside the trace: the exported program holds the
    # integer values and scales and computes the float weights itself.
    params = dequantize_params(params)
    logits, cache = apply(config, params, tokens, input_pos[None], cache, lowering,
                          logits_index=last, projection=activation_projection(config))
    updated = {}
    for i in range(config.num_layers):
        updated[f"kv_cache_k_{i}"] = cache.k[i]
        updated[f"kv_cache_v_{i}"] = cache.v[i]
    return (logits, updated) if entry.returns_logits else updated


def entry_lowering(entry: EntryPoint, lowering: Lowering) -> Lowering:
    """`lowering` with the logits `entry` returns: none for a prefill, every position's where
    the entry point says so, else the last token's."""
    if not entry.returns_logits:
        logits = Logits.NONE
    else:
        logits = Logits.EVERY if entry.every_position else Logits.AT_INDEX
    return dataclasses.replace(lowering, logits=logits)


def entry_function(config: ModelConfig, entry: EntryPoint, lowering: Lowering, *,
                   params: Params | None = None) -> Callable:
    """The pure function of one entry point, traced as `lowering` says (its composites and head
    form; the logits are the entry point's, `entry_lowering`).

    With `params` None it takes `weights` (dotted names -> arrays) first:
    `f(weights, tokens, input_pos, kv_cache)`; otherwise the parameters are constants:
    `f(tokens, input_pos, kv_cache)`.
    """
    lowering = entry_lowering(entry, lowering)
    if params is None:
        def with_weights(weights, tokens, input_pos, kv_cache):
            return _step(config, nested_weights(config, weights), entry, lowering, tokens,
                         input_pos, kv_cache)
        return with_weights

    def with_constants(tokens, input_pos, kv_cache):
        return _step(config, params, entry, lowering, tokens, input_pos, kv_cache)
    return with_constants


def empty_cache(config: ModelConfig, max_len: int) -> dict[str, np.ndarray]:
    shape = (1, config.num_kv_heads, max_len, config.head_dim)
    return {name: np.zeros(shape, np.float32) for name in kv_names(config)}
