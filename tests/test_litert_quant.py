"""Quantized LiteRT (`exporter.litert_quant`): our integers and scales held by int8 and int4
models, the grids it refuses rather than re-rounds, one quantized table with plain ops, the plan
it makes of a recipe's specs, and the int4 scales as it stores them."""

import re

import ml_dtypes
import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from exporter.litert_quant import Plan, check_recipe, stored_scales
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import is_matrix
from model_zoo.tree import flatten, path_name
from runtimes.validation import validate_artifact

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


def _specs(recipe: str) -> dict[str, dict]:
    config = mz.get_preset("tiny-gemma3")
    weights = ((path_name(path), np.asarray(leaf))
               for path, leaf in flatten(mz.init_params(config, 0)))
    return quantize.specs_of(quantize.apply(weights, recipe))


def test_check_recipe_plans_what_litert_stores():
    specs = _specs("int8")
    projections = sum(is_matrix(name) for name in specs) - 1  # the table apart
    assert check_recipe(specs) == Plan("int8", None, False, int8_tensors=projections + 1)
    assert check_recipe(_specs("int8-dyn")) == Plan("int8", None, True,
                                                    int8_tensors=projections + 1)
    assert check_recipe(_specs("int4")) == Plan("int4", 32, True, int8_tensors=1,
                                                int4_tensors=projections)
    assert check_recipe(_specs("f32")) == Plan(None)
    # A checkpoint's own grids (the `source` recipe) are not LiteRT's to hold.
    assert check_recipe({name: {"source": "Q4_K", "exact": True} for name in specs}) == Plan(None)


def test_check_recipe_refuses_a_table_quantized_alone():
    specs = {name: {"dtype": "float32"} for name in _specs("f32")}
    specs["embedder.embedding"] = {"bits": 8, "block": None, "symmetric": True}
    with pytest.raises(GemmaforgeError, match="quantizes the table alone"):
        check_recipe(specs)


def test_stored_scales_are_bfloat16_values_held_in_float16():
    """XNNPACK reads int4 block scales as bfloat16: each is rounded to bfloat16 (8
    significant bits, half a spacing at most) and float16 holds the result exactly."""
    scales = np.random.default_rng(0).uniform(1e-4, 1e-1, (64, 8)).astype(np.float32)
    stored = stored_scales(scales)
    assert stored.dtype == np.float16
    as_bfloat16 = scales.astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(stored.astype(np.float32), as_bfloat16)
    np.testing.assert_allclose(stored.astype(np.float32), scales, rtol=BFLOAT16_HALF_SPACING,
                               atol=0)
    assert not np.array_equal(stored.astype(np.float32), scales)  # rounding did happen
