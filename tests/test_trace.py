"""Entry points and the chunking every entry-point runner shares."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
from exporter.trace import (
    EntryPoint,
    empty_cache,
    entry_function,
    flat_weights,
    resolve_options,
)
from model_zoo import inference
from model_zoo.lowering import Lowering
from runtimes.entry_runner import Chunk, plan_chunks
from runtimes.tolerances import SAME_MATH_FLOAT32


def test_chunks_take_the_largest_filled_bucket_then_pad_the_rest():
    assert plan_chunks(45, (8, 32), 128) == [
        Chunk("prefill_32", 0, 32, 32), Chunk("prefill_8", 32, 8, 8), Chunk("prefill_8", 40, 5, 8)]
    assert plan_chunks(3, (8, 32), 128) == [Chunk("prefill_8", 0, 3, 8)]
    assert plan_chunks(0, (8, 32), 128) == []


def test_a_remainder_that_cannot_be_padded_goes_through_decode():
    # 3 tokens left at position 96 of a 100-slot cache: a padded 8-wide chunk would overrun.
    assert plan_chunks(99, (8, 32), 100) == [
        Chunk("prefill_32", 0, 32, 32), Chunk("prefill_32", 32, 32, 32),
        Chunk("prefill_32", 64, 32, 32), *(Chunk("decode", p, 1, 1) for p in range(96, 99))]


def test_options_are_checked():
    config = mz.get_preset("tiny-gemma2")
    assert resolve_options(config).buckets == (32, 128)
    assert resolve_options(config).max_len == 128
    with pytest.raises(mz.GemmaforgeError, match="longer than the cache"):
        resolve_options(config, max_len=64, buckets=(32, 128))
    with pytest.raises(mz.GemmaforgeError, match="exceeds tiny-gemma2's context"):
        resolve_options(config, max_len=256)
    with pytest.raises(mz.GemmaforgeError, match="must be positive"):
        resolve_options(config, buckets=(0, 8))


@pytest.mark.parametrize("as_constants", [False, True])
def test_decode_entry_equals_the_model(as_constants, tiny_params):
    config, params = mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2")
    prompt = [2, 50, 60, 70, 80, 90, 100, 110, 120, 130]
    expected, cache, _ = inference.prefill(config, params, [prompt], mz.KVCache.create(config, 1,
                                                                                      32))
    expected, _ = inference.decode(config, params, [7], [len(prompt)], cache)

    prefill = entry_function(config, EntryPoint("prefill_16", 16, False), Lowering(),
                             params=params if as_constants else None)
    decode = entry_function(config, EntryPoint("decode", 1, True), Lowering(),
                            params=params if as_constants else None)
    weights = () if as_constants else (flat_weights(params),)
    tokens = np.zeros((1, 16), np.int32)
    tokens[0, : len(prompt)] = prompt
    kv = jax.jit(prefill)(*weights, jnp.asarray(tokens), jnp.arange(16, dtype=jnp.int32),
                          empty_cache(config, 32))
    logits, _ = jax.jit(decode)(*weights, jnp.array([[7]], jnp.int32),
                                jnp.array([len(prompt)], jnp.int32), kv)
    np.testing.assert_allclose(logits[0, 0], expected[0], atol=SAME_MATH_FLOAT32, rtol=0)
