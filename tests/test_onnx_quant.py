"""Quantized ONNX (`exporter.onnx_quant`): the quantizer's integers and scales stored in either
profile's layout, asymmetric, per-channel and float16 weights, accuracy levels, integer matmuls
for dynamic int8 activations, and a weights file that does not match refused."""


import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from exporter.onnx_quant import (
    ACCURACY_LEVELS,
    QuantizedWeight,
    integer_activations,
    session_config,
    write_weights,
)
from model_zoo.checkpoints.native import write_safetensors
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import is_matrix
from runtimes.validation import validate_artifact
from tests.quantized_data import nibbles, onnx_initializers


def _stored_weight(tensors, name: str, bits: int, k: int, n: int):
    """(values as signed ints [K, N], scales [groups, N]) of a quantized weight read back from
    either profile's layout, undoing only the format's own packing and zero-point offset."""
    import onnx

    if f"{name}.nbits" in tensors:  # MatMulNBits: unsigned [N, K/block, blob], zero point 2^(b-1)
        proto, raw = tensors[f"{name}.nbits"]
        if f"{name}.nbits_high" in tensors:  # 8-bit as two 4-bit halves: low + 16 * high
            high = nibbles(tensors[f"{name}.nbits_high"][1], n * k).astype(np.int16)
            unsigned = nibbles(raw, n * k).astype(np.int16) + 16 * high
        else:
            unsigned = (nibbles(raw, n * k) if bits == 4 else np.frombuffer(raw, np.uint8))
        values = (unsigned.astype(np.int16).reshape(n, k) - 2 ** (bits - 1)).T
        # MatMulNBits reads the scales flattened (an initializer named for its shape),
        # GatherBlockQuantized as [N, K / block]: the same bytes.
        _, raw_scales = next(tensor for key, tensor in tensors.items()
                             if key.startswith(f"{name}.nbits_scales"))
        scales = np.frombuffer(raw_scales, np.float32).reshape(n, -1).T
        return values, scales
    proto, raw = tensors[f"{name}.values"]  # DequantizeLinear: [K, N] INT4 / INT8
    if proto.data_type == onnx.TensorProto.INT4:
        unsigned = nibbles(raw, k * n).astype(np.int16)
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
    tensors, onnx_model = onnx_initializers(out)
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


DYNAMIC_INT8 = {"bits": 8, "block": None, "symmetric": True, "activations": "int8-dynamic"}


def test_integer_activations_needs_every_matrix_int8_dynamic_per_channel():
    tensors = {"embedder.embedding": DYNAMIC_INT8, "layers.0.attn.q_proj": DYNAMIC_INT8,
               "final_norm.scale": {"dtype": "float32"}}  # vectors do not count
    assert integer_activations(tensors)
    for other in ({"block": 32}, {"activations": None}, {"symmetric": False}, {"bits": 4}):
        assert not integer_activations(tensors | {"layers.0.attn.q_proj": DYNAMIC_INT8 | other})
    assert not integer_activations({"final_norm.scale": {"dtype": "float32"}})


def test_session_config_keeps_the_fusion_at_the_accuracy_level():
    for level in ACCURACY_LEVELS:
        assert session_config(level) == {"session.qdq_matmulnbits_accuracy_level": str(level)}


def _written(tmp_path, recipe: str, profile: str, level: int):
    """(our quantized tensors, write_weights' stored weights) of tiny-gemma3 under `recipe`."""
    config = mz.get_preset("tiny-gemma3")
    _, quantized = quantize.quantize_params(mz.init_params(config, 0), recipe)
    flat = quantize.flatten_params(quantize.to_params(quantized))
    weights_file = tmp_path / "weights.safetensors"
    write_safetensors(weights_file, flat,
                      flat.items())
    stored = write_weights(weights_file, tmp_path / "model.onnx.data", config,
                           quantize.specs_of(quantized), profile, level)
    assert set(stored) == set(quantized)
    for name in quantized:  # vectors stay constants, matrices quantized
        assert isinstance(stored[name], QuantizedWeight) == is_matrix(name), name
    return quantized, {name: weight for name, weight in stored.items()
                       if isinstance(weight, QuantizedWeight)}


@pytest.mark.parametrize("profile, level", [("ort", 0), ("ort", 4), ("standard", 0)])
def test_write_weights_holds_our_int8_values_in_each_layout(profile, level, tmp_path):
    """ort: MatMulNBits' unsigned q + 128, as two 4-bit halves at level 0 (which has no fast
    8-bit kernel); standard: DequantizeLinear's int8 [K, N] as ours."""
    quantized, stored = _written(tmp_path, "int8", profile, level)
    for name, weight in stored.items():
        ours = quantized[name].values
        k, n = ours.shape
        assert (weight.k, weight.n, weight.bits, weight.accuracy_level) == (k, n, 8, level)
        if profile == "standard":
            assert weight.layout == "dq" and weight.high is None
            np.testing.assert_array_equal(weight.values.load(), ours)
            continue
        assert weight.layout == "nbits" and (weight.high is not None) == (level == 0)
        if level == 0:
            low = nibbles(weight.values.load().tobytes(), n * k).astype(np.int16)
            high = nibbles(weight.high.load().tobytes(), n * k).astype(np.int16)
            unsigned = low + 16 * high
        else:
            unsigned = weight.values.load().astype(np.int16)
        np.testing.assert_array_equal(unsigned.reshape(n, k).T - 128, ours)


def test_write_weights_makes_int8_dynamic_matmuls_integer(tmp_path):
    """Every matrix of int8-dyn is MatMulInteger's: uint8 q + 128 [K, N], one scale a
    channel."""
    quantized, stored = _written(tmp_path, "int8-dyn", "ort", 0)
    for name, weight in stored.items():
        assert weight.layout == "dq" and weight.activations == "int8-dynamic"
        assert weight.describe().startswith("MatMulInteger")
        np.testing.assert_array_equal(weight.values.load().astype(np.int16) - 128,
                                      quantized[name].values)
        np.testing.assert_array_equal(weight.scales.load(), quantized[name].scales.reshape(-1))


def test_write_weights_refuses_a_weights_file_that_does_not_match(tmp_path):
    config = mz.get_preset("tiny-gemma3")
    _, quantized = quantize.quantize_params(mz.init_params(config, 0), "int8")
    flat = quantize.flatten_params(quantize.to_params(quantized))
    specs, weights_file = quantize.specs_of(quantized), tmp_path / "weights.safetensors"

    def refused(tensors: dict, message: str):
        write_safetensors(weights_file, tensors,
                          tensors.items())
        with pytest.raises(GemmaforgeError, match=message):
            write_weights(weights_file, tmp_path / "data", config, specs, "ort")

    name = "layers.0.mlp.up_proj"
    refused(flat | {f"{name}.values": flat[f"{name}.values"][:-1]},
            f"{name}.values has shape")
    refused({n: a for n, a in flat.items() if n != "final_norm.scale"},
            "has no tensor final_norm.scale")
