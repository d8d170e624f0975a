"""The source of truth: Gemma 1/2/3 configs and presets, the Flax NNX model, its KV cache, the
fused-op composites and the sharding rules."""

from model_zoo.cache import KVCache
from model_zoo.config import AttentionType, Family, LayerSpec, ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.presets import get_preset, preset_names, register_preset
from model_zoo.transformer import (
    Gemma,
    Params,
    abstract_params,
    apply,
    count_params,
    graphdef,
    init_params,
)

__all__ = [
    "AttentionType",
    "Family",
    "Gemma",
    "GemmaforgeError",
    "KVCache",
    "LayerSpec",
    "ModelConfig",
    "Params",
    "abstract_params",
    "apply",
    "count_params",
    "get_preset",
    "graphdef",
    "init_params",
    "preset_names",
    "register_preset",
]
