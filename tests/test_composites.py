"""The fused ops: identical numbers with and without composites, and the composites present in
the lowered StableHLO with their names and attributes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
from model_zoo import composites
from model_zoo.lowering import Composites, Lowering
from tests.conftest import TINY_PRESETS, expected_composites


def _lowering(fused: bool, fused_rope: bool) -> Lowering:
    if not fused:
        return Lowering(Composites.NONE)
    return Lowering(Composites.CORE | (Composites.ROPE if fused_rope else Composites.NONE))


def _forward(config, params, fused, fused_rope=False):
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (2, 20)),
                         jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(20, dtype=jnp.int32), (2, 20))
    cache = mz.KVCache.create(config, 2, 32)
    fn = jax.jit(mz.apply, static_argnums=(0, 5))
    return fn(config, params, tokens, positions, cache, _lowering(fused, fused_rope))


def _stablehlo(config, params, fused, fused_rope=False):
    tokens = jnp.zeros((1, 4), jnp.int32)
    positions = jnp.arange(4, dtype=jnp.int32)[None]
    cache = mz.KVCache.create(config, 1, 16)
    lowered = jax.jit(mz.apply, static_argnums=(0, 5)).lower(
        config, params, tokens, positions, cache, _lowering(fused, fused_rope))
    return lowered.as_text()


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_fused_and_plain_give_identical_numbers(name, tiny_params):
    config = mz.get_preset(name)
    fused_logits, fused_cache = _forward(config, tiny_params(name), True)
    plain_logits, plain_cache = _forward(config, tiny_params(name), False)
    np.testing.assert_array_equal(np.asarray(fused_logits), np.asarray(plain_logits))
    for a, b in zip(jax.tree.leaves(fused_cache), jax.tree.leaves(plain_cache), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_composites_appear_in_stablehlo_with_attributes(name, tiny_params):
    config = mz.get_preset(name)
    text = _stablehlo(config, tiny_params(name), fused=True)
    calls = re.findall(r'stablehlo\.composite "([\w.]+)".*?composite_attributes = \{([^}]*)\}',
                       text)
    by_name = {}
    for op, attributes in calls:
        by_name.setdefault(op, []).append(attributes)
    assert {op: len(calls) for op, calls in sorted(by_name.items())} == \
        expected_composites(config, logits=True)
    assert all("epsilon = " in a for a in by_name[composites.RMS_NORM])
    scale = float(re.search(r"scale = ([-\d.eE+]+)", by_name[composites.SDPA][0]).group(1))
    assert scale == pytest.approx(config.query_scale)
    has_cap = ["logit_cap" in a for a in by_name[composites.SDPA]]
    assert all(has_cap) if config.attn_logit_softcap else not any(has_cap)
    assert all("kv_cache_max = 16" in a for a in by_name[composites.KV_CACHE_UPDATE])
    windows = [int(re.search(r"window = (\d+)", a).group(1))
               for a in by_name[composites.KV_CACHE_UPDATE]]
    assert windows == [config.layer(i).window or 0 for i in range(config.num_layers)]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_the_rope_composite_for_onnx_changes_no_number(name, tiny_params):
    config = mz.get_preset(name)
    with_rope = _forward(config, tiny_params(name), True, fused_rope=True)
    plain = _forward(config, tiny_params(name), False)
    for a, b in zip(jax.tree.leaves(with_rope), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    text = _stablehlo(config, tiny_params(name), fused=True, fused_rope=True)
    bases = re.findall(r'stablehlo\.composite "gemmaforge\.rope".*?base = ([-\d.eE+]+)', text)
    assert len(bases) == 2 * config.num_layers
    assert sorted({float(b) for b in bases}) == sorted(
        {config.layer(i).rope_base for i in range(config.num_layers)})
    assert composites.ROPE not in _stablehlo(config, tiny_params(name), fused=True)


def test_plain_mode_has_no_composites(tiny_params):
    text = _stablehlo(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"), fused=False)
    assert "stablehlo.composite" not in text


def test_sdpa_layout_and_soft_cap_against_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(1, 3, 4, 8)).astype(np.float32) * 3  # [B, T, N, H]
    k = rng.normal(size=(1, 5, 2, 8)).astype(np.float32) * 3  # [B, S, K, H]
    v = rng.normal(size=(1, 5, 2, 8)).astype(np.float32)
    visible = np.tril(np.ones((3, 5), bool), k=2)
    mask = np.where(visible, 0.0, composites.MASK_VALUE)[None, None].astype(np.float32)
    got = composites.scaled_dot_product_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask), scale=0.3,
        logit_cap=2.0, fused=True)
    kv_head = np.arange(4) // 2  # query heads 0,1 -> kv 0; 2,3 -> kv 1
    expected = np.zeros_like(q)
    for n in range(4):
        logits = q[0, :, n] @ k[0, :, kv_head[n]].T * 0.3
        logits = np.tanh(logits / 2.0) * 2.0
        logits = np.where(visible, logits, -np.inf)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        expected[0, :, n] = (p / p.sum(-1, keepdims=True)) @ v[0, :, kv_head[n]]
    np.testing.assert_allclose(got, expected, atol=1e-5)
