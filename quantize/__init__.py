"""QuantSpec and recipes -> one quantized parameter tree shared by every format.

`apply(weights, recipe)` rounds each parameter once: integer values and scales
(`QuantizedTensor`), float16 arrays, or float32 arrays kept as they are. Every artifact is lowered
from that one result, and the JAX reference runs its dequantization.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import in_axes
from model_zoo.transformer import Params
from model_zoo.tree import flatten, parse_name, path_name, set_path
from quantize.activations import activation_projection
from quantize.recipes import RECIPES, SOURCE, Recipe, get_recipe, load_recipe_file
from quantize.source import SourceTensor
from quantize.spec import FLOAT16, FLOAT32, FloatSpec, QuantSpec
from quantize.tensor import (
    QuantizedTensor,
    dequantize_once,
    dequantize_params,
    flatten_params,
    is_quantized,
    nest_params,
    quantize_tensor,
)

__all__ = ["RECIPES", "FloatSpec", "QuantSpec", "QuantizedTensor", "Recipe",
           "activation_projection", "activation_quant", "apply", "calibrate", "dequantize",
           "dequantize_once", "dequantize_params", "flatten_params", "get_recipe",
           "is_quantized", "load_recipe_file", "model_config", "nest_params", "quantize_params",
           "read_sources", "specs_of", "to_params"]

Quantized = QuantizedTensor | np.ndarray
# The sample is ~700 tokens of Gemma's tokenizer; a byte tokenizer (test models) makes ~3,000.
CALIBRATION_TOKENS = 1024


def apply(weights: Iterable[tuple[str, np.ndarray]], recipe: Recipe | str,
          hessians: dict[str, np.ndarray] | None = None,
          sources: dict[str, SourceTensor] | None = None) -> dict[str, Quantized]:
    """name -> QuantizedTensor, or a float16 / float32 array, for each (name, float32 array).
    A calibrated recipe (method "gptq") needs `hessians` (`calibrate`): the projections it
    has one for are rounded by GPTQ, the rest (the table) to nearest. A recipe that keeps the
    checkpoint's grids needs its `sources` (`read_sources`)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    if recipe.calibrated and hessians is None:
        raise GemmaforgeError(f"recipe {recipe.name} is calibrated: run quantize.calibrate "
                              "first")
    if recipe.uses_source and sources is None:
        raise GemmaforgeError(f"recipe {recipe.name} keeps the checkpoint's grids: run "
                              "quantize.read_sources first")
    out = {}
    for name, weight in weights:
        weight = np.asarray(weight, np.float32)
        spec = recipe.spec_for(name, weight.shape)
        if spec == SOURCE:
            out[name] = sources[name].value
        elif spec == FLOAT32:
            out[name] = weight
        elif spec == FLOAT16:
            out[name] = weight.astype(np.float16)
        elif recipe.calibrated and name in hessians:
            out[name] = _gptq_tensor(name, weight, spec, hessians[name])
        else:
            out[name] = quantize_tensor(name, weight, spec, in_axes(name))
    return out


def _gptq_tensor(name: str, weight: np.ndarray, spec: QuantSpec,
                 hessian: np.ndarray) -> QuantizedTensor:
    from quantize.gptq import gptq
    from quantize.spec import block_of, to_matrix

    if not spec.symmetric:
        raise GemmaforgeError(f"GPTQ rounds onto symmetric grids; {name} is asymmetric")
    matrix = to_matrix(weight, in_axes(name))
    values, scales = gptq(matrix, hessian, spec.qmax, block_of(name, spec, matrix.shape[0]))
    return QuantizedTensor(values, scales, None, spec, tuple(weight.shape), in_axes(name))


def calibrate(recipe: Recipe, config, params, tokenizer) -> dict[str, np.ndarray] | None:
    """The calibration statistics a recipe needs (None for round-to-nearest recipes): each
    projection's H = X^T X on the committed sample, from the float32 `params`."""
    if not recipe.calibrated:
        return None
    from quantize.calibration import TEXT
    from quantize.gptq import hessians

    if params is None:
        raise GemmaforgeError(f"recipe {recipe.name} calibrates on the loaded model; load it "
                              "with its weights in memory")
    ids = tokenizer.encode(TEXT, add_bos=True)[:CALIBRATION_TOKENS]
    return hessians(config, params, ids)


def read_sources(recipe: Recipe, checkpoint, config) -> dict[str, SourceTensor] | None:
    """The checkpoint's own grids, for a recipe that keeps them (None for the others); a clear
    error when `checkpoint` (a path, None for random weights) is not a quantized GGUF."""
    if not recipe.uses_source:
        return None
    from quantize.source import read_sources as read

    return read(checkpoint, config, recipe.name)


def dequantize(value: Quantized) -> np.ndarray:
    """float32, the weight's own shape: what the quantized reference computes with."""
    if isinstance(value, QuantizedTensor):
        return value.dequantize()
    return np.asarray(value, np.float32)


def specs_of(quantized: dict[str, Quantized],
             sources: dict[str, SourceTensor] | None = None) -> dict[str, dict]:
    """Per-tensor specs, for the manifest; a tensor kept on the checkpoint's grid also records
    its source type and whether it is held exactly."""
    specs = {}
    for name, value in quantized.items():
        spec = (value.spec.describe() if isinstance(value, QuantizedTensor)
                else {"dtype": str(value.dtype)})
        if sources and name in sources:
            source = sources[name]
            if source.value is value:
                spec |= source.describe()
            else:  # the recipe's own spec: float32 holds the file exactly, a new grid not
                spec |= {"source": source.source,
                         "exact": getattr(value, "dtype", None) == np.float32}
        specs[name] = spec
    return specs


def to_params(quantized: dict[str, Quantized]) -> Params:
    """The quantized parameter tree: each QuantizedTensor, float16 / float32 array at its
    parameter's place. `dequantize_params` makes the float tree the model runs (inside the
    trace, when traced)."""
    tree: Params = {}
    for name, value in quantized.items():
        set_path(tree, parse_name(name), value)
    return tree


def activation_quant(recipe: Recipe) -> str | None:
    """How the model rounds activations under `recipe` (ModelConfig.activation_quant): None
    for weight-only recipes, "int8-dynamic" when its quantized specs ask for dynamic int8
    activations, which then apply to every projection and the LM head; a clear error for a
    recipe that asks for them on some quantized matrices only."""
    specs = [spec for _, spec in recipe.rules] + [recipe.default]
    modes = {spec.activations for spec in specs if isinstance(spec, QuantSpec)}
    if len(modes) > 1:
        raise GemmaforgeError(f"recipe {recipe.name} quantizes activations for some matrices "
                              "only; dynamic int8 activations apply to every projection and the "
                              "LM head: give every quantized spec activations = "
                              "\"int8-dynamic\", or none")
    return modes.pop() if modes else None


def model_config(config: ModelConfig, recipe: Recipe | str) -> ModelConfig:
    """The config the quantized model runs under: `config` with the recipe's activation
    rounding (`activation_quant`)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    return dataclasses.replace(config, activation_quant=activation_quant(recipe))


def quantize_params(params: Params, recipe: Recipe | str, *, config=None, tokenizer=None,
                    checkpoint=None) -> tuple[Params, dict[str, Quantized]]:
    """(the quantized parameter tree, the per-tensor quantized values) of float32 `params`;
    a calibrated recipe needs the model's `config` and `tokenizer` too, one that keeps the
    checkpoint's grids the `checkpoint` path and `config`. The tree runs under
    `model_config(config, recipe)`."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    sources = read_sources(recipe, checkpoint, config)
    hessians = None
    if recipe.calibrated:
        if config is None or tokenizer is None:
            raise GemmaforgeError(f"recipe {recipe.name} is calibrated: pass the model's config "
                                  "and tokenizer")
        hessians = calibrate(recipe, config, params, tokenizer)
    quantized = apply(((path_name(path), np.asarray(leaf)) for path, leaf in flatten(params)),
                      recipe, hessians, sources)
    return to_params(quantized), quantized
