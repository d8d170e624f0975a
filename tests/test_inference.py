"""The KV cache: decode equals the full sequence past the sliding window, chunked prefill equals
one-shot, rows of different lengths share a batch, and overruns are refused."""

import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
from model_zoo import inference
from runtimes.tolerances import SAME_MATH_FLOAT32
from tests.conftest import TINY_PRESETS


def _ids(config, length, seed=0):
    ids = np.random.default_rng(seed).integers(4, config.vocab_size, length)
    ids[0] = config.bos_id
    return [int(i) for i in ids]


def _full_logits(config, params, ids):
    """Logits at every position from one forward over the whole sequence."""
    cache = mz.KVCache.create(config, 1, len(ids))
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
    logits, _ = mz.apply(config, params, jnp.asarray([ids], jnp.int32), positions, cache)
    return np.asarray(logits[0])


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_decode_equals_full_sequence_three_windows_long(name, tiny_params):
    config, params = mz.get_preset(name), tiny_params(name)
    window = config.sliding_window or 8
    ids = _ids(config, 3 * window + 6)
    full = _full_logits(config, params, ids)
    prompt = 5
    cache = mz.KVCache.create(config, 1, 64)
    logits, cache, _ = inference.prefill(config, params, [ids[:prompt]], cache)
    worst = np.abs(np.asarray(logits[0]) - full[prompt - 1]).max()
    for position in range(prompt, len(ids)):
        logits, cache = inference.decode(config, params, [ids[position]], [position], cache)
        worst = max(worst, np.abs(np.asarray(logits[0]) - full[position]).max())
    assert worst <= SAME_MATH_FLOAT32


@pytest.mark.parametrize("name", TINY_PRESETS)
@pytest.mark.parametrize("chunk", [1, 5, 8, 13])
def test_chunked_prefill_equals_one_shot(name, chunk, tiny_params):
    config, params = mz.get_preset(name), tiny_params(name)
    ids = _ids(config, 29, seed=1)
    one, one_cache, _ = inference.prefill(config, params, [ids], mz.KVCache.create(config, 1, 40))
    chunked, chunked_cache, _ = inference.prefill(
        config, params, [ids], mz.KVCache.create(config, 1, 40), chunk_size=chunk)
    np.testing.assert_allclose(chunked, one, atol=SAME_MATH_FLOAT32, rtol=0)
    # The caches agree on every slot the prompt wrote.
    for a, b in zip(one_cache.k + one_cache.v, chunked_cache.k + chunked_cache.v, strict=True):
        np.testing.assert_allclose(np.asarray(a)[:, :, :29], np.asarray(b)[:, :, :29],
                                   atol=SAME_MATH_FLOAT32, rtol=0)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_batch_rows_of_different_lengths_match_each_row_alone(name, tiny_params):
    config, params = mz.get_preset(name), tiny_params(name)
    prompts = [_ids(config, 7, seed=2), _ids(config, 19, seed=3), _ids(config, 12, seed=4)]
    steps = 6
    logits, cache, lengths = inference.prefill(config, params, prompts,
                                               mz.KVCache.create(config, 3, 48), chunk_size=8)
    batched = [np.asarray(logits)]
    tokens = np.argmax(batched[-1], axis=-1)
    for _ in range(steps):
        logits, cache = inference.decode(config, params, tokens, lengths, cache)
        batched.append(np.asarray(logits))
        tokens, lengths = np.argmax(batched[-1], axis=-1), lengths + 1
    for row, prompt in enumerate(prompts):
        alone, cache1, _ = inference.prefill(config, params, [prompt],
                                             mz.KVCache.create(config, 1, 48))
        np.testing.assert_allclose(alone[0], batched[0][row], atol=SAME_MATH_FLOAT32, rtol=0)
        position = len(prompt)
        for step in range(steps):
            token = int(np.argmax(batched[step][row]))
            alone, cache1 = inference.decode(config, params, [token], [position], cache1)
            np.testing.assert_allclose(alone[0], batched[step + 1][row], atol=SAME_MATH_FLOAT32,
                                       rtol=0)
            position += 1


def test_prompt_longer_than_the_cache_is_refused(tiny_params):
    config, params = mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2")
    with pytest.raises(mz.GemmaforgeError, match="needs 20 cache slots but the cache holds 16"):
        inference.prefill(config, params, [_ids(config, 20)], mz.KVCache.create(config, 1, 16))


def test_decode_past_the_cache_end_is_refused(tiny_params):
    config, params = mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2")
    _, cache, _ = inference.prefill(config, params, [_ids(config, 16)],
                                    mz.KVCache.create(config, 1, 16))
    with pytest.raises(mz.GemmaforgeError, match="raise --max-len"):
        inference.decode(config, params, [5], [16], cache)


def test_out_of_vocabulary_ids_are_refused(tiny_params):
    config, params = mz.get_preset("tiny-gemma1"), tiny_params("tiny-gemma1")
    with pytest.raises(mz.GemmaforgeError, match="outside the vocabulary"):
        inference.prefill(config, params, [[2, 512]], mz.KVCache.create(config, 1, 8))
