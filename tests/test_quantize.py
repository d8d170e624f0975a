"""Quantization specs and recipes: the grids, the rounding error bound, exactness on the grid,
the tied embedding quantized once, user recipe files, and clear errors for bad input."""

import collections
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from model_zoo.cache import KVCache
from model_zoo.checkpoints.native import read_tensors, weight_specs
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import apply
from model_zoo.tree import flatten, get_path, parse_name, path_name, unflatten
from quantize.spec import QuantSpec, quantize_tensor
from quantize.tensor import dequantize_params
from runtimes.artifact import open_artifact
from runtimes.jax_runner import JaxRunner
from runtimes.registry import make_runner
from runtimes.validate import validate_artifact

# Round-to-nearest puts every weight within half a step of its grid point; float32 arithmetic on
# the scale adds a few ulps.
HALF_STEP_SLACK = 1.0 + 1e-5
# Dequantization fused into a matmul by XLA: float32 reordering only (relative to max |logit|).
FUSED_DEQUANTIZE_RTOL = 1e-5


# tiny-gemma3 widened so that every input dimension holds a block of 128.
WIDE = dataclasses.replace(mz.get_preset("tiny-gemma3"), name="tiny-gemma3-wide", embed_dim=128,
                           hidden_dim=256, head_dim=32)


def _weights(config=WIDE, seed=0):
    params = mz.init_params(config, seed)
    return [(path_name(p), np.asarray(leaf)) for p, leaf in flatten(params)]


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


# `source` takes its tensors from a quantized GGUF (tests/test_source.py), not from floats.
@pytest.mark.parametrize("recipe", sorted(set(quantize.RECIPES) - {"source"}))
def test_every_named_recipe_covers_every_parameter_once(recipe):
    weights = _weights()
    hessians = quantize.calibrate(quantize.get_recipe(recipe), WIDE, mz.init_params(WIDE, 0),
                                  mz.ByteTokenizer())
    quantized = quantize.apply(weights, recipe, hessians)
    assert list(quantized) == [name for name, _ in weights]  # one table: lookup and LM head
    for name, weight in weights:
        back = quantize.dequantize(quantized[name])
        assert back.shape == weight.shape and back.dtype == np.float32
        if weight.ndim == 1:  # norm scales stay float32 in every recipe
            np.testing.assert_array_equal(back, weight)


def test_int4_keeps_the_table_int8_and_blocks_of_32_elsewhere():
    quantized = quantize.apply(_weights(), "int4")
    assert quantized["embedder.embedding"].spec == QuantSpec(8)
    assert quantized["layers.0.mlp.down_proj"].spec == QuantSpec(4, block=32)
    assert quantized["layers.0.attn.o_proj"].values.shape == (128, 128)  # [N*H, D]
    specs = quantize.specs_of(quantized)
    vectors = [name for name, weight in _weights() if weight.ndim == 1]
    assert vectors and all(specs[name] == {"dtype": "float32"} for name in vectors)


def test_int8_error_is_far_below_int4_error():
    weights = dict(_weights())
    errors = {}
    for recipe in ("int8", "int4", "fp16"):
        quantized = quantize.apply(weights.items(), recipe)
        w = weights["layers.0.mlp.gate_proj"]
        errors[recipe] = np.abs(quantize.dequantize(quantized["layers.0.mlp.gate_proj"]) - w).max()
    assert errors["fp16"] < errors["int8"] < errors["int4"] / 4


def test_user_recipe_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('default = {bits = 4, block = 64}\n'
                    '[[rules]]\nmatch = "embedder"\nspec = {bits = 8}\n'
                    '[[rules]]\nmatch = \'layers\\.0\\.\'\nspec = "f32"\n')
    recipe = quantize.get_recipe(str(path))
    assert recipe.name == "mine"
    quantized = quantize.apply(_weights(), recipe)
    assert quantized["embedder.embedding"].spec == QuantSpec(8)
    assert isinstance(quantized["layers.0.mlp.up_proj"], np.ndarray)
    assert quantized["layers.1.mlp.up_proj"].spec == QuantSpec(4, block=64)
    json_path = tmp_path / "same.json"
    json_path.write_text('{"default": "fp16"}')
    assert quantize.apply(_weights(), str(json_path))["layers.1.mlp.up_proj"].dtype == np.float16


def test_user_recipe_file_calibrates_with_gptq(tmp_path, tiny_params):
    """`method = "gptq"` rounds a user recipe's projections by GPTQ (per channel here: a block
    of all inputs) and the table to nearest."""
    config, params = mz.get_preset("tiny-gemma3"), tiny_params("tiny-gemma3")
    path = tmp_path / "int8-cal.toml"
    path.write_text('method = "gptq"\ndefault = {bits = 8}\n')
    assert quantize.get_recipe(str(path)).method == "gptq"
    _, calibrated = quantize.quantize_params(params, str(path), config=config,
                                             tokenizer=mz.ByteTokenizer())
    _, nearest = quantize.quantize_params(params, "int8", config=config)
    table = "embedder.embedding"
    assert np.array_equal(calibrated[table].values, nearest[table].values)
    projection = "layers.0.mlp.down_proj"
    assert calibrated[projection].scales.shape == nearest[projection].scales.shape
    assert not np.array_equal(calibrated[projection].values, nearest[projection].values)


@pytest.mark.parametrize("text, message", [
    ("default = {bits = 3}", "bits must be one of"),
    ("default = {bits = 4, block = 48}", "block must be one of"),
    ("default = {bits = 8, activations = \"int16\"}", "activations must be"),
    ("default = {bits = 8, size = 3}", "takes only bits"),
    ("default = {bits = 4, zero_point = \"float\"}", "float for an asymmetric grid"),
    ("[[rules]]\nmatch = \"(\"\nspec = \"f32\"", "bad regular expression"),
    ("colour = 1", "unknown keys"),
    ("method = \"awq\"", "method 'awq' is not one of rtn, gptq"),
    ("default = ", "not valid TOML"),
])
def test_bad_recipe_files_are_clear_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(GemmaforgeError, match=message):
        quantize.get_recipe(str(path))


def test_unknown_recipe_and_a_block_that_does_not_divide():
    with pytest.raises(GemmaforgeError, match="unknown recipe 'int3'; recipes: f32, fp16"):
        quantize.get_recipe("int3")
    with pytest.raises(GemmaforgeError, match="block 128 does not divide layers.0.attn.k_proj's "
                                              "64 input features"):
        quantize.apply(_weights(mz.get_preset("tiny-gemma3")), "int4-b128")


def test_specs_cover_the_config():
    config = mz.get_preset("tiny-gemma2")
    quantized = quantize.apply(_weights(config), "int8")
    assert set(quantize.specs_of(quantized)) == set(weight_specs(config))


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


@pytest.mark.parametrize("recipe", ["int8", "int4"])
def test_stablehlo_export_carries_and_runs_the_quantized_numbers(recipe, tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma3")
    params = tiny_params("tiny-gemma3")
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    out = tmp_path / recipe
    manifest = export(model, out, formats=("stablehlo",), buckets=(8,), quant=recipe)
    assert manifest["recipe"] == recipe and manifest["precision"] == f"quantized {recipe}"
    assert manifest["quantization"]["tensors"]["layers.0.mlp.up_proj"]["bits"] == int(recipe[3])

    # The artifact stores the quantizer's own integers and scales, bit for bit.
    qparams, quantized = quantize.quantize_params(params, recipe)
    stored = read_tensors(out / "weights.safetensors")
    for name, value in quantized.items():
        if isinstance(value, quantize.QuantizedTensor):
            np.testing.assert_array_equal(stored[f"{name}.values"], value.values)
            np.testing.assert_array_equal(stored[f"{name}.scales"], value.scales)
        else:
            np.testing.assert_array_equal(stored[name], value)
    assert (out / "weights.safetensors").stat().st_size < 0.5 * 4 * sum(mz.count_params(config))
    # The programs take the integer tensors and dequantize them.
    decode = (out / "stablehlo" / "decode.mlir").read_text()
    assert "xi8>" in decode and "xf32>" in decode

    # The reference validation holds them to is the quantized model...
    artifact = open_artifact(out)
    tokens = [2, 40, 41, 42]
    reference = make_runner("jax", artifact).prefill(tokens)
    np.testing.assert_array_equal(reference,
                                  JaxRunner(config, qparams, max_len=artifact.max_len)
                                  .prefill(tokens))
    assert not np.allclose(reference, JaxRunner(config, params, max_len=artifact.max_len)
                           .prefill(tokens), atol=1e-4)
    # ...and StableHLO on XLA and on IREE match it.
    report = validate_artifact(out, ["stablehlo", "iree"], decode_steps=4)
    assert report["passed"], report


def _onnx_initializers(out):
    """name -> (TensorProto, raw bytes) of the exported decoder's initializers."""
    import onnx

    model = onnx.load(out / "onnx" / "model.onnx", load_external_data=False)
    tensors = {}
    for proto in model.graph.initializer:
        if proto.data_location == onnx.TensorProto.EXTERNAL:
            where = {entry.key: entry.value for entry in proto.external_data}
            with open(out / "onnx" / where["location"], "rb") as file:
                file.seek(int(where["offset"]))
                raw = file.read(int(where["length"]))
        else:
            raw = proto.raw_data
        tensors[proto.name] = (proto, raw)
    return tensors, model


def _nibbles(raw: bytes, count: int) -> np.ndarray:
    """Unsigned 4-bit values, the low nibble of each byte first (ONNX's packing)."""
    data = np.frombuffer(raw, np.uint8)
    return np.stack([data & 0x0F, data >> 4], axis=-1).reshape(-1)[:count]


def _stored_weight(tensors, name: str, bits: int, k: int, n: int):
    """(values as signed ints [K, N], scales [groups, N]) of a quantized weight read back from
    either profile's layout, undoing only the format's own packing and zero-point offset."""
    import onnx

    if f"{name}.nbits" in tensors:  # MatMulNBits: unsigned [N, K/block, blob], zero point 2^(b-1)
        proto, raw = tensors[f"{name}.nbits"]
        if f"{name}.nbits_high" in tensors:  # 8-bit as two 4-bit halves: low + 16 * high
            high = _nibbles(tensors[f"{name}.nbits_high"][1], n * k).astype(np.int16)
            unsigned = _nibbles(raw, n * k).astype(np.int16) + 16 * high
        else:
            unsigned = (_nibbles(raw, n * k) if bits == 4 else np.frombuffer(raw, np.uint8))
        values = (unsigned.astype(np.int16).reshape(n, k) - 2 ** (bits - 1)).T
        # MatMulNBits reads the scales flattened (an initializer named for its shape),
        # GatherBlockQuantized as [N, K / block]: the same bytes.
        _, raw_scales = next(tensor for key, tensor in tensors.items()
                             if key.startswith(f"{name}.nbits_scales"))
        scales = np.frombuffer(raw_scales, np.float32).reshape(n, -1).T
        return values, scales
    proto, raw = tensors[f"{name}.values"]  # DequantizeLinear: [K, N] INT4 / INT8
    if proto.data_type == onnx.TensorProto.INT4:
        unsigned = _nibbles(raw, k * n).astype(np.int16)
        values = np.where(unsigned > 7, unsigned - 16, unsigned).reshape(k, n)
    else:
        values = np.frombuffer(raw, np.int8).reshape(k, n)
    _, raw_scales = tensors[f"{name}.scales"]
    return values, np.frombuffer(raw_scales, np.float32).reshape(-1, n)


@pytest.mark.parametrize("profile", ["ort", "standard"])
@pytest.mark.parametrize("recipe", ["int8", "int4"])
def test_onnx_export_stores_the_quantizers_numbers_and_runs_them(recipe, profile, tmp_path,
                                                                 tiny_params):
    config = mz.get_preset("tiny-gemma3")
    params = tiny_params("tiny-gemma3")
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    out = tmp_path / recipe
    manifest = export(model, out, formats=("onnx",), buckets=(8,), quant=recipe,
                      onnx_profile=profile)
    section = manifest["formats"]["onnx"]
    assert section["quantization"]["accuracy_level"] == 0

    # Read back: the same integers and scales as the quantizer's (a per-channel scale repeated
    # over the blocks MatMulNBits reads), nothing re-rounded; no float32 copy of any matrix.
    _, quantized = quantize.quantize_params(params, recipe)
    tensors, onnx_model = _onnx_initializers(out)
    for name, value in quantized.items():
        if not isinstance(value, quantize.QuantizedTensor):
            continue
        k, n = value.values.shape
        values, scales = _stored_weight(tensors, name, value.spec.bits, k, n)
        np.testing.assert_array_equal(values, value.values)
        repeat = scales.shape[0] // value.scales.shape[0]
        np.testing.assert_array_equal(scales, np.repeat(value.scales, repeat, axis=0))
    big_floats = [p.name for p, _ in tensors.values()
                  if p.data_type == 1 and np.prod(p.dims) >= config.embed_dim ** 2]
    assert not big_floats, big_floats

    ops = {node.op_type for node in onnx_model.graph.node}
    if profile == "ort":
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops and "MatMul" not in ops
    else:
        assert "DequantizeLinear" in ops and not any(
            node.domain == "com.microsoft" for node in onnx_model.graph.node)

    # Parity with the quantized JAX reference on both ONNX runtimes.
    report = validate_artifact(out, ["onnxruntime", "ort-genai"], decode_steps=4)
    assert report["passed"], report


ASYMMETRIC = """
name = "mixed"
default = {bits = 4, block = 32, symmetric = false}
[[rules]]
match = "embedder.embedding"
spec = {bits = 8, symmetric = false}
[[rules]]
match = "down_proj"
spec = {bits = 8, block = 64}
[[rules]]
match = "up_proj"
spec = "fp16"
[[rules]]
match = "layers.0.attn.q_proj"
spec = {bits = 4}
"""


@pytest.mark.parametrize("preset", ["tiny-gemma1", "tiny-gemma2"])
@pytest.mark.parametrize("profile", ["ort", "standard"])
def test_onnx_runs_asymmetric_per_channel_and_half_weights(preset, profile, tmp_path,
                                                           tiny_params):
    """Zero points, per-channel 4-bit, float16 storage and an asymmetric table lookup, in
    both profiles (the standard one needs its session config against onnxruntime's
    DequantizeLinear + MatMul fusion at accuracy level 4)."""
    recipe = tmp_path / "mixed.toml"
    recipe.write_text(ASYMMETRIC)
    model = mz.LoadedModel(mz.get_preset(preset), tiny_params(preset), mz.ByteTokenizer(),
                           "test weights", True)
    export(model, tmp_path / "out", formats=("onnx",), buckets=(8,), quant=str(recipe),
           onnx_profile=profile)
    report = validate_artifact(tmp_path / "out", ["onnxruntime", "ort-genai"], decode_steps=4)
    assert report["passed"], report


def test_round_activations_puts_each_token_on_its_own_int8_grid():
    from model_zoo.layers import round_activations

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4, 8)) * rng.uniform(0.1, 30, (2, 3, 1, 1))).astype(np.float32)
    x[1, 2] = 0.0  # a token of zeros stays zeros
    rounded = np.asarray(round_activations(jnp.asarray(x), 2, "int8-dynamic"))
    scale = np.abs(x).max(axis=(2, 3), keepdims=True) / 127  # over the token's last two axes
    steps = rounded / np.where(scale > 0, scale, 1.0)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.abs(np.round(steps)).max() == 127  # each token's largest input is +-127 steps
    assert np.all(np.abs(rounded - x) <= scale / 2 * HALF_STEP_SLACK)
    assert not rounded[1, 2].any()
    assert np.array_equal(np.asarray(round_activations(jnp.asarray(x), 2, None)), x)


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
                                          KVCache.create(run_config, 1, 16))[0])
        assert run_config.activation_quant == (None if recipe == "int8" else "int8-dynamic")
        assert quantized["layers.0.attn.q_proj"].spec.activations == run_config.activation_quant
    difference = np.abs(logits["int8"] - logits["int8-dyn"]).max()
    assert 1e-4 * np.abs(logits["int8"]).max() < difference < 0.1 * np.abs(logits["int8"]).max()


def test_recipes_with_activations_on_some_matrices_only_are_refused(tmp_path, tiny_params):
    recipe = tmp_path / "some.toml"
    recipe.write_text('default = {bits = 8, activations = "int8-dynamic"}\n[[rules]]\n'
                      'match = "mlp"\nspec = {bits = 8}\n')
    model = mz.LoadedModel(mz.get_preset("tiny-gemma3"), tiny_params("tiny-gemma3"),
                           mz.ByteTokenizer(), "test weights", True)
    with pytest.raises(GemmaforgeError, match="quantizes activations for some matrices only"):
        export(model, tmp_path / "out", formats=("onnx",), quant=str(recipe))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


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
        initializers, _ = _onnx_initializers(out)
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


# ai-edge-quantizer recomputes each channel's scale from our dequantized weights: max|q * s| / 127
# in float32, which may land an ulp away from s.
SCALE_ULPS_RTOL = 2 * np.finfo(np.float32).eps


@pytest.mark.parametrize("preset", ["tiny-gemma2", "tiny-gemma3"])
def test_litert_int8_holds_the_quantizers_numbers_and_runs_them(preset, tmp_path, tiny_params):
    from exporter.tflite_inspect import quantized_weights

    config, params = mz.get_preset(preset), tiny_params(preset)
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    out = tmp_path / "int8"
    manifest = export(model, out, formats=("litert", "onnx", "stablehlo"), buckets=(8,),
                      quant="int8")
    ops = manifest["formats"]["litert"]["signatures"]["decode"]["ops"]
    assert ops["EMBEDDING_LOOKUP"] == 1 and ops["DEQUANTIZE"] == ops["FULLY_CONNECTED"]

    # Read back: each stored int8 matrix is one of ours, transposed as FULLY_CONNECTED and
    # EMBEDDING_LOOKUP store it, with our scales; the table is stored once, for the lookup and
    # the head, and nothing is left float.
    _, quantized = quantize.quantize_params(params, "int8")
    ours = {value.values.T.tobytes(): (name, value) for name, value in quantized.items()
            if isinstance(value, quantize.QuantizedTensor)}
    stored = quantized_weights(out / "litert" / "model.tflite")
    matched = set()
    for tensor in stored.values():
        name, value = ours[tensor["values"].tobytes()]
        np.testing.assert_allclose(tensor["scales"], value.scales[0], rtol=SCALE_ULPS_RTOL,
                                   atol=0)
        matched.add(name)
    assert len(stored) == len(matched) == len(ours)

    # Parity: the three formats from one quantization, every runner, against the quantized
    # JAX reference.
    report = validate_artifact(out, ["litert", "litert-lm", "onnxruntime", "stablehlo"],
                               decode_steps=4)
    assert report["passed"], report


# LiteRT int4 block scales have bfloat16's 8 significant bits: ours rounded to nearest are at
# most half its spacing away.
BFLOAT16_HALF_SPACING = 2.0 ** -8


@pytest.mark.parametrize("preset, recipe", [("tiny-gemma2", "int4"), ("tiny-gemma3", "int4-cal")])
def test_litert_int4_holds_our_values_and_scales_and_runs_them(preset, recipe, tmp_path,
                                                              tiny_params):
    """One quantization to all three formats. LiteRT stores each projection as an int4
    blockwise dynamic-range FULLY_CONNECTED holding our values bit for bit and our scales
    rounded to bfloat16, and the table once as our int8; ai-edge-quantizer's own rounding
    (recorded) agrees with ours for round-to-nearest and not for GPTQ's blocks."""
    import ml_dtypes

    from exporter.tflite_inspect import blockwise_weights, quantized_weights

    config, params = mz.get_preset(preset), tiny_params(preset)
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    out = tmp_path / recipe
    manifest = export(model, out, formats=("litert", "onnx", "stablehlo"), buckets=(8,),
                      quant=recipe)
    section = manifest["formats"]["litert"]["quantization"]
    ops = manifest["formats"]["litert"]["signatures"]["decode"]["ops"]
    assert ops["EMBEDDING_LOOKUP"] == 1 and "DEQUANTIZE" not in ops  # integer throughout

    _, quantized = quantize.quantize_params(params, recipe, config=config,
                                            tokenizer=mz.ByteTokenizer())
    ours = {value.values.T.tobytes(): (name, value) for name, value in quantized.items()
            if isinstance(value, quantize.QuantizedTensor)}
    tflite = out / "litert" / "model.tflite"
    matched = set()
    for tensor in blockwise_weights(tflite).values():
        name, value = ours[tensor["values"].tobytes()]
        assert tensor["block"] == value.spec.block == 32
        stored, scales = tensor["scales"].astype(np.float32), value.scales.T
        assert np.array_equal(stored.astype(ml_dtypes.bfloat16).astype(np.float32), stored)
        np.testing.assert_allclose(stored, scales, rtol=BFLOAT16_HALF_SPACING, atol=0)
        matched.add(name)
    (table,) = quantized_weights(tflite).values()
    assert ours[table["values"].tobytes()][0] == "embedder.embedding"
    assert len(matched) == len(ours) - 1 == section["quantized_tensors"] - 1
    rounding = section["quantizer_rounding"]
    assert rounding["values"] == sum(quantized[name].values.size for name in matched)
    if recipe == "int4":
        assert rounding["values_differing"] == 0 and rounding["max_scale_difference"] == 0
    else:
        assert rounding["values_differing"] > 0

    report = validate_artifact(out, ["litert", "litert-lm", "onnxruntime", "stablehlo"],
                               decode_steps=4)
    assert report["passed"], report
    litert = report["runtimes"]["litert"]
    assert litert["tolerance"]["kl_max"] and "tolerance" not in report["runtimes"]["stablehlo"]
    assert report["runtimes"]["litert-lm"]["text_reference"] == "litert"


@pytest.mark.parametrize("rules, message", [
    ("default = {bits = 4, block = 32, symmetric = false}\n[[rules]]\nmatch = \"embedder\"\n"
     "spec = {bits = 8}", "not layers.0.attn.k_proj's int4 blocks of 32 asymmetric"),
    ("default = {bits = 4}\n[[rules]]\nmatch = \"embedder\"\nspec = {bits = 8}",
     "int4 per channel"),
    ("default = {bits = 4, block = 32}", "not embedder.embedding's int4 blocks of 32"),
    ("default = {bits = 4, block = 32}\n[[rules]]\nmatch = \"embedder|layers\\\\.0\\\\.\"\n"
     "spec = {bits = 8}", "this recipe mixes int4 block 32, int8"),
    ("default = {bits = 4, block = 32}\n[[rules]]\nmatch = \"embedder\"\nspec = \"f32\"",
     "needs the table int8 per channel"),
    ("default = \"fp16\"", "does not store float16 weights"),
])
def test_litert_refuses_grids_it_would_re_round(rules, message, tmp_path, tiny_params):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(rules)
    model = mz.LoadedModel(mz.get_preset("tiny-gemma3"), tiny_params("tiny-gemma3"),
                           mz.ByteTokenizer(), "test weights", True)
    with pytest.raises(GemmaforgeError, match=re.escape(message)):
        export(model, tmp_path / "out", formats=("onnx", "litert"), quant=str(recipe))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("bits, block", [(4, 32), (8, None)])
def test_gptq_beats_round_to_nearest_on_its_calibration_inputs(bits, block):
    """GPTQ's one promise: a smaller output error ||X (W - W_q)|| on the inputs it saw, on the
    same grid (values within +-qmax, one scale per block and output). Per channel, the block
    (all 256 inputs) is larger than the rows GPTQ updates together."""
    from quantize.gptq import gptq

    rng = np.random.default_rng(0)
    inputs_dim = 256
    mixing = rng.standard_normal((inputs_dim, inputs_dim))  # correlated, as activations are
    inputs = rng.standard_normal((1024, inputs_dim)) @ mixing
    weight = rng.standard_normal((inputs_dim, 64)).astype(np.float32)
    spec = QuantSpec(bits, block=block)
    size = block or inputs_dim
    rtn = quantize_tensor("w", weight, spec, 1)
    values, scales = gptq(weight, inputs.T @ inputs, spec.qmax, size)
    blocks = inputs_dim // size
    assert np.abs(values).max() <= spec.qmax and scales.shape == (blocks, 64)
    calibrated = (values.reshape(blocks, size, 64) * scales[:, None, :]).reshape(inputs_dim, 64)
    error = np.linalg.norm(inputs @ (weight - calibrated))
    assert error < 0.8 * np.linalg.norm(inputs @ (weight - rtn.dequantize()))


def test_int4_cal_is_closer_to_float32_than_int4_on_unseen_text(tiny_params):
    """Calibrated on quantize/calibration.py's sample, measured on other text."""
    config = mz.get_preset("tiny-gemma3")
    params, tokenizer = tiny_params("tiny-gemma3"), mz.ByteTokenizer()
    ids = tokenizer.encode("Unseen words: a river, seven stones and the colour of the sky at "
                           "noon, measured twice by a careful hand.", add_bos=True)

    def log_probs(p):
        cache = KVCache.create(config, 1, len(ids))
        logits, _ = apply(config, p, jnp.asarray([ids]), jnp.arange(len(ids))[None], cache)
        return jax.nn.log_softmax(logits[0], axis=-1)

    reference = log_probs(params)

    def kl(recipe):
        qparams, _ = quantize.quantize_params(params, recipe, config=config,
                                              tokenizer=tokenizer)
        ours = log_probs(dequantize_params(qparams))
        return float(jnp.mean(jnp.sum(jnp.exp(reference) * (reference - ours), -1)))

    assert kl("int4-cal") < 0.75 * kl("int4")
    with pytest.raises(GemmaforgeError, match="calibrated"):
        quantize.quantize_params(params, "int4-cal")


def test_int4_cal_exports_like_int4(tmp_path, tiny_params):
    model = mz.LoadedModel(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"),
                           mz.ByteTokenizer(), "test weights", True)
    manifest = export(model, tmp_path / "out", formats=("onnx", "stablehlo"), buckets=(8,),
                      quant="int4-cal")
    assert manifest["quantization"]["tensors"]["layers.0.mlp.down_proj"]["block"] == 32
    report = validate_artifact(tmp_path / "out", ["onnxruntime", "stablehlo"], decode_steps=4)
    assert report["passed"], report


def test_onnx_accuracy_level_4_quantizes_activations(tmp_path, tiny_params):
    """Level 4 is recorded, reaches every MatMulNBits, and is another computation: farther
    from the reference than level 0, validated to the activation-rounding tolerance."""
    import onnx

    model = mz.LoadedModel(mz.get_preset("tiny-gemma3"), tiny_params("tiny-gemma3"),
                           mz.ByteTokenizer(), "test weights", True)
    errors = {}
    for level in (0, 4):
        out = tmp_path / f"level{level}"
        manifest = export(model, out, formats=("onnx",), buckets=(8,), quant="int4",
                          onnx_accuracy_level=level)
        assert manifest["formats"]["onnx"]["quantization"]["accuracy_level"] == level
        graph = onnx.load(out / "onnx" / "model.onnx", load_external_data=False).graph
        levels = {onnx.helper.get_attribute_value(a) for n in graph.node
                  if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
        assert levels == {level}
        report = validate_artifact(out, ["onnxruntime"], decode_steps=4)
        assert report["passed"], report
        errors[level] = max(part["max_abs_error"]
                            for p in report["runtimes"]["onnxruntime"]["prompts"].values()
                            for key, part in p.items() if key != "prompt_tokens")
    assert errors[0] < 1e-4 < errors[4]


def test_activation_rounding_tolerance_pools_positions_and_judges_distributions():
    """Where activations are rounded, a runtime passes on its positions' KL and top-1 share
    taken together, whatever its largest logit error; each of the three bounds can fail it,
    and a logit bound judges every part on its own."""
    from runtimes.tolerances import (
        ACTIVATION_ROUNDING_KL_MAX,
        ACTIVATION_ROUNDING_KL_MEAN,
        ACTIVATION_ROUNDING_MIN_TOP1,
    )
    from runtimes.validate import judge

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


@pytest.mark.parametrize("preset, recipe", [("tiny-gemma2", "int4"), ("tiny-gemma3", "int8-dyn")])
def test_litert_plain_ops_keep_one_quantized_table(preset, recipe, tmp_path, tiny_params):
    """`--no-fused` (plain ops, the faster graph on CPU) still looks the table up through the
    lookup composite, so the quantizer stores it once for the lookup and the LM head, as the
    fused model does, instead of a float copy per signature; the only other composite left is
    the final soft-cap (Gemma 2), which keeps the converter from folding into the LM head."""
    from exporter.tflite_inspect import quantized_weights

    config, params = mz.get_preset(preset), tiny_params(preset)
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    sizes = {}
    for fused in (True, False):
        out = tmp_path / str(fused)
        manifest = export(model, out, formats=("litert",), buckets=(8,), quant=recipe,
                          fused=fused)
        section = manifest["formats"]["litert"]
        sizes[fused] = (out / section["file"]).stat().st_size
        for name, signature in section["signatures"].items():
            ops = signature["ops"]
            assert "DEQUANTIZE" not in ops and "GATHER" not in ops and "GATHER_ND" not in ops
            soft_cap = name == "decode" and config.final_logit_softcap is not None
            if not fused:
                assert ops.get("STABLEHLO_COMPOSITE", 0) == soft_cap, (name, ops)
        assert section["signatures"]["decode"]["ops"]["EMBEDDING_LOOKUP"] == 1
        tables = [t for t in quantized_weights(out / section["file"]).values()
                  if t["values"].shape[0] == config.vocab_size]
        assert len(tables) == 1
    assert sizes[False] < 1.05 * sizes[True]
    report = validate_artifact(tmp_path / "False", ["litert", "litert-lm"], decode_steps=4)
    assert report["passed"], report
