"""Named presets: the papers' Table 1 architectures, the real Gemma 3 270M, and tiny test models.

Presets are data. Tests derive variants with `dataclasses.replace`, never by mutation.
"""

from __future__ import annotations

from model_zoo.config import AttentionType, Family, ModelConfig
from model_zoo.errors import GemmaforgeError

GLOBAL = AttentionType.GLOBAL
LOCAL = AttentionType.LOCAL

GEMMA1_VOCAB = 256_128
GEMMA2_VOCAB = 256_128
GEMMA3_VOCAB = 262_144


def _gemma1(name: str, **dims) -> ModelConfig:
    return ModelConfig(
        name=name, family=Family.GEMMA1, vocab_size=GEMMA1_VOCAB,
        attention_pattern=(GLOBAL,), sliding_window=None,
        rope_base_global=10_000.0, rope_base_local=10_000.0,
        attn_logit_softcap=None, final_logit_softcap=None,
        use_post_attn_norm=False, use_post_ffw_norm=False, use_qk_norm=False,
        max_context=8192, **dims)


def _gemma2(name: str, **dims) -> ModelConfig:
    return ModelConfig(
        name=name, family=Family.GEMMA2, vocab_size=GEMMA2_VOCAB,
        attention_pattern=(LOCAL, GLOBAL), sliding_window=4096,
        rope_base_global=10_000.0, rope_base_local=10_000.0,
        attn_logit_softcap=50.0, final_logit_softcap=30.0,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=False,
        max_context=8192, **dims)


_PRESETS: dict[str, ModelConfig] = {}


def register_preset(config: ModelConfig) -> ModelConfig:
    """Adds `config` to the registry under `config.name`."""
    if config.name in _PRESETS:
        raise GemmaforgeError(f"preset {config.name!r} is already registered")
    _PRESETS[config.name] = config
    return config


for _config in (
    _gemma1("gemma1-2b", embed_dim=2048, num_layers=18, num_heads=8, num_kv_heads=1,
            head_dim=256, hidden_dim=16384, query_pre_attn_scalar=256),
    _gemma1("gemma1-7b", embed_dim=3072, num_layers=28, num_heads=16, num_kv_heads=16,
            head_dim=256, hidden_dim=24576, query_pre_attn_scalar=256),
    _gemma2("gemma2-2b", embed_dim=2304, num_layers=26, num_heads=8, num_kv_heads=4,
            head_dim=256, hidden_dim=9216, query_pre_attn_scalar=256),
    _gemma2("gemma2-9b", embed_dim=3584, num_layers=42, num_heads=16, num_kv_heads=8,
            head_dim=256, hidden_dim=14336, query_pre_attn_scalar=256),
    # 27B scales queries by d_model / num_heads = 144, not head_dim (Gemma 2 paper).
    _gemma2("gemma2-27b", embed_dim=4608, num_layers=46, num_heads=32, num_kv_heads=16,
            head_dim=128, hidden_dim=36864, query_pre_attn_scalar=144),
    ModelConfig(
        name="gemma3-270m", family=Family.GEMMA3, vocab_size=GEMMA3_VOCAB, embed_dim=640,
        num_layers=18, num_heads=4, num_kv_heads=1, head_dim=256, hidden_dim=2048,
        attention_pattern=(LOCAL,) * 5 + (GLOBAL,), sliding_window=512,
        rope_base_global=1_000_000.0, rope_base_local=10_000.0, query_pre_attn_scalar=256,
        attn_logit_softcap=None, final_logit_softcap=None,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True,
        max_context=32_768),
    # Tiny test models: <= 4 layers, d <= 128, vocab <= 512, windows small enough to cross.
    # Soft-caps are small and query_pre_attn_scalar differs from head_dim so that random
    # weights exercise them (the real values would leave random logits untouched).
    ModelConfig(
        name="tiny-gemma1", family=Family.GEMMA1, vocab_size=512, embed_dim=64, num_layers=2,
        num_heads=4, num_kv_heads=1, head_dim=16, hidden_dim=128,
        attention_pattern=(GLOBAL,), sliding_window=None,
        rope_base_global=10_000.0, rope_base_local=10_000.0, query_pre_attn_scalar=16,
        attn_logit_softcap=None, final_logit_softcap=None,
        use_post_attn_norm=False, use_post_ffw_norm=False, use_qk_norm=False, max_context=128),
    ModelConfig(
        name="tiny-gemma2", family=Family.GEMMA2, vocab_size=512, embed_dim=64, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=16, hidden_dim=128,
        attention_pattern=(LOCAL, GLOBAL), sliding_window=8,
        rope_base_global=10_000.0, rope_base_local=10_000.0, query_pre_attn_scalar=24,
        attn_logit_softcap=5.0, final_logit_softcap=3.0,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=False, max_context=128),
    ModelConfig(
        name="tiny-gemma3", family=Family.GEMMA3, vocab_size=512, embed_dim=64, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=16, hidden_dim=128,
        attention_pattern=(LOCAL, LOCAL, GLOBAL), sliding_window=8,
        rope_base_global=1_000_000.0, rope_base_local=10_000.0, query_pre_attn_scalar=16,
        attn_logit_softcap=None, final_logit_softcap=None,
        use_post_attn_norm=True, use_post_ffw_norm=True, use_qk_norm=True, max_context=128),
):
    register_preset(_config)


def preset_names() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> ModelConfig:
    """The preset called `name`; a GemmaforgeError listing the known names otherwise."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise GemmaforgeError(
            f"unknown preset {name!r}; known presets: {', '.join(_PRESETS)} "
            "(see `gemmaforge zoo list`)") from None

