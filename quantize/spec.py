"""How one weight is quantized (QuantSpec): the grids its integer values and scales
(`quantize.tensor`) lie on.

A weight is seen as a matrix [in, out]: `in` the axes a matmul contracts (the input features),
`out` the rest (the output channels). Scales run along `out`, one per channel (`block=None`) or
one per `block` consecutive inputs of each channel. Symmetric grids store q in [-2^(b-1)+1,
2^(b-1)-1] with w = scale * q; asymmetric grids store q in [0, 2^b - 1] with
w = scale * (q - zero), zero an integer of the same range, or (`zero_point="float"`, the form
a GGUF's offset grids take, see `quantize.source`) any float32. Values travel unpacked in int8
(uint8 for asymmetric 8-bit); each format packs them as it stores them. `float16` keeps the
weight in half precision and computes in float32.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from model_zoo.config import ACTIVATION_QUANT
from model_zoo.errors import GemmaforgeError

BITS = (4, 8)
BLOCKS = (16, 32, 64, 128)
ZERO_POINTS = ("integer", "float")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """bits 4 or 8; block None (per channel) or 16/32/64/128 inputs; symmetric or asymmetric,
    with integer or float zero points; activations None (weight-only) or "int8-dynamic" (int8
    activations, scaled per token)."""

    bits: int
    block: int | None = None
    symmetric: bool = True
    activations: str | None = None
    zero_point: str = "integer"

    def __post_init__(self):
        if self.bits not in BITS:
            raise GemmaforgeError(f"quantization bits must be one of {list(BITS)}, got "
                                  f"{self.bits}")
        if self.block is not None and self.block not in BLOCKS:
            raise GemmaforgeError(f"quantization block must be one of {list(BLOCKS)} or none "
                                  f"(per channel), got {self.block}")
        if self.activations not in ACTIVATION_QUANT:
            raise GemmaforgeError(f"activations must be none or int8-dynamic, got "
                                  f"{self.activations!r}")
        if self.zero_point not in ZERO_POINTS or (self.symmetric and self.zero_point != "integer"):
            raise GemmaforgeError(f"zero_point is integer, or float for an asymmetric grid; got "
                                  f"{self.zero_point!r}{' on a symmetric one' * self.symmetric}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) + 1 if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2 ** self.bits - 1

    def describe(self) -> dict:
        described = {"bits": self.bits, "block": self.block, "symmetric": self.symmetric,
                     "activations": self.activations}
        if self.zero_point == "float":
            described["zero_point"] = "float"
        return described


@dataclasses.dataclass(frozen=True)
class FloatSpec:
    """A weight kept in floating point: "float32", or "float16" storage (float32 compute)."""

    dtype: str = "float32"

    def __post_init__(self):
        if self.dtype not in ("float32", "float16"):
            raise GemmaforgeError(f"float weights are float32 or float16, got {self.dtype!r}")

    def describe(self) -> dict:
        return {"dtype": self.dtype}


FLOAT32 = FloatSpec("float32")
FLOAT16 = FloatSpec("float16")


def to_matrix(weight: np.ndarray, in_axes: int) -> np.ndarray:
    """The weight as [in, out]: its first `in_axes` axes (or last `-in_axes`) are `in`."""
    if in_axes > 0:
        return weight.reshape(math.prod(weight.shape[:in_axes]), -1)
    split = weight.ndim + in_axes
    return weight.reshape(math.prod(weight.shape[:split]), -1).T


def block_of(name: str, spec: QuantSpec, inputs: int) -> int:
    """The inputs one scale covers (all of them per channel); a clear error when the spec's
    block does not divide the weight's input features."""
    block = spec.block or inputs
    if inputs % block:
        raise GemmaforgeError(f"block {spec.block} does not divide {name}'s {inputs} input "
                              f"features; use a block that divides {inputs} or per-channel")
    return block


def pack4(values: np.ndarray) -> np.ndarray:
    """Two 4-bit values (0..15 as stored, or signed -8..7, any integer dtype) a byte along the
    last axis, the first in the low nibble, as ONNX and LiteRT both store INT4:
    [..., M] -> uint8 [..., ceil(M / 2)]."""
    unsigned = np.asarray(values).astype(np.uint8) & 0x0F
    if unsigned.shape[-1] % 2:
        unsigned = np.concatenate([unsigned, np.zeros_like(unsigned[..., :1])], axis=-1)
    return unsigned[..., 0::2] | (unsigned[..., 1::2] << 4)
