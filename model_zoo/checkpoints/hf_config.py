"""HF `config.json` <-> ModelConfig for Gemma (`gemma`), Gemma 2 (`gemma2`) and Gemma 3 text
(`gemma3_text`, or the text part of a multimodal `gemma3` config)."""

from __future__ import annotations

import math
from typing import Any

from model_zoo.config import (
    FAMILY_NAMES,
    MAX_CONTEXT,
    MAX_EMBED_DIM,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN_DIM,
    MAX_LAYERS,
    MAX_VOCAB,
    AttentionType,
    Family,
    ModelConfig,
    is_integer,
    size_problem,
)
from model_zoo.errors import GemmaforgeError
from model_zoo.untrusted import shown

MODEL_TYPES = {names.model_type: family for family, names in FAMILY_NAMES.items()}
_LAYER_TYPES = {"sliding_attention": AttentionType.LOCAL, "full_attention": AttentionType.GLOBAL}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")


def _mapping(value: object, key: str, source: str) -> dict:
    """`value` when it is a JSON object (an absent or null one is empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GemmaforgeError(f"{source}: {key} is {shown(value)}; expected an object")
    return value


def _size(hf: dict, key: str, limit: int, source: str, default: object = None) -> int:
    """A positive integer field, bounded by `limit`; absent or null gives `default`."""
    value = hf.get(key)
    value = default if value is None else value
    if value is None:
        raise GemmaforgeError(f"{source} lacks {key}, which a Gemma config.json has")
    problem = size_problem(key, value, limit)
    if problem:
        raise GemmaforgeError(f"{source}: {problem}")
    return value


def _positive(hf: dict, key: str, source: str, default: float | None) -> float | None:
    """A positive finite number field; absent or null gives `default`."""
    value = hf.get(key)
    if value is None:
        return default
    if not (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0):
        raise GemmaforgeError(f"{source}: {key} is {shown(value)}; expected a positive number")
    return float(value)


def _token_id(hf: dict, key: str, vocab: int, source: str, default: int) -> int:
    """A token id field (the first of a list, as eos_token_id may be), inside the vocabulary."""
    value = hf.get(key)
    if isinstance(value, list) and value:
        value = value[0]
    value = default if value is None else value
    if not (is_integer(value) and 0 <= value < vocab):
        raise GemmaforgeError(f"{source}: {key} is {shown(value)}; expected a token id from 0 "
                              f"to {vocab - 1}")
    return value


def _rope(hf: dict[str, Any], layer_type: str, source: str) -> tuple[float, float]:
    """(base, linear scale) of one layer type from transformers 4.x or 5.x fields."""
    params = _mapping(hf.get("rope_parameters"), "rope_parameters", source)
    if layer_type in params:  # 5.x: one dict per layer type
        params = _mapping(params[layer_type], f"rope_parameters.{layer_type}", source)
    theta = _positive(params, "rope_theta", source, None)
    if theta is None:  # 4.x: flat fields
        theta = (_positive(hf, "rope_local_base_freq", source, 10_000.0)
                 if layer_type == "sliding_attention"
                 else _positive(hf, "rope_theta", source, 10_000.0))
    scaling = params if "rope_type" in params else _mapping(
        hf.get("rope_scaling") if layer_type == "full_attention" else None, "rope_scaling",
        source)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise GemmaforgeError(f"{source}: RoPE type {shown(kind)} of {layer_type} layers is not "
                              "supported (default and linear are)")
    return theta, _positive(scaling, "factor", source, 1.0) if kind == "linear" else 1.0


def _layer_types(hf: dict[str, Any], family: Family, layers: int,
                 source: str) -> tuple[AttentionType, ...]:
    """Every layer's attention type: Gemma 1 is all global, Gemma 2 alternates from local, and
    Gemma 3 configs list them."""
    if family is Family.GEMMA1:
        return (AttentionType.GLOBAL,) * layers
    named = hf.get("layer_types") or (["sliding_attention", "full_attention"] * layers)[:layers]
    if not isinstance(named, list) or len(named) != layers:
        raise GemmaforgeError(f"{source}: layer_types is {shown(named)}; expected a list of "
                              f"{layers} (num_hidden_layers) layer types")
    unknown = next((t for t in named if not isinstance(t, str) or t not in _LAYER_TYPES), None)
    if unknown is not None:
        raise GemmaforgeError(f"{source}: layer type {shown(unknown)} is not one of "
                              f"{', '.join(_LAYER_TYPES)}")
    return tuple(_LAYER_TYPES[t] for t in named)


def config_from_hf(hf: dict[str, Any], name: str = "hf") -> ModelConfig:
    """Our config from a parsed HF `config.json` (of the folder `name`), every size checked
    against the file's other fields and sane bounds before anything is built from it."""
    source = f"{name}/config.json"
    hf = _mapping(hf, "the file", source)
    if hf.get("model_type") == "gemma3" and "text_config" in hf:
        hf = {**_mapping(hf["text_config"], "text_config", source), "model_type": "gemma3_text"}
    model_type = hf.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise GemmaforgeError(
            f"{source} has model_type {shown(model_type)}; gemmaforge reads "
            f"{', '.join(MODEL_TYPES)} (and multimodal gemma3's text part)")
    family = MODEL_TYPES[model_type]
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in _GELU_TANH:
        raise GemmaforgeError(f"{source}: activation {shown(activation)} is not Gemma's tanh GELU")
    layers = _size(hf, "num_hidden_layers", MAX_LAYERS, source)
    pattern = _shortest_period(_layer_types(hf, family, layers, source))
    local_base, _ = _rope(hf, "sliding_attention", source)
    global_base, global_scale = _rope(hf, "full_attention", source)
    embed_dim = _size(hf, "hidden_size", MAX_EMBED_DIM, source)
    heads = _size(hf, "num_attention_heads", MAX_HEADS, source)
    kv_heads = _size(hf, "num_key_value_heads", heads, source, default=heads)
    head_dim = _size(hf, "head_dim", MAX_HEAD_DIM, source, default=max(embed_dim // heads, 1))
    vocab = _size(hf, "vocab_size", MAX_VOCAB, source)
    local = AttentionType.LOCAL in pattern
    fields = dict(
        name=name, family=family, vocab_size=vocab, embed_dim=embed_dim, num_layers=layers,
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
        hidden_dim=_size(hf, "intermediate_size", MAX_HIDDEN_DIM, source),
        attention_pattern=pattern,
        sliding_window=_size(hf, "sliding_window", MAX_CONTEXT, source) if local else None,
        rope_base_global=global_base, rope_base_local=local_base,
        rope_scale_global=global_scale,
        query_pre_attn_scalar=_positive(hf, "query_pre_attn_scalar", source, float(head_dim)),
        attn_logit_softcap=_positive(hf, "attn_logit_softcapping", source, None),
        final_logit_softcap=_positive(hf, "final_logit_softcapping", source, None),
        use_post_attn_norm=family is not Family.GEMMA1,
        use_post_ffw_norm=family is not Family.GEMMA1,
        use_qk_norm=family is Family.GEMMA3,
        max_context=_size(hf, "max_position_embeddings", MAX_CONTEXT, source, default=8192),
        norm_eps=_positive(hf, "rms_norm_eps", source, 1e-6),
        bos_id=_token_id(hf, "bos_token_id", vocab, source, 2),
        eos_id=_token_id(hf, "eos_token_id", vocab, source, 1),
        pad_id=_token_id(hf, "pad_token_id", vocab, source, 0))
    try:
        return ModelConfig(**fields)
    except GemmaforgeError as error:  # the dataclass's own checks (heads divisible...)
        raise GemmaforgeError(f"{source}: {error}") from None


def _shortest_period(types: tuple[AttentionType, ...]) -> tuple[AttentionType, ...]:
    """The shortest pattern that, repeated, gives every layer's type (5 local : 1 global...)."""
    for period in range(1, len(types) + 1):
        if all(t == types[i % period] for i, t in enumerate(types)):
            return types[:period]
    return types


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A transformers 5.x `config.json` dict for `config`."""
    names = FAMILY_NAMES[config.family]
    hf: dict[str, Any] = {
        "model_type": names.model_type,
        "architectures": [names.architecture],
        "vocab_size": config.vocab_size, "hidden_size": config.embed_dim,
        "intermediate_size": config.hidden_dim, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": config.max_context, "rms_norm_eps": config.norm_eps,
        "bos_token_id": config.bos_id, "eos_token_id": config.eos_id,
        "pad_token_id": config.pad_id, "tie_word_embeddings": True, "attention_bias": False,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
    }
    layer_types = ["sliding_attention" if t is AttentionType.LOCAL else "full_attention"
                   for t in config.attention_types]
    global_rope = {"rope_type": "default", "rope_theta": config.rope_base_global}
    if config.rope_scale_global != 1.0:
        global_rope = {"rope_type": "linear", "rope_theta": config.rope_base_global,
                       "factor": config.rope_scale_global}
    if config.family is Family.GEMMA3:
        hf["rope_parameters"] = {
            "sliding_attention": {"rope_type": "default", "rope_theta": config.rope_base_local},
            "full_attention": global_rope}
    else:
        hf["rope_parameters"] = global_rope
    if config.family is not Family.GEMMA1:
        hf.update(layer_types=layer_types, sliding_window=config.sliding_window,
                  attn_logit_softcapping=config.attn_logit_softcap,
                  final_logit_softcapping=config.final_logit_softcap)
    return hf
