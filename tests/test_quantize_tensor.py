"""Quantized tensors (`quantize.spec`, `quantize.tensor`): the grids, the rounding error bound,
exactness on the grid, the table quantized along its rows, and the dequantized tree the model
runs, in the trace and out of it."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
import quantize
from model_zoo.cache import KVCache
from model_zoo.transformer import apply
from model_zoo.tree import flatten, get_path, parse_name, unflatten
from quantize.spec import QuantSpec
from quantize.tensor import dequantize_params, quantize_tensor
from tests.quantized_data import HALF_STEP_SLACK

# Dequantization fused into a matmul by XLA: float32 reordering only (relative to max |logit|).
FUSED_DEQUANTIZE_RTOL = 1e-5


@pytest.mark.parametrize("spec", [QuantSpec(8), QuantSpec(4, block=32), QuantSpec(8, block=64),
                                  QuantSpec(4, block=32, symmetric=False),
                                  QuantSpec(8, symmetric=False)])
def test_rounding_error_is_at_most_half_a_step(spec):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(128, 4, 16)).astype(np.float32) + (0 if spec.symmetric else 0.3)
    q = quantize_tensor("w.q_proj", weight, spec, in_axes=1)
    assert q.values.min() >= spec.qmin and q.values.max() <= spec.qmax
    blocks = 128 // (spec.block or 128)
    assert q.scales.shape == (blocks, 64) and q.values.shape == (128, 64)
    step = np.repeat(q.scales, 128 // blocks, axis=0).reshape(128, 4, 16)
    error = np.abs(q.dequantize() - weight)
    assert np.all(error <= step / 2 * HALF_STEP_SLACK)
    # The grid's ends are reached: scales are not wastefully large.
    assert q.values.max() == spec.qmax or q.values.min() == spec.qmin


def test_values_on_the_grid_come_back_exactly():
    rng = np.random.default_rng(1)
    scales = rng.uniform(0.01, 0.1, size=(2, 8)).astype(np.float32)
    values = rng.integers(-7, 8, size=(64, 8)).astype(np.float32)
    values[0] = 7  # each block's maximum sits on the grid's end, so its scale is recovered
    values[32] = -7
    weight = (values * np.repeat(scales, 32, axis=0)).astype(np.float32)
    q = quantize_tensor("w.gate_proj", weight, QuantSpec(4, block=32), in_axes=1)
    np.testing.assert_array_equal(q.values, values.astype(np.int8))
    np.testing.assert_allclose(q.dequantize(), weight, rtol=1e-6, atol=0)


def test_the_table_is_quantized_along_its_rows():
    # The LM head contracts D, the table's last axis: one scale per vocabulary row.
    table = np.random.default_rng(2).normal(size=(512, 64)).astype(np.float32)
    table[7] *= 100  # one loud row does not coarsen the others' scales
    q = quantize_tensor("embedder.embedding", table, QuantSpec(8), in_axes=-1)
    assert q.scales.shape == (1, 512)
    assert np.abs(q.dequantize()[0] - table[0]).max() < np.abs(table[0]).max() / 100


@pytest.mark.parametrize("recipe", ["int8", "int4", "fp16"])
def test_quantized_reference_is_the_float_model_on_the_dequantized_weights(recipe, tiny_params):
    config = mz.get_preset("tiny-gemma2")
    params = tiny_params("tiny-gemma2")
    qparams, quantized = quantize.quantize_params(params, recipe)
    dequantized = unflatten((parse_name(name), quantize.dequantize(value))
                            for name, value in quantized.items())
    tokens = jnp.asarray([[2, 17, 99, 401, 7, 8]], jnp.int32)
    positions = jnp.arange(6, dtype=jnp.int32)[None]
    run = jax.jit(lambda p: apply(config, dequantize_params(p), tokens, positions,
                                  KVCache.create(config, 1, 16))[0])
    # In-graph (jitted) dequantization gives the very weights the eager one does...
    in_graph = jax.jit(dequantize_params)(qparams)
    for path, leaf in flatten(dequantized):
        np.testing.assert_array_equal(np.asarray(get_path(in_graph, path)), leaf)
    # ...and XLA, fusing it into the matmuls, only reorders float32 rounding.
    quantized_logits, reference_logits = run(qparams), run(dequantized)
    scale = np.abs(np.asarray(reference_logits)).max()
    np.testing.assert_allclose(quantized_logits, reference_logits, rtol=0,
                               atol=FUSED_DEQUANTIZE_RTOL * scale)
    float_logits = run(params)
    assert not np.array_equal(np.asarray(quantized_logits), np.asarray(float_logits))
