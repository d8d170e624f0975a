"""Dynamic int8 activations: the rounding itself, the reference that rounds where int8 does not,
every format's export of it, and the tolerance that judges it."""

import collections
import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from model_zoo.cache import KVCache
from model_zoo.transformer import apply
from quantize.activations import activation_projection
from quantize.tensor import dequantize_params
from runtimes.validation import validate_artifact
from tests.quantized_data import HALF_STEP_SLACK, onnx_initializers


def test_round_activations_puts_each_token_on_its_own_int8_grid():
    from quantize.activations import round_activations

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4, 8)) * rng.uniform(0.1, 30, (2, 3, 1, 1))).astype(np.float32)
    x[1, 2] = 0.0  # a token of zeros stays zeros
    rounded = np.asarray(round_activations(jnp.asarray(x), 2))
    scale = np.abs(x).max(axis=(2, 3), keepdims=True) / 127  # over the token's last two axes
    steps = rounded / np.where(scale > 0, scale, 1.0)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() == 127  # each token's largest input is +-127 steps
    assert np.all(np.abs(rounded - x) <= scale / 2 * HALF_STEP_SLACK)
    assert not rounded[1, 2].any()
    # The model runs them through its projection: rounding under int8-dynamic, none otherwise.
    config = mz.get_preset("tiny-gemma2")
    rounding = activation_projection(dataclasses.replace(config, activation_quant="int8-dynamic"))
    assert np.array_equal(np.asarray(rounding("o_proj", jnp.asarray(x))), rounded)  # N, H axes
    assert np.array_equal(np.asarray(activation_projection(config)("o_proj", jnp.asarray(x))), x)


def test_int8_dyn_reference_rounds_activations_where_int8_does_not(tiny_params):
    """The same int8 weights; int8-dyn's model also rounds every projection's and the LM
    head's input, which moves its logits off int8's, a little."""
    config, params = mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2")
    tokens = jnp.asarray([[2, 17, 99, 401, 7, 8]], jnp.int32)
    positions = jnp.arange(6, dtype=jnp.int32)[None]
    logits = {}
    for recipe in ("int8", "int8-dyn"):
        qparams, quantized = quantize.quantize_params(params, recipe)
        run_config = quantize.model_config(config, recipe)
        logits[recipe] = np.asarray(apply(run_config, dequantize_params(qparams), tokens, positions,
                                          KVCache.create(run_config, 1, 16),
                                          projection=activation_projection(run_config))[0])
        assert run_config.activation_quant == (None if recipe == "int8" else "int8-dynamic")
        assert quantized["layers.0.attn.q_proj"].spec.activations == run_config.activation_quant
    difference = np.abs(logits["int8"] - logits["int8-dyn"]).max()
    assert 1e-4 * np.abs(logits["int8"]).max() < difference < 0.1 * np.abs(logits["int8"]).max()


# On the tiny presets the formats that round activations as the reference does come out at
# KL <= 8e-5 (a flip or none in 15 positions); XNNPACK's own rounding at ~1e-3.
TINY_SAME_ROUNDING_KL_MAX = 1e-3
DYNAMIC_INT4 = ('default = {bits = 4, block = 32, activations = "int8-dynamic"}\n[[rules]]\n'
                'match = "embedder"\nspec = {bits = 8, activations = "int8-dynamic"}\n')


@pytest.mark.parametrize("preset, profile, recipe", [("tiny-gemma2", "ort", "int8-dyn"),
                                                     ("tiny-gemma3", "standard", "int8-dyn"),
                                                     ("tiny-gemma3", "ort", DYNAMIC_INT4)])
def test_dynamic_activations_export_to_every_format(preset, profile, recipe, tmp_path,
                                                    tiny_params):
    """StableHLO carries the reference's rounding; ONNX rounds each quantized matmul's input
    the same way, then MatMulInteger (int8-dyn) or, for other weights, MatMulNBits /
    DequantizeLinear; LiteRT is dynamic range on XNNPACK, our integers in every
    FULLY_CONNECTED. Every runner against the reference that rounds activations."""
    import onnx

    from exporter.tflite_inspect import blockwise_weights, quantized_weights

    if recipe == DYNAMIC_INT4:
        (tmp_path / "dyn4.toml").write_text(DYNAMIC_INT4)
        recipe = str(tmp_path / "dyn4.toml")
    config, params = mz.get_preset(preset), tiny_params(preset)
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    out = tmp_path / "dyn"
    manifest = export(model, out, formats=("stablehlo", "onnx", "litert"), buckets=(8,),
                      quant=recipe, onnx_profile=profile)
    assert manifest["config"]["activation_quant"] == "int8-dynamic"
    graph = onnx.load(out / "onnx" / "model.onnx", load_external_data=False).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    matmuls = 7 * config.num_layers + 1  # q, k, v, o, gate, up, down a layer, and the head
    assert ops["Round"] == matmuls
    assert ops["MatMulInteger"] == (matmuls if recipe == "int8-dyn" else 0)
    litert = manifest["formats"]["litert"]
    assert litert["quantization"]["activations"]
    tflite_ops = litert["signatures"]["decode"]["ops"]
    # Integer FULLY_CONNECTED and lookup: no DEQUANTIZE (LiteRT-LM would run one every step).
    assert tflite_ops["EMBEDDING_LOOKUP"] == 1 and "DEQUANTIZE" not in tflite_ops
    _, quantized = quantize.quantize_params(params, recipe)
    ours = {value.values.T.tobytes(): name for name, value in quantized.items()
            if isinstance(value, quantize.QuantizedTensor)}
    tflite = out / "litert" / "model.tflite"
    stored = [*quantized_weights(tflite).values(), *blockwise_weights(tflite).values()]
    assert {ours[tensor["values"].tobytes()] for tensor in stored} == set(ours.values())
    if recipe == "int8-dyn":  # MatMulInteger's uint8 q + 128 and float32 scales: ours
        initializers, _ = onnx_initializers(out)
        for name, value in quantized.items():
            if isinstance(value, quantize.QuantizedTensor):
                raw = np.frombuffer(initializers[f"{name}.values"][1], np.uint8)
                assert np.array_equal(raw.astype(np.int16) - 128, value.values.reshape(-1))
                scales = np.frombuffer(initializers[f"{name}.scales"][1], np.float32)
                assert np.array_equal(scales, value.scales.reshape(-1))

    report = validate_artifact(out, decode_steps=4)
    assert report["passed"], report
    runtimes = report["runtimes"]
    assert set(runtimes) == {"stablehlo", "iree", "onnxruntime", "ort-genai", "litert",
                             "litert-lm"}
    assert all("kl_mean" in result["tolerance"] for result in runtimes.values())
    # The formats that round as the reference does differ from it only where float32 ulps
    # move a value across a rounding boundary: rare on the tiny models.
    for runtime in ("stablehlo", "iree", "onnxruntime", "ort-genai"):
        kl = max(part["kl_max"] for p in runtimes[runtime]["prompts"].values()
                 for key, part in p.items() if key != "prompt_tokens")
        assert kl < TINY_SAME_ROUNDING_KL_MAX, runtime


def test_activation_rounding_tolerance_pools_positions_and_judges_distributions():
    """Where activations are rounded, a runtime passes on its positions' KL and top-1 share
    taken together, whatever its largest logit error; each of the three bounds can fail it,
    and a logit bound judges every part on its own."""
    from runtimes.tolerances import (
        ACTIVATION_ROUNDING_KL_MAX,
        ACTIVATION_ROUNDING_KL_MEAN,
        ACTIVATION_ROUNDING_MIN_TOP1,
    )
    from runtimes.validation import judge

    tolerance = {"kl_mean": ACTIVATION_ROUNDING_KL_MEAN, "kl_max": ACTIVATION_ROUNDING_KL_MAX,
                 "min_top1": ACTIVATION_ROUNDING_MIN_TOP1}
    decode = {"positions": 16, "top1_agreement": 15, "max_abs_error": 4.5,
              "max_abs_logit": 25.0, "kl_mean": ACTIVATION_ROUNDING_KL_MEAN / 2,
              "kl_max": ACTIVATION_ROUNDING_KL_MAX / 2}
    prefill = decode | {"positions": 1, "top1_agreement": 0}  # one flip, pooled with the rest
    assert judge([prefill, decode, decode], tolerance)
    assert not judge([prefill, decode | {"top1_agreement": 12}, decode], tolerance)
    assert not judge([prefill, decode | {"kl_mean": 3 * ACTIVATION_ROUNDING_KL_MEAN}, decode],
                     tolerance)
    assert not judge([prefill | {"kl_max": 2 * ACTIVATION_ROUNDING_KL_MAX}, decode, decode],
                     tolerance)
    assert not judge([decode, {"text_identical": False}], tolerance)
    weight_only = {"atol": 1e-5, "rtol_of_max_logit": 5e-5, "min_top1": 1.0}
    assert not judge([decode | {"top1_agreement": 16}], weight_only)
    assert judge([decode | {"top1_agreement": 16, "max_abs_error": 1e-5}], weight_only)
