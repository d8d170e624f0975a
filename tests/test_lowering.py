"""The lowering object: validated on construction, and every choice gives the same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
from model_zoo.errors import GemmaforgeError
from model_zoo.lowering import PLAIN, Composites, Head, Logits, Lowering
from runtimes.tolerances import SAME_MATH_FLOAT32


@pytest.mark.parametrize("bad, message", [
    (dict(composites=Composites.ROPE), "add Composites.CORE"),
    (dict(composites=True), "must be a Composites flag"),
    (dict(head="table-left"), "must be a Head"),
    (dict(logits=None), "must be a Logits"),
])
def test_bad_lowerings_are_refused_in_one_line(bad, message):
    with pytest.raises(GemmaforgeError, match=message) as raised:
        Lowering(**bad)
    assert "\n" not in str(raised.value)


def _run(lowering: Lowering, logits_index=None):
    config = mz.get_preset("tiny-gemma2")
    params = mz.init_params(config, seed=3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, config.vocab_size, (1, 6)),
                         jnp.int32)
    positions = jnp.arange(6, dtype=jnp.int32)[None]
    cache = mz.KVCache.create(config, 1, 8)
    return jax.jit(mz.apply, static_argnums=(0, 5))(config, params, tokens, positions, cache,
                                                    lowering, logits_index=logits_index)


def test_every_lowering_computes_the_same_logits_and_cache():
    want, want_cache = _run(PLAIN)
    for lowering in (Lowering(Composites.CORE | Composites.ROPE | Composites.TABLE),
                     Lowering(Composites.TABLE, head=Head.TOKENS_LEFT)):
        got, cache = _run(lowering)
        np.testing.assert_allclose(got, want, atol=SAME_MATH_FLOAT32, rtol=0)
        for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache), strict=True):
            np.testing.assert_allclose(a, b, atol=SAME_MATH_FLOAT32, rtol=0)
    at_index, _ = _run(Lowering(logits=Logits.AT_INDEX), jnp.asarray([4], jnp.int32))
    assert at_index.shape == (1, 1, want.shape[-1])
    np.testing.assert_allclose(at_index[0, 0], want[0, 4], atol=SAME_MATH_FLOAT32, rtol=0)
    no_logits, cache = _run(Lowering(logits=Logits.NONE))
    assert no_logits is None
    for a, b in zip(jax.tree.leaves(cache), jax.tree.leaves(want_cache), strict=True):
        np.testing.assert_allclose(a, b, atol=SAME_MATH_FLOAT32, rtol=0)


def test_logits_index_goes_with_at_index_only():
    with pytest.raises(GemmaforgeError, match="logits_index goes with Logits.AT_INDEX"):
        _run(Lowering(), jnp.asarray([4], jnp.int32))
    with pytest.raises(GemmaforgeError, match="logits_index goes with Logits.AT_INDEX"):
        _run(Lowering(logits=Logits.AT_INDEX))
