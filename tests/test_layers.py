"""Each building block against an independent numpy formula."""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import model_zoo as mz
from model_zoo.layers import Embedder, FeedForward, RMSNorm, apply_rope
from runtimes.tolerances import SAME_MATH_FLOAT32

CONFIG = mz.get_preset("tiny-gemma3")
KEY = jax.random.key(7)


@pytest.mark.parametrize("fused", [True, False])
def test_rms_norm_multiplies_by_one_plus_weight(fused):
    norm = RMSNorm(64, CONFIG, key=KEY)
    x = np.random.default_rng(0).normal(size=(2, 3, 64)).astype(np.float32) * 5
    w = np.asarray(norm.scale[...])
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + CONFIG.norm_eps) * (1 + w)
    np.testing.assert_allclose(norm(jnp.asarray(x), fused=fused), expected, rtol=1e-5, atol=1e-5)


def test_rms_norm_computes_in_float32_for_bfloat16_inputs():
    norm = RMSNorm(64, CONFIG, key=KEY)
    # Values whose squares overflow bfloat16's precision budget if summed in bfloat16.
    x = (np.random.default_rng(1).normal(size=(1, 1, 64)) * 300).astype(np.float32)
    out = norm(jnp.asarray(x, jnp.bfloat16), fused=False)
    assert out.dtype == jnp.bfloat16
    x_bf16 = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    w = np.asarray(norm.scale[...])
    expected = x_bf16 / np.sqrt((x_bf16**2).mean(-1, keepdims=True) + 1e-6) * (1 + w)
    np.testing.assert_allclose(np.asarray(out.astype(jnp.float32)), expected, rtol=1e-2)


def _rope_reference(x, positions, base, scale):
    """RoPE as complex rotation of (first half, second half) pairs."""
    half = x.shape[-1] // 2
    freqs = 1.0 / base ** (np.arange(half) * 2 / x.shape[-1]) / scale
    z = (x[..., :half] + 1j * x[..., half:]) * np.exp(1j * positions[..., None, None] * freqs)
    return np.concatenate([z.real, z.imag], axis=-1)


@pytest.mark.parametrize(("base", "scale"), [(10_000.0, 1.0), (1_000_000.0, 8.0)])
def test_rope_is_the_half_split_rotation(base, scale):
    x = np.random.default_rng(2).normal(size=(2, 5, 3, 16)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]], np.int32)
    got = apply_rope(jnp.asarray(x), jnp.asarray(positions), base, scale)
    np.testing.assert_allclose(got, _rope_reference(x, positions, base, scale), atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 500), n=st.integers(0, 500), shift=st.integers(0, 500))
def test_rope_scores_depend_only_on_relative_position(m, n, shift):
    rng = np.random.default_rng(3)
    q = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(1, 1, 1, 16)), jnp.float32)

    def score(qpos, kpos):
        rq = apply_rope(q, jnp.array([[qpos]]), 10_000.0, 1.0)
        rk = apply_rope(k, jnp.array([[kpos]]), 10_000.0, 1.0)
        return float(jnp.sum(rq * rk))

    assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=2e-3)


def test_geglu_uses_tanh_gelu():
    mlp = FeedForward(CONFIG, key=KEY)
    x = np.random.default_rng(4).normal(size=(1, 2, 64)).astype(np.float32)
    gate = x @ np.asarray(mlp.gate_proj[...])
    gelu_tanh = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) * (gate + 0.044715 * gate**3)))
    expected = (gelu_tanh * (x @ np.asarray(mlp.up_proj[...]))) @ np.asarray(mlp.down_proj[...])
    np.testing.assert_allclose(mlp(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)


def test_embedding_is_scaled_by_sqrt_d_and_tied_to_the_head():
    embedder = Embedder(CONFIG, key=KEY)
    table = np.asarray(embedder.embedding[...])
    tokens = jnp.array([[3, 9]])
    np.testing.assert_allclose(embedder.encode(tokens)[0], table[[3, 9]] * 8.0,
                               rtol=SAME_MATH_FLOAT32)
    h = np.random.default_rng(5).normal(size=(1, 1, 64)).astype(np.float32)
    np.testing.assert_allclose(embedder.decode(jnp.asarray(h))[0, 0], table @ h[0, 0],
                               rtol=1e-4, atol=1e-4)
