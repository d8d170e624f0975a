"""HF `config.json` <-> ModelConfig for Gemma (`gemma`), Gemma 2 (`gemma2`) and Gemma 3 text
(`gemma3_text`, or the text part of a multimodal `gemma3` config)."""

from __future__ import annotations

from typing import Any

from model_zoo.config import AttentionType, Family, ModelConfig
from model_zoo.errors import GemmaforgeError

MODEL_TYPES = {"gemma": Family.GEMMA1, "gemma2": Family.GEMMA2, "gemma3_text": Family.GEMMA3}
_LAYER_TYPES = {"sliding_attention": AttentionType.LOCAL, "full_attention": AttentionType.GLOBAL}
_GELU_TANH = ("gelu_pytorch_tanh", "gelu_tanh", "gelu_new")


def _rope(hf: dict[str, Any], layer_type: str) -> tuple[float, float]:
    """(base, linear scale) of one layer type from transformers 4.x or 5.x fields."""
    params = hf.get("rope_parameters") or {}
    if layer_type in params:  # 5.x: one dict per layer type
        params = params[layer_type]
    theta = params.get("rope_theta")
    if theta is None:  # 4.x: flat fields
        theta = (hf.get("rope_local_base_freq", 10_000.0) if layer_type == "sliding_attention"
                 else hf.get("rope_theta", 10_000.0))
    scaling = params if "rope_type" in params else (
        hf.get("rope_scaling") if layer_type == "full_attention" else None) or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise GemmaforgeError(f"RoPE type {kind!r} of {layer_type} layers is not supported "
                              "(default and linear are)")
    return float(theta), float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0


def config_from_hf(hf: dict[str, Any], name: str = "hf") -> ModelConfig:
    """Our config from a parsed HF `config.json`."""
    if hf.get("model_type") == "gemma3" and "text_config" in hf:
        hf = {**hf["text_config"], "model_type": "gemma3_text"}
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise GemmaforgeError(
            f"config.json has model_type {model_type!r}; gemmaforge reads "
            f"{', '.join(MODEL_TYPES)} (and multimodal gemma3's text part)")
    family = MODEL_TYPES[model_type]
    activation = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in _GELU_TANH:
        raise GemmaforgeError(f"activation {activation!r} is not Gemma's tanh GELU")
    layers = int(hf["num_hidden_layers"])
    if family is Family.GEMMA1:
        layer_types = ["full_attention"] * layers
    else:
        layer_types = hf.get("layer_types") or (
            ["sliding_attention", "full_attention"] * layers)[:layers]
    pattern = _shortest_period(tuple(_LAYER_TYPES[t] for t in layer_types))
    local_base, _ = _rope(hf, "sliding_attention")
    global_base, global_scale = _rope(hf, "full_attention")
    head_dim = int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    return ModelConfig(
        name=name, family=family, vocab_size=int(hf["vocab_size"]),
        embed_dim=int(hf["hidden_size"]), num_layers=layers,
        num_heads=int(hf["num_attention_heads"]),
        num_kv_heads=int(hf.get("num_key_value_heads", hf["num_attention_heads"])),
        head_dim=head_dim, hidden_dim=int(hf["intermediate_size"]),
        attention_pattern=pattern,
        sliding_window=(int(hf["sliding_window"]) if AttentionType.LOCAL in pattern else None),
        rope_base_global=global_base, rope_base_local=local_base,
        rope_scale_global=global_scale,
        query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or head_dim),
        attn_logit_softcap=hf.get("attn_logit_softcapping"),
        final_logit_softcap=hf.get("final_logit_softcapping"),
        use_post_attn_norm=family is not Family.GEMMA1,
        use_post_ffw_norm=family is not Family.GEMMA1,
        use_qk_norm=family is Family.GEMMA3,
        max_context=int(hf.get("max_position_embeddings", 8192)),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        bos_id=int(hf.get("bos_token_id", 2)), eos_id=_first(hf.get("eos_token_id", 1)),
        pad_id=int(hf.get("pad_token_id", 0) or 0))


def _shortest_period(types: tuple[AttentionType, ...]) -> tuple[AttentionType, ...]:
    """The shortest pattern that, repeated, gives every layer's type (5 local : 1 global...)."""
    for period in range(1, len(types) + 1):
        if all(t == types[i % period] for i, t in enumerate(types)):
            return types[:period]
    return types


def _first(value) -> int:
    return int(value[0] if isinstance(value, list) else value)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A transformers 5.x `config.json` dict for `config`."""
    model_type = {v: k for k, v in MODEL_TYPES.items()}[config.family]
    hf: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [{"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
                           "gemma3_text": "Gemma3ForCausalLM"}[model_type]],
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
