"""Recipes (`quantize.recipes`, `quantize.apply`): every parameter covered once, the tied
embedding quantized once, user recipe files, per-tensor specs, and clear errors for bad input."""

import dataclasses

import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import weight_specs
from model_zoo.tree import flatten, path_name
from quantize.spec import QuantSpec

# tiny-gemma3 widened so that every input dimension holds a block of 128.
WIDE = dataclasses.replace(mz.get_preset("tiny-gemma3"), name="tiny-gemma3-wide", embed_dim=128,
                           hidden_dim=256, head_dim=32)


def _weights(config=WIDE, seed=0):
    params = mz.init_params(config, seed)
    return [(path_name(p), np.asarray(leaf)) for p, leaf in flatten(params)]


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


def test_recipes_with_activations_on_some_matrices_only_are_refused(tmp_path, tiny_params):
    recipe = tmp_path / "some.toml"
    recipe.write_text('default = {bits = 8, activations = "int8-dynamic"}\n[[rules]]\n'
                      'match = "mlp"\nspec = {bits = 8}\n')
    model = mz.LoadedModel(mz.get_preset("tiny-gemma3"), tiny_params("tiny-gemma3"),
                           mz.ByteTokenizer(), "test weights", True)
    with pytest.raises(GemmaforgeError, match="quantizes activations for some matrices only"):
        export(model, tmp_path / "out", formats=("onnx",), quant=str(recipe))
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
