"""The source of truth: Gemma 1/2/3 configs and presets, the Flax NNX model, its KV cache, the
fused-op composites, sharding rules, checkpoint readers and tokenizers."""

from model_zoo.cache import KVCache
from model_zoo.config import AttentionType, Family, LayerSpec, ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.loading import LoadedModel, describe, load, load_random
from model_zoo.presets import get_preset, preset_names, register_preset
from model_zoo.spm import GemmaTokenizer
from model_zoo.tokenizer import ByteTokenizer, Tokenizer, chat_prompt
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
    "ByteTokenizer",
    "Family",
    "Gemma",
    "GemmaTokenizer",
    "GemmaforgeError",
    "KVCache",
    "LayerSpec",
    "LoadedModel",
    "ModelConfig",
    "Params",
    "Tokenizer",
    "abstract_params",
    "apply",
    "chat_prompt",
    "count_params",
    "describe",
    "get_preset",
    "graphdef",
    "init_params",
    "load",
    "load_random",
    "preset_names",
    "register_preset",
]
