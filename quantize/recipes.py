"""Recipes: which spec each parameter gets, as an ordered list of rules (a predicate over the
parameter's dotted name and shape, and a spec); the first rule that matches wins. Vectors (norm
scales) always stay float32. The tied embedding is one parameter, quantized once, and serves both
the lookup and the LM head.

Named recipes: f32, fp16, int8, int8-dyn, int4, int4-b128, int4-cal (int4's grids rounded by
GPTQ on a calibration sample instead of to nearest), and source (an already-quantized GGUF keeps
each tensor's own grid, `quantize.source`). A user recipe is a TOML or JSON file:

    name = "my-int4"
    method = "gptq"                                # optional: "rtn" (round to nearest, the
                                                   # default) or "gptq" (calibrated)
    default = {bits = 4, block = 64}               # or "f32" / "fp16"
    [[rules]]
    match = "embedder.embedding"                   # a regular expression over dotted names
    spec = {bits = 8}
    [[rules]]
    match = 'layers\\.(0|25)\\.'
    spec = "f32"                                   # or "source": the checkpoint's own grid
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import EMBEDDING
from quantize.spec import FLOAT16, FLOAT32, FloatSpec, QuantSpec


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Keep the checkpoint's own grid for the tensor (a GGUF's blocks, `quantize.source`)."""

    def describe(self) -> dict:
        return {"source": True}


SOURCE = SourceSpec()
Spec = QuantSpec | FloatSpec | SourceSpec
Predicate = Callable[[str, tuple[int, ...]], bool]
METHODS = ("rtn", "gptq")  # round to nearest; GPTQ on the calibration sample (`quantize.gptq`)

@dataclasses.dataclass(frozen=True)
class Recipe:
    """`method`: "rtn" (round to nearest) or "gptq" (calibrated, `quantize.gptq`)."""

    name: str
    rules: tuple[tuple[Predicate, Spec], ...]
    default: Spec
    method: str = "rtn"

    @property
    def calibrated(self) -> bool:
        """Whether the recipe rounds by GPTQ on calibration inputs (the model must run first,
        with its weights in memory)."""
        return self.method == "gptq"

    @property
    def uses_source(self) -> bool:
        """Whether any tensor keeps the checkpoint's own grid (needs a quantized checkpoint)."""
        return self.default == SOURCE or any(spec == SOURCE for _, spec in self.rules)

    def spec_for(self, name: str, shape: tuple[int, ...]) -> Spec:
        if len(shape) < 2:
            return FLOAT32
        for predicate, spec in self.rules:
            if predicate(name, shape):
                return spec
        return self.default


def _is_embedding(name: str, shape: tuple[int, ...]) -> bool:
    return name == EMBEDDING


INT8 = QuantSpec(8)
RECIPES = {
    "f32": Recipe("f32", (), FLOAT32),
    "fp16": Recipe("fp16", (), FLOAT16),
    "int8": Recipe("int8", (), INT8),
    "int8-dyn": Recipe("int8-dyn", (), QuantSpec(8, activations="int8-dynamic")),
    "int4": Recipe("int4", ((_is_embedding, INT8),), QuantSpec(4, block=32)),
    "int4-b128": Recipe("int4-b128", ((_is_embedding, INT8),), QuantSpec(4, block=128)),
    # int4's grids, rounded by GPTQ on a committed calibration sample (quantize/calibration.py)
    "int4-cal": Recipe("int4-cal", ((_is_embedding, INT8),), QuantSpec(4, block=32), "gptq"),
    # every tensor of a quantized GGUF on its own grid, carried over exactly
    "source": Recipe("source", (), SOURCE),
}


def _spec(value, where: str) -> Spec:
    if value in ("f32", "float32"):
        return FLOAT32
    if value in ("fp16", "float16"):
        return FLOAT16
    if value == "source":
        return SOURCE
    if not isinstance(value, dict):
        raise GemmaforgeError(f"{where}: a spec is \"f32\", \"fp16\", \"source\" or a table "
                              f"with bits, block, symmetric, zero_point, activations; got "
                              f"{value!r}")
    keys = ("bits", "block", "symmetric", "zero_point", "activations")
    if set(value) - set(keys) or "bits" not in value:
        raise GemmaforgeError(f"{where}: a quantized spec needs bits and takes only "
                              f"{', '.join(keys)} (got {sorted(value)})")
    return QuantSpec(bits=value["bits"], block=value.get("block"),
                     symmetric=value.get("symmetric", True),
                     activations=value.get("activations"),
                     zero_point=value.get("zero_point", "integer"))


def _matcher(pattern: str, where: str) -> Predicate:
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise GemmaforgeError(f"{where}: bad regular expression {pattern!r}: {error}") from None
    return lambda name, shape: compiled.search(name) is not None


def load_recipe_file(path: Path) -> Recipe:
    """A user recipe from a .toml or .json file (see the module's docstring)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise GemmaforgeError(f"cannot read recipe file {path}: {error.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise GemmaforgeError(f"recipe file {path} is not valid "
                              f"{'JSON' if path.suffix == '.json' else 'TOML'}: {error}") from None
    unknown = set(data) - {"name", "method", "default", "rules"}
    if unknown:
        raise GemmaforgeError(f"recipe file {path}: unknown keys {sorted(unknown)}; a recipe has "
                              "name, method, default and rules")
    method = data.get("method", "rtn")
    if method not in METHODS:
        raise GemmaforgeError(f"recipe file {path}: method {method!r} is not one of "
                              f"{', '.join(METHODS)}")
    rules = []
    for index, rule in enumerate(data.get("rules", [])):
        where = f"recipe file {path}, rule {index + 1}"
        if not isinstance(rule, dict) or set(rule) != {"match", "spec"}:
            raise GemmaforgeError(f"{where}: a rule has exactly match and spec")
        rules.append((_matcher(rule["match"], where), _spec(rule["spec"], where)))
    default = _spec(data.get("default", "f32"), f"recipe file {path}, default")
    return Recipe(str(data.get("name", path.stem)), tuple(rules), default, method)


def get_recipe(name_or_path: str) -> Recipe:
    """A named recipe, or a user recipe file (a path ending in .toml or .json)."""
    if name_or_path in RECIPES:
        return RECIPES[name_or_path]
    if name_or_path.endswith((".toml", ".json")):
        return load_recipe_file(Path(name_or_path))
    raise GemmaforgeError(f"unknown recipe {name_or_path!r}; recipes: {', '.join(RECIPES)}, or "
                          "a .toml/.json recipe file")
