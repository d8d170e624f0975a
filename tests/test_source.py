"""Recipe `source`: a quantized GGUF's own grids carried into every format, read back exactly."""

from __future__ import annotations

import dataclasses
import json

import gguf
import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from model_zoo.checkpoints.gguf_reader import GGUFCheckpoint
from model_zoo.checkpoints.native import read_tensors
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import IN_AXES
from model_zoo.tree import flatten, path_name
from quantize.source import decode, source_tensor
from quantize.spec import to_matrix
from runtimes.artifact import open_artifact
from runtimes.jax_runner import JaxRunner
from runtimes.registry import make_runner
from runtimes.validation import validate_artifact
from tests.writers import random_blocks, write_gguf

T = gguf.GGMLQuantizationType
# s * (q - m / s) against the file's s * q - m: the division's rounding, a few ulp of the
# largest weight of the block.
ZERO_POINT_ULPS = 8
# Every matrix an input width K-quants take (super-blocks of 256 inputs): Gemma 3's shape at
# a tiny size.
KQ = dataclasses.replace(mz.get_preset("tiny-gemma3"), name="tiny-gemma3-kq", embed_dim=256,
                         num_heads=4, num_kv_heads=2, head_dim=64, hidden_dim=256,
                         num_layers=2, query_pre_attn_scalar=64)
# The real file's mix: Q8_0 table, Q5_0 / Q8_0 projections, Q4_K / Q6_K in the rest.
MIX = {"token_embd": T.Q8_0, "attn_q": T.Q5_0, "attn_k": T.Q5_0, "attn_v": T.Q8_0,
       "attn_output": T.Q4_K, "ffn_gate": T.Q4_0, "ffn_up": T.Q4_1, "ffn_down": T.Q6_K}
EXPECTED = {  # ggml type -> (bits, block, symmetric, float zero points)
    "Q8_0": (8, 32, True, False), "Q5_0": (8, 32, True, False), "Q4_0": (4, 32, True, False),
    "Q4_1": (4, 32, False, True), "Q4_K": (4, 32, False, True), "Q6_K": (8, 16, True, False),
}


def _raw(matrix_shape, qtype, seed=0):
    if qtype in (T.Q4_K, T.Q6_K, T.Q5_K):
        return random_blocks(matrix_shape, qtype, seed)
    weights = np.random.default_rng(seed).normal(0, 0.05, matrix_shape).astype(np.float32)
    return gguf.quants.quantize(weights, qtype)


def _ulp_bound(reference: np.ndarray, qtype) -> float:
    return ZERO_POINT_ULPS * np.spacing(np.abs(reference).max()) if EXPECTED[qtype.name][3] else 0


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q6_K])
def test_each_grid_decodes_to_the_files_own_dequantization(qtype):
    shape = (24, 512)  # [out, in]
    raw = _raw(shape, qtype, seed=3)
    reference = gguf.quants.dequantize(raw, qtype).reshape(shape)
    values, scales, zeros, spec = decode(raw, qtype, *shape)
    bits, block, symmetric, float_zeros = EXPECTED[qtype.name]
    assert (spec.bits, spec.block, spec.symmetric) == (bits, block, symmetric)
    assert (spec.zero_point == "float") == float_zeros
    assert scales.shape == (24, 512 // block)
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)
    assert low <= values.min() and values.max() <= high
    groups = values.reshape(24, -1, block).astype(np.float32)
    if zeros is not None:
        groups = groups - zeros[..., None]
    ours = (groups * scales[..., None]).reshape(shape)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=_ulp_bound(reference, qtype))


def test_a_type_without_a_grid_is_held_as_float32_and_says_so():
    raw = random_blocks((8, 256), T.Q5_K)
    held = source_tensor(raw.reshape(-1), T.Q5_K, (8, 256), 1, (256, 8), lambda w: w.T)
    assert held.exact and held.value.dtype == np.float32 and "Q5_K" in held.note
    np.testing.assert_array_equal(held.value, gguf.quants.dequantize(raw, T.Q5_K).T)


@pytest.fixture(scope="module")
def kq_gguf(tmp_path_factory):
    """A tiny Gemma 3 GGUF with the real file's mix of types; (path, its float32 params)."""
    path = tmp_path_factory.mktemp("kq") / "model.gguf"
    write_gguf(path, KQ, mz.init_params(KQ, 0), qtypes=MIX)
    return path, GGUFCheckpoint(path).params(KQ)


def _model(path, params) -> mz.LoadedModel:
    return mz.LoadedModel(KQ, params, mz.ByteTokenizer(), f"GGUF {path}", False,
                          checkpoint=str(path))


def test_source_keeps_every_tensor_on_its_grid(kq_gguf):
    path, params = kq_gguf
    sources = quantize.read_sources(quantize.get_recipe("source"), str(path), KQ)
    floats = {path_name(p): np.asarray(v) for p, v in flatten(params)}
    quantized = quantize.apply(floats.items(), "source", sources=sources)
    specs = quantize.specs_of(quantized, sources)
    for name, value in quantized.items():
        if not isinstance(value, quantize.QuantizedTensor):
            assert specs[name]["source"] == "F32" and name.endswith("scale")
            np.testing.assert_array_equal(value, floats[name])
            continue
        kind = specs[name]["source"]
        bits, block, symmetric, float_zeros = EXPECTED[kind]
        assert (specs[name]["bits"], specs[name]["block"]) == (bits, block)
        assert specs[name]["exact"] and (specs[name].get("zero_point") == "float") == float_zeros
        # The GGUF's float32 dequantization is what the float loader gives.
        np.testing.assert_allclose(value.dequantize(), floats[name], rtol=0,
                                   atol=_ulp_bound(floats[name], T[kind]))
    assert {spec["source"] for spec in specs.values()} == {"F32", *EXPECTED}


def _onnx_weight(tensors: dict, name: str, k: int, n: int) -> np.ndarray:
    """The float32 [K, N] one stored ONNX weight dequantizes to, from its raw bytes."""
    from tests.quantized_data import nibbles

    def raw(key):
        return next(data for stored, (_, data) in tensors.items()
                    if stored == key or stored.startswith(key + "."))

    def has(key):
        return any(stored == key or stored.startswith(key + ".") for stored in tensors)

    def nbits(prefix: str) -> np.ndarray:  # [N, K / block, blob] -> (q - zero) * scale [N, K]
        proto, data = tensors[prefix]
        groups, blob = proto.dims[1], proto.dims[2]
        bits = 4 if blob * 2 == k // groups else 8
        q = nibbles(data, n * k) if bits == 4 else np.frombuffer(data, np.uint8)
        q = q.astype(np.float32).reshape(n, groups, -1)
        scales = np.frombuffer(raw(f"{prefix}_scales"), np.float32).reshape(n, groups)
        zeros = np.full((n, groups), 2.0 ** (bits - 1), np.float32)
        if has(f"{prefix}_zeros"):
            packed = np.frombuffer(raw(f"{prefix}_zeros"), np.uint8).reshape(n, -1)
            zeros = (np.stack([packed & 0x0F, packed >> 4], -1).reshape(n, -1)[:, :groups]
                     if bits == 4 else packed).astype(np.float32)
        return ((q - zeros[..., None]) * scales[..., None]).reshape(n, k)

    if f"{name}.nbits" in tensors:
        weight = nbits(f"{name}.nbits")
        if f"{name}.nbits_high" in tensors:  # 8-bit as two 4-bit halves, the high one x16
            proto, data = tensors[f"{name}.nbits_high"]
            high = nibbles(data, n * k).astype(np.float32).reshape(n, proto.dims[1], -1) - 8
            scales = np.frombuffer(raw(f"{name}.nbits_scales"), np.float32).reshape(n, -1)
            weight = weight + 16 * (high * scales[..., None]).reshape(n, k)
        if has(f"{name}.nbits_offsets"):  # minus scale * zero, per block of inputs
            offsets = np.frombuffer(raw(f"{name}.nbits_offsets"), np.float32).reshape(-1, n)
            weight = weight - np.repeat(offsets, k // offsets.shape[0], axis=0).T
        return weight.T
    import onnx

    proto, data = tensors[f"{name}.values"]
    if proto.data_type == onnx.TensorProto.INT4:
        q = nibbles(data, k * n).astype(np.float32)
        q = np.where(q > 7, q - 16, q)
    else:
        q = np.frombuffer(data, {onnx.TensorProto.INT8: np.int8,
                                 onnx.TensorProto.UINT8: np.uint8}[proto.data_type])
    q = q.astype(np.float32).reshape(k, n)
    scales = np.frombuffer(raw(f"{name}.scales"), np.float32).reshape(-1, n)
    groups = q.reshape(scales.shape[0], -1, n)
    if f"{name}.zeros" in tensors:
        groups = groups - np.frombuffer(raw(f"{name}.zeros"), np.float32).reshape(-1, 1, n)
    return (groups * scales[:, None, :]).reshape(k, n)


def _tflite_float_buffers(path) -> set[bytes]:
    """The bytes of every float32 constant tensor of a .tflite."""
    import litert_converter.schema_py_generated as schema

    from exporter.tflite_weights import buffer_region

    data = path.read_bytes()
    model = schema.Model.GetRootAs(data, 0)
    found = set()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            offset, size = buffer_region(model.Buffers(tensor.Buffer()))
            if size and tensor.Type() == schema.TensorType.FLOAT32:
                found.add(data[offset:offset + size])
    return found


@pytest.mark.parametrize("profile", ["ort", "standard"])
def test_every_format_stores_the_files_grids_and_matches_float32(profile, kq_gguf, tmp_path):
    from tests.quantized_data import onnx_initializers

    path, params = kq_gguf
    out = tmp_path / "source"
    formats = ("stablehlo", "onnx", "litert") if profile == "ort" else ("onnx",)
    manifest = export(_model(path, params), out, formats=formats, buckets=(8,),
                      quant="source", onnx_profile=profile)
    assert manifest["recipe"] == "source"
    tensors_spec = manifest["quantization"]["tensors"]
    assert tensors_spec["layers.0.attn.o_proj"].items() >= {
        "source": "Q4_K", "exact": True, "zero_point": "float"}.items()
    floats = {path_name(p): np.asarray(v) for p, v in flatten(params)}

    # Read back every stored weight, dequantize it, compare with the GGUF's dequantization.
    stored = read_tensors(out / "weights.safetensors")
    onnx_tensors, onnx_model = onnx_initializers(out)
    for name, spec in tensors_spec.items():
        reference = floats[name]
        matrix = to_matrix(reference, IN_AXES[name.rsplit(".", 1)[-1]]) if "bits" in spec \
            else None
        bound = _ulp_bound(reference, T[spec["source"]]) if "bits" in spec else 0
        if matrix is None:
            np.testing.assert_array_equal(stored[name], reference)
            continue
        values = stored[f"{name}.values"].astype(np.float32)  # StableHLO's weights file
        scales = stored[f"{name}.scales"]
        groups = values.reshape(scales.shape[0], -1, values.shape[1])
        if f"{name}.zeros" in stored:
            groups = groups - stored[f"{name}.zeros"].astype(np.float32)[:, None, :]
        np.testing.assert_allclose((groups * scales[:, None, :]).reshape(matrix.shape), matrix,
                                   rtol=0, atol=bound)
        np.testing.assert_allclose(_onnx_weight(onnx_tensors, name, *matrix.shape), matrix,
                                   rtol=0, atol=bound)
    ops = {node.op_type for node in onnx_model.graph.node}
    if profile == "ort":  # the 4-bit offsets grid in MatMulNBits, the table's lookup fused
        assert {"MatMulNBits", "GatherBlockQuantized"} <= ops
        floats_stored = [p.name for p, _ in onnx_tensors.values()
                         if p.data_type == 1 and np.prod(p.dims) >= KQ.embed_dim ** 2]
        assert not floats_stored, floats_stored
        litert = manifest["formats"]["litert"]["quantization"]
        assert litert["quantized_tensors"] == 0 and "float32" in litert["scheme"]
        # LiteRT's float32 tensors: each matrix is the reference's dequantization, bit for bit
        # (as FULLY_CONNECTED stores it, [out, in], or the table's [V, D]).
        stored_floats = _tflite_float_buffers(out / "litert" / "model.tflite")
        _, quantized = quantize.quantize_params(params, "source", config=KQ,
                                                checkpoint=str(path))
        for name, value in quantized.items():
            if isinstance(value, quantize.QuantizedTensor):
                ours = quantize.dequantize(value)
                matrix = to_matrix(ours, value.in_axes)
                layouts = {ours.tobytes(), np.ascontiguousarray(matrix.T).tobytes()}
                assert layouts & stored_floats, f"{name} is not stored as the reference's"

    # Weight-only execution: every runtime matches the quantized reference, which is the
    # float32 model of the file.
    runtimes = (["stablehlo", "onnxruntime", "ort-genai", "litert", "litert-lm"]
                if profile == "ort" else ["onnxruntime"])
    report = validate_artifact(out, runtimes, decode_steps=4)
    assert report["passed"], json.dumps(report)[:2000]
    tokens = [2, 40, 41, 42]
    reference = make_runner("jax", open_artifact(out)).prefill(tokens)
    np.testing.assert_allclose(reference, JaxRunner(KQ, params, max_len=64).prefill(tokens),
                               rtol=0, atol=1e-4)


@pytest.mark.parametrize("checkpoint", [None, "safetensors"])
def test_source_needs_a_quantized_checkpoint(checkpoint, tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma3")
    where = None if checkpoint is None else str(tmp_path / "model.safetensors")
    model = mz.LoadedModel(config, tiny_params("tiny-gemma3"), mz.ByteTokenizer(), "weights",
                           checkpoint is None, checkpoint=where)
    with pytest.raises(GemmaforgeError, match="keeps a quantized checkpoint's own grids, but "
                                              ".*; use one of f32, fp16, int8, int8-dyn, int4"):
        export(model, tmp_path / "out", formats=("onnx",), quant="source")
    assert not (tmp_path / "out").exists()


def test_a_user_recipe_keeps_some_tensors_on_the_source_grid(kq_gguf, tmp_path):
    recipe_file = tmp_path / "mixed.toml"
    recipe_file.write_text('name = "mixed"\ndefault = {bits = 8}\n'
                           '[[rules]]\nmatch = "o_proj|down_proj"\nspec = "source"\n')
    path, params = kq_gguf
    _, quantized = quantize.quantize_params(params, str(recipe_file), config=KQ,
                                            checkpoint=str(path))
    assert quantized["layers.1.attn.o_proj"].spec.zero_point == "float"
    assert quantized["layers.1.mlp.down_proj"].spec.block == 16
    assert quantized["layers.1.mlp.up_proj"].spec.block is None
