"""`load`: a preset name (and optionally a checkpoint) to a ready model: config, parameters and
tokenizer, sharded on a mesh when one is given."""

from __future__ import annotations

import dataclasses

import psutil
from jax.sharding import Mesh

from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.presets import get_preset
from model_zoo.sharding import init_sharded
from model_zoo.tokenizer import ByteTokenizer, Tokenizer
from model_zoo.transformer import Params, count_params, init_params

# Random weights are refused past this share of the memory available now.
MAX_MEMORY_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to run.

    Attributes:
      config: the architecture.
      params: float32 parameters (sharded when loaded with a mesh).
      tokenizer: text <-> ids.
      source: where the weights came from, in words ("random weights (seed 0)", a path).
      random_weights: True when no checkpoint was used.
    """

    config: ModelConfig
    params: Params
    tokenizer: Tokenizer
    source: str
    random_weights: bool


def describe(config: ModelConfig) -> dict:
    """A preset as plain data: architecture and parameter counts (from jax.eval_shape)."""
    embedding, non_embedding = count_params(config)
    return {
        "name": config.name,
        "family": config.family.value,
        "vocab_size": config.vocab_size,
        "embed_dim": config.embed_dim,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_dim": config.hidden_dim,
        "attention_types": [t.value for t in config.attention_types],
        "sliding_window": config.sliding_window,
        "rope_base_global": config.rope_base_global,
        "rope_base_local": config.rope_base_local,
        "rope_scale_global": config.rope_scale_global,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "attn_logit_softcap": config.attn_logit_softcap,
        "final_logit_softcap": config.final_logit_softcap,
        "qk_norm": config.use_qk_norm,
        "post_norms": config.use_post_attn_norm and config.use_post_ffw_norm,
        "max_context": config.max_context,
        "embedding_params": embedding,
        "non_embedding_params": non_embedding,
        "total_params": embedding + non_embedding,
    }


def load_random(config: ModelConfig, *, seed: int = 0, mesh: Mesh | None = None) -> LoadedModel:
    """Seeded random float32 weights, refused with a clear error when they cannot fit in memory."""
    needed = 4 * sum(count_params(config))
    available = psutil.virtual_memory().available
    if needed > MAX_MEMORY_SHARE * available:
        raise GemmaforgeError(
            f"{config.name} with random float32 weights needs {needed / 2**30:.1f} GiB but "
            f"{available / 2**30:.1f} GiB of memory is available; pick a smaller preset "
            "(see `gemmaforge zoo list`)")
    params = (init_params(config, seed) if mesh is None
              else init_sharded(config, mesh, seed))
    return LoadedModel(config, params, ByteTokenizer(), f"random weights (seed {seed})", True)


def load(preset: str, *, seed: int = 0, mesh: Mesh | None = None) -> LoadedModel:
    """The preset `preset` with its weights."""
    return load_random(get_preset(preset), seed=seed, mesh=mesh)
