"""Recipe `source`: an already-quantized checkpoint keeps its own grids.

A GGUF stores most matrices as integers and block scales. Dequantizing them to float32 and
rounding again onto another grid compounds two errors; carrying the file's integers and scales
over as they are loses nothing. Each ggml block type is decoded here, from its documented byte
layout, into our `QuantizedTensor` ([in, out] values, [in / block, out] scales), whose
dequantization (q - zero) * scale is the file's own:

  Q8_0   d (f16), 32 x int8                 -> int8 block 32, symmetric       (exact)
  Q5_0   d (f16), 32 high bits, 32 nibbles  -> int8 block 32, symmetric       (exact)
  Q4_0   d (f16), 32 nibbles                -> 4-bit block 32, symmetric      (exact)
  Q4_1   d, m (f16), 32 nibbles: d*q + m    -> 4-bit block 32, float zeros    (exact up to the
  Q4_K   super-block of 256: d, dmin (f16),    4-bit block 32, float zeros     zero's rounding:
         6-bit scale and min per 32: d*sc*q - dmin*m                           see below)
  Q6_K   super-block of 256: 6-bit q, int8 scale per 16, d (f16): d*sc*(q-32)
                                            -> int8 block 16, symmetric       (exact)
  F32, F16, BF16                            -> float32 / float16 / float32    (exact)

Any other type (Q2_K, Q3_K, Q5_K, the IQ types...) is held as its float32 dequantization:
exact, and marked so, never re-rounded. Scales are float32 products of a float16 and a small
integer, so they hold the file's scales exactly. A grid with an offset (w = s*q - m) is stored
with a float zero point z = m / s (the reference computes s*(q - z); ONNX runs it as s*q minus
the offsets s*z, `exporter.onnx_quant`), which differs from s*q - m only by float32 rounding of
that division (a few ulp of the weight). A block with
s = 0 holds -m everywhere, which q = 0, scale m, zero 1 hold exactly. A file whose scales are not
finite falls back to float32.
"""

from __future__ import annotations

import dataclasses
import os

import gguf
import numpy as np

from model_zoo.checkpoints.gguf_reader import GGUFCheckpoint
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import in_axes
from model_zoo.transformer import abstract_params
from model_zoo.tree import get_path, parse_name
from model_zoo.untrusted import reading
from quantize.spec import QuantSpec
from quantize.tensor import QuantizedTensor

T = gguf.GGMLQuantizationType


@dataclasses.dataclass(frozen=True)
class SourceTensor:
    """One checkpoint tensor as the `source` recipe keeps it.

    Attributes:
      value: a QuantizedTensor (the file's grid), or a float32 / float16 array.
      source: the ggml type in the file ("Q4_K", "F32"...).
      exact: whether `value` dequantizes to the file's own dequantization (to float32 rounding
        of the scale arithmetic).
      note: why the stored representation is what it is, when it is not the grid itself.
    """

    value: QuantizedTensor | np.ndarray
    source: str
    exact: bool = True
    note: str = ""

    def describe(self) -> dict:
        return {"source": self.source, "exact": self.exact} | ({"note": self.note}
                                                              if self.note else {})


def _f16(raw: np.ndarray) -> np.ndarray:
    """Little-endian float16 from a [..., 2] byte column, as float32."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _nibbles(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return raw & 0x0F, raw >> 4


def _q8_0(blocks: np.ndarray):
    scales = _f16(blocks[:, 0:2])
    values = np.ascontiguousarray(blocks[:, 2:34]).view(np.int8)
    return values, scales[:, None], None


def _q4_0(blocks: np.ndarray):
    scales = _f16(blocks[:, 0:2])
    low, high = _nibbles(blocks[:, 2:18])  # element j in the low nibble, j + 16 in the high
    values = np.concatenate([low, high], axis=1).astype(np.int8) - 8
    return values, scales[:, None], None


def _offset_grid(values: np.ndarray, scales: np.ndarray, offsets: np.ndarray):
    """w = scale * q - offset (per row of `values`) as (q - zero) * scale, zero = offset /
    scale. A row whose scale is 0 holds -offset in every place: it becomes q = 0, scale =
    offset, zero = 1 (or scale 1, zero 0 for a zero offset), the same weights exactly."""
    flat = scales == 0
    values = np.where(flat[:, None], 0, values).astype(np.uint8)
    scales = np.where(flat, np.where(offsets == 0, 1.0, offsets), scales).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        zeros = np.where(flat, np.where(offsets == 0, 0.0, 1.0), offsets / scales)
    return values, scales[:, None], zeros.astype(np.float32)[:, None]


def _q4_1(blocks: np.ndarray):
    scales, minimum = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])  # w = d * q + m
    low, high = _nibbles(blocks[:, 4:20])
    return _offset_grid(np.concatenate([low, high], axis=1), scales, -minimum)


def _q5_0(blocks: np.ndarray):
    scales = _f16(blocks[:, 0:2])
    high_bits = np.ascontiguousarray(blocks[:, 2:6]).view("<u4")  # bit j: element j's 5th bit
    fifth = (high_bits >> np.arange(32, dtype=np.uint32)) & 1
    low, high = _nibbles(blocks[:, 6:22])
    values = np.concatenate([low, high], axis=1) | (fifth.astype(np.uint8) << 4)
    return values.astype(np.int8) - 16, scales[:, None], None


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 bytes -> eight 6-bit scales and eight 6-bit mins. Bytes 0-3 hold scales 0-3
    (low 6 bits) and the top 2 bits of scales 4-7; bytes 4-7 the same for the mins; bytes 8-11
    the low 4 bits of scales 4-7 (low nibble) and of mins 4-7 (high nibble)."""
    first, second, rest = packed[:, 0:4], packed[:, 4:8], packed[:, 8:12]
    scales = np.concatenate([first & 0x3F, (rest & 0x0F) | ((first >> 6) << 4)], axis=1)
    mins = np.concatenate([second & 0x3F, (rest >> 4) | ((second >> 6) << 4)], axis=1)
    return scales, mins


def _q4_k(blocks: np.ndarray):
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k_scales(blocks[:, 4:16])
    scales = d[:, None] * sc.astype(np.float32)  # [n, 8]: one per 32 values
    offsets = dmin[:, None] * m.astype(np.float32)
    # 128 bytes in four runs of 32: run r's low nibbles are sub-block 2r, its high 2r + 1.
    low, high = _nibbles(blocks[:, 16:144].reshape(n, 4, 32))
    values = np.stack([low, high], axis=2).reshape(n * 8, 32)
    return _offset_grid(values, scales.reshape(-1), offsets.reshape(-1))


def _q6_k(blocks: np.ndarray):
    n = blocks.shape[0]
    low4, high2 = blocks[:, 0:128], blocks[:, 128:192]
    sub_scales = np.ascontiguousarray(blocks[:, 192:208]).view(np.int8).astype(np.float32)
    d = _f16(blocks[:, 208:210])
    # Two halves of 128 values. In half h, value 32 * j + l (j < 4, l < 32) takes its low four
    # bits from byte l (j even) or l + 32 (j odd) of the half's 64 low bytes, the low nibble for
    # j < 2, the high one after; and its top two bits from bits 2j, 2j+1 of the half's byte l.
    low4 = low4.reshape(n, 2, 2, 32)  # [n, half, byte run, l]
    low_nibble, high_nibble = _nibbles(low4)
    lows = np.concatenate([low_nibble, high_nibble], axis=2)  # [n, half, j, l]
    highs = (high2.reshape(n, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3
    values = (lows | (highs << 4)).astype(np.int8) - 32
    scales = d[:, None] * sub_scales  # [n, 16]: one per 16 values
    return values.reshape(n * 16, 16), scales.reshape(-1, 1), None


# ggml type -> (decoder, bits, block, symmetric); asymmetric grids have float zero points
GRIDS = {
    T.Q8_0: (_q8_0, 8, 32, True),
    T.Q5_0: (_q5_0, 8, 32, True),
    T.Q4_0: (_q4_0, 4, 32, True),
    T.Q4_1: (_q4_1, 4, 32, False),
    T.Q4_K: (_q4_k, 4, 32, False),
    T.Q6_K: (_q6_k, 8, 16, True),
}
FLOATS = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.float32}


def decode(raw: np.ndarray, qtype: T, rows: int, columns: int):
    """The file's [rows, columns] matrix (`raw`: its bytes) as (values [rows, columns],
    scales [rows, columns / block], zeros like the scales or None, QuantSpec)."""
    decoder, bits, block, symmetric = GRIDS[qtype]
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = np.asarray(raw, np.uint8).reshape(-1, block_bytes)
    values, scales, zeros = decoder(blocks)
    spec = QuantSpec(bits, block=block, symmetric=symmetric,
                     zero_point="integer" if symmetric else "float")
    groups = columns // block
    values = values.reshape(rows, columns)
    scales = scales.reshape(rows, groups).astype(np.float32)
    if zeros is not None:
        zeros = zeros.reshape(rows, groups).astype(np.float32)
    return values, scales, zeros, spec


def source_tensor(raw: np.ndarray, qtype: T, shape: tuple[int, ...], in_axes: int,
                  our_shape: tuple[int, ...], ours) -> SourceTensor:
    """One file matrix (`shape` the file's [out, in]) as ours: `our_shape`, whose first
    `in_axes` (> 0) or last (< 0) axes are the inputs; `ours(array)` converts a float array of
    the file's shape to our layout."""
    source = qtype.name

    def as_float(dtype, note: str = "") -> SourceTensor:
        dense = gguf.quants.dequantize(np.asarray(raw), qtype).reshape(shape)
        return SourceTensor(np.asarray(ours(dense), dtype), source, True, note)

    if qtype in FLOATS:
        return as_float(FLOATS[qtype])
    if qtype not in GRIDS:
        return as_float(np.float32, f"{source} has no integer grid gemmaforge stores; held as "
                                    "float32")
    rows, columns = int(np.prod(shape[:-1])), shape[-1]
    values, scales, zeros, spec = decode(raw, qtype, rows, columns)
    if not np.all(np.isfinite(scales)) or (zeros is not None and
                                           not np.all(np.isfinite(zeros))):
        return as_float(np.float32, "scales that are not finite; held as float32")
    # The file's rows are our outputs, its columns (blocked) our inputs: [in, out] is the
    # transpose (every Gemma matrix keeps the file's row order in its output axes).
    tensor = QuantizedTensor(np.ascontiguousarray(values.T), np.ascontiguousarray(scales.T),
                             None if zeros is None else np.ascontiguousarray(zeros.T), spec,
                             tuple(our_shape), in_axes)
    return SourceTensor(tensor, source, True)


def read_sources(checkpoint: str | os.PathLike | None, config, recipe_name: str):
    """name -> SourceTensor for every parameter of the GGUF `checkpoint`; a clear error for a
    float checkpoint, which has no grid to keep."""
    from quantize.recipes import RECIPES

    others = ", ".join(name for name in RECIPES if name != "source")
    if checkpoint is None or not os.fspath(checkpoint).endswith(".gguf"):
        what = ("the model has random weights" if checkpoint is None
                else f"{checkpoint} is a float checkpoint")
        raise GemmaforgeError(f"recipe {recipe_name} keeps a quantized checkpoint's own grids, "
                              f"but {what}; use one of {others}, or load a quantized GGUF")
    shapes = abstract_params(config)
    out = {}
    # A damaged file's blocks fail in the decoding: said as the reader says its own failures.
    with reading(checkpoint, "a GGUF"):
        for name, stored in GGUFCheckpoint(checkpoint).stored_tensors(config):
            if stored.raw is None:  # vectors (norm scales) stay float32
                out[name] = SourceTensor(stored.value, stored.qtype.name)
                continue
            out[name] = source_tensor(stored.raw, stored.qtype, stored.shape, in_axes(name),
                                      get_path(shapes, parse_name(name)).shape, stored.to_ours)
    return out
