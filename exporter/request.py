"""What an export is asked to do: one frozen, validated `ExportRequest`, built once from the
CLI's flags or a Python caller's keywords, and read by every step of the pipeline.

Every option is checked here and nowhere else; the checks that need the model (a cache longer
than its context, a recipe whose grids LiteRT cannot hold) run when the pipeline plans it.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from jax.sharding import Mesh

from exporter.manifest import Quantization, TokenizerEntry
from exporter.onnx_fused import PROFILES
from exporter.onnx_quant import ACCURACY_LEVELS
from exporter.trace import TraceOptions
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from quantize import Recipe, get_recipe

PLATFORMS = ("cpu", "cuda", "tpu")  # StableHLO's, lowered into one module


class Format(enum.StrEnum):
    """An artifact format; its members compare equal to their names ("onnx")."""

    STABLEHLO = "stablehlo"
    ONNX = "onnx"
    LITERT = "litert"


FORMATS = tuple(Format)


class OnnxProfile(enum.StrEnum):
    """The ONNX ops: ONNX Runtime's fused contrib ops, or standard opset-23 ops only (the ONNX
    writer's PROFILES)."""

    ORT = "ort"
    STANDARD = "standard"


def parse_formats(text: str) -> tuple[Format, ...]:
    """`--to`'s comma-separated formats, in the order given."""
    return _formats(tuple(f.strip().lower() for f in text.split(",") if f.strip()))


def parse_platforms(text: str) -> tuple[str, ...]:
    """`--platforms`' comma-separated StableHLO platforms."""
    return tuple(p.strip().lower() for p in text.split(",") if p.strip())


def parse_buckets(text: str | None) -> tuple[int, ...] | None:
    """`--buckets`' comma-separated prefill lengths (None: the defaults)."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise GemmaforgeError(f"--buckets takes comma-separated token counts, e.g. 32,128,512; "
                              f"got {text!r}") from None


def _formats(names: tuple[str, ...]) -> tuple[Format, ...]:
    for name in names:
        if name not in FORMATS:
            raise GemmaforgeError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    if not names:
        raise GemmaforgeError("--to needs at least one format")
    return tuple(dict.fromkeys(Format(name) for name in names))


def _profile(name: str) -> OnnxProfile:
    if name not in PROFILES:
        raise GemmaforgeError(f"unknown --onnx-profile {name!r}; profiles: "
                              f"{', '.join(PROFILES)}")
    return OnnxProfile(name)


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """An export's options, checked together when made.

    Attributes:
      out: the artifact directory to write (atomically).
      formats: the formats to write, in the order asked (the manifest lists them in FORMATS
        order).
      max_len, buckets: the cache length and prefill lengths (None: the model's defaults).
      platforms: the StableHLO platforms, lowered into one module.
      mesh: export the weights sharded on this mesh (float32 only).
      fused: fused ops as composites; symbolic_prefill: also a symbolic-length prefill.
      task: add a MediaPipe .task bundle to the LiteRT files.
      onnx_profile: the ONNX ops (`OnnxProfile`).
      recipe: quantize the weights once with it (None: float32).
      onnx_accuracy_level: MatMulNBits' for a quantized ONNX model (exporter.onnx_quant).
      force: replace `out` if it is an artifact directory.
    """

    out: Path
    formats: tuple[Format, ...] = FORMATS
    max_len: int | None = None
    buckets: tuple[int, ...] | None = None
    platforms: tuple[str, ...] = ("cpu",)
    mesh: Mesh | None = None
    fused: bool = True
    symbolic_prefill: bool = True
    task: bool = False
    onnx_profile: OnnxProfile = OnnxProfile.ORT
    recipe: Recipe | None = None
    onnx_accuracy_level: int = 0
    force: bool = False

    def __post_init__(self):
        if not self.platforms or any(p not in PLATFORMS for p in self.platforms):
            raise GemmaforgeError(f"--platforms takes a comma-separated subset of "
                                  f"{', '.join(PLATFORMS)}; got {','.join(self.platforms)!r}")
        if self.task and Format.LITERT not in self.formats:
            raise GemmaforgeError("--task bundles the LiteRT model: add litert to --to")
        if self.onnx_accuracy_level not in ACCURACY_LEVELS:
            raise GemmaforgeError(f"--onnx-accuracy-level must be 0 (float32 activations) or 4 "
                                  f"(int8 activations), got {self.onnx_accuracy_level}")
        if self.onnx_accuracy_level and (self.recipe is None or Format.ONNX not in self.formats):
            raise GemmaforgeError("--onnx-accuracy-level applies to quantized ONNX models: add "
                                  "--quant and onnx to --to, or drop it")
        if self.recipe is not None and self.mesh is not None:
            raise GemmaforgeError("--quant exports unsharded weights: drop --mesh")

    @classmethod
    def create(cls, out: str | os.PathLike, *, formats: tuple[str, ...] = FORMATS,
               onnx_profile: str = "ort", quant: str | None = None,
               buckets: tuple[int, ...] | None = None, platforms: tuple[str, ...] = ("cpu",),
               **options) -> ExportRequest:
        """The request from names as a user gives them: formats and profile by name, `quant` a
        recipe name or a .toml/.json recipe file; the other keywords are the fields'."""
        return cls(
            Path(out), formats=_formats(tuple(formats)),
            onnx_profile=_profile(onnx_profile),
            recipe=get_recipe(quant) if quant is not None else None,
            buckets=tuple(buckets) if buckets is not None else None,
            platforms=tuple(platforms), **options)

    @property
    def calibrated(self) -> bool:
        """Whether the recipe runs the model before rounding (its weights must be in memory)."""
        return self.recipe is not None and self.recipe.calibrated


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """The model as every writer traces it.

    Attributes:
      config: the architecture, float activations (what LiteRT converts: its dynamic-range
        kernels round activations themselves).
      traced: the config the programs run under: `config` with the recipe's activation
        rounding (quantize.model_config).
      options: the trace options (cache length, buckets, fused ops, symbolic prefill).
      tokenizer: the bundled tokenizer's entry (its file is the artifact's TOKENIZER).
    """

    config: ModelConfig
    traced: ModelConfig
    options: TraceOptions
    tokenizer: TokenizerEntry


@dataclasses.dataclass(frozen=True)
class StoredWeights:
    """The artifact's weights file as the writers read it.

    Attributes:
      file: the weights.safetensors written.
      specs: the stored tensors' shapes and dtypes when they are not the float32 parameters
        (a quantized tree, which the programs dequantize); None for float32.
      quantized: the quantized value of each weight (quantize.apply's), which LiteRT lays out
        for its own kernels; None for float32.
      quantization: the recipe and each tensor's grid, as the manifest records them.
    """

    file: Path
    specs: Mapping[str, jax.ShapeDtypeStruct] | None = None
    quantized: Mapping[str, Any] | None = None
    quantization: Quantization | None = None
