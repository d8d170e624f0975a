"""Configs and presets: the papers' Table 2 parameter counts, layer patterns as data, checks."""

import dataclasses

import jax
import pytest

import model_zoo as mz
from model_zoo.config import AttentionType

L, G = AttentionType.LOCAL, AttentionType.GLOBAL

# Table 2 of the Gemma and Gemma 2 papers (embedding / non-embedding parameters).
PAPER_TABLE_2 = {
    "gemma1-2b": (524_550_144, 1_981_884_416),
    "gemma1-7b": (786_825_216, 7_751_248_896),
    "gemma2-2b": (590_118_912, 2_024_517_888),
    "gemma2-9b": (917_962_752, 8_324_201_984),
    "gemma2-27b": (1_180_237_824, 26_047_480_320),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE_2))
def test_parameter_counts_match_the_papers(name):
    config = mz.get_preset(name)
    params = mz.abstract_params(config)
    leaves = jax.tree.leaves(params)
    assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)  # nothing allocated
    embedding = params["embedder"]["embedding"].size
    assert (embedding, sum(leaf.size for leaf in leaves) - embedding) == PAPER_TABLE_2[name]
    assert mz.count_params(config) == PAPER_TABLE_2[name]


def test_gemma3_270m_matches_its_published_size():
    embedding, non_embedding = mz.count_params(mz.get_preset("gemma3-270m"))
    assert embedding == 262_144 * 640
    assert 265e6 < embedding + non_embedding < 275e6


def test_gemma3_270m_layer_pattern():
    config = mz.get_preset("gemma3-270m")
    globals_ = [i for i, t in enumerate(config.attention_types) if t is G]
    assert globals_ == [5, 11, 17]
    assert config.layer(5).rope_base == 1_000_000.0 and config.layer(5).window is None
    assert config.layer(4).rope_base == 10_000.0 and config.layer(4).window == 512
    assert config.query_scale == pytest.approx(1 / 16)


def test_gemma2_alternates_starting_local():
    for name in ("gemma2-2b", "gemma2-9b", "gemma2-27b"):
        config = mz.get_preset(name)
        assert config.attention_types[:4] == (L, G, L, G)
        assert (config.attn_logit_softcap, config.final_logit_softcap) == (50.0, 30.0)
        assert config.sliding_window == 4096
    assert mz.get_preset("gemma2-27b").query_pre_attn_scalar == 4608 / 32
    assert mz.get_preset("gemma2-9b").query_pre_attn_scalar == 256


def test_gemma1_has_two_norms_per_layer_and_no_caps():
    config = mz.get_preset("gemma1-2b")
    assert not (config.use_post_attn_norm or config.use_post_ffw_norm or config.use_qk_norm)
    assert config.attn_logit_softcap is None and config.final_logit_softcap is None
    layer = mz.abstract_params(config)["layers"][0]
    assert {k for k in layer if "norm" in k} == {"pre_attn_norm", "pre_ffw_norm"}


@pytest.mark.parametrize("name", ["tiny-gemma1", "tiny-gemma2", "tiny-gemma3"])
def test_tiny_presets_are_tiny_and_cover_their_family(name):
    config = mz.get_preset(name)
    assert config.num_layers <= 4 and config.embed_dim <= 128 and config.vocab_size <= 512
    # Windows small enough for tests to cross them many times within max_context.
    if config.sliding_window is not None:
        assert 3 * config.sliding_window < config.max_context
        assert {L, G} <= set(config.attention_types)


def test_invalid_config_is_a_clear_error():
    base = mz.get_preset("tiny-gemma2")
    with pytest.raises(mz.GemmaforgeError, match="multiple of num_kv_heads"):
        dataclasses.replace(base, num_kv_heads=3)
    with pytest.raises(mz.GemmaforgeError, match="sliding_window"):
        dataclasses.replace(base, sliding_window=None)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(mz.GemmaforgeError, match="gemma3-270m"):
        mz.get_preset("gemma4")
