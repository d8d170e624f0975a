"""Quantized weights in the ONNX decoder, from the artifact's one set of integer values and
scales (weights.safetensors), in the layout each profile's ops read:

  ort       MatMulNBits (4- or 8-bit, com.microsoft) for every quantized matmul, the LM head
            included, and GatherBlockQuantized for the embedding lookup. Both read one
            initializer: unsigned values [N, K / block, block * bits / 8] (two 4-bit values a
            byte, low nibble first), scales [N, K / block], zero points 2^(bits-1) implied for
            symmetric grids. The tied table is stored once and serves both.
  standard  DequantizeLinear (opset 21+: INT4 / INT8 values, `block_size`) + MatMul, values
            [K, N] as the reference holds them; the lookup gathers int8 rows and their scales
            and multiplies (a 4-bit table is dequantized whole, then gathered).

A per-channel weight goes into MatMulNBits with its one scale repeated over blocks of a power
of two that divides K: the same numbers.

Two layouts keep MatMulNBits on onnxruntime's fast kernels (`python -m benchmarks source`):
  - Float zero points (a GGUF's offset grids, kept by the `source` recipe): MatMulNBits takes
    them, but on a kernel ~10x slower. So the weight is split as scale * q - offset, offset =
    scale * zero per block: MatMulNBits with zero points 0, minus the input's block sums times
    the offsets ([K / block, N], a small MatMul).
  - Symmetric 8-bit at accuracy level 0, which has no fast kernel: the unsigned value
    u = q + 128 is lo + 16 * hi, two 4-bit MatMulNBits sharing the scales s (zero points 0 and
    the default 8), the second times 16: s * (lo + 16 * (hi - 8)) = s * q. The lookup gathers
    both halves the same way (exactly s * q: each term and the sum are a float16-exact scale
    times a small integer). Asymmetric 8-bit grids stay one 8-bit MatMulNBits.
GatherBlockQuantized and DequantizeLinear take integer zero points only: a table, an 8-bit
weight or a "standard" weight with float zero points is stored "dq" as uint8 values and
dequantized by Cast, Sub and Mul, the reference's own arithmetic. Every layout holds the
reference's integers and scales, nothing re-rounded; (q - zero) * scale is computed as the
reference does, except the offsets above (scale * zero, one float32 rounding).

MatMulNBits runs at accuracy level 0 by default (ACCURACY_LEVEL): float32 activations times the
dequantized weights, the quantized reference's own arithmetic, validated to float32 tolerances.
onnxruntime 1.32's CPU kernels for it are slower, though (gemma3-270m int8 decodes at 14.6
tok/s with the split below; `python -m benchmarks source`): `accuracy_level=4` quantizes the
activations to int8 per block and runs its integer kernels (49 tok/s, `quantized`), a few
percent of the largest logit from the reference (validated to the activation-rounding tolerance,
runtimes.tolerances).
The same choice holds for the standard profile, whose DequantizeLinear + MatMul onnxruntime
fuses into MatMulNBits: `session_config`, recorded in the manifest and in genai_config.json,
keeps that fusion at the chosen level.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from onnx import TensorProto

from exporter.onnx_graph import MS_DOMAIN, Const, Ops, Value
from model_zoo.checkpoints.native import read_tensors
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import in_axes, is_matrix
from quantize.activations import INT8_MAX
from quantize.spec import pack4

ACCURACY_LEVELS = (0, 4)  # float32 activations (the reference's arithmetic), int8 activations
ACCURACY_LEVEL = 0


def session_config(accuracy_level: int) -> dict[str, str]:
    """onnxruntime fuses DequantizeLinear + MatMul into MatMulNBits at accuracy level 4 unless
    told otherwise: the session config entry that keeps the fusion at `accuracy_level`."""
    return {"session.qdq_matmulnbits_accuracy_level": str(accuracy_level)}
NBITS_BLOCKS = (128, 64, 32, 16)  # what MatMulNBits / GatherBlockQuantized take
ALIGN = 4096  # external tensors start on a page, so onnxruntime can map them


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight stored quantized, as one profile's ops read it.

    Attributes:
      name: the weight's dotted name.
      in_axes: how many of its leading (> 0) or trailing (< 0) axes are the K inputs.
      k, n: its input features (contracted) and outputs, as a matrix [K, N].
      bits: 4 or 8.
      block: inputs per scale in the stored layout (K itself for a per-channel "dq" weight).
      layout: "nbits" (MatMulNBits / GatherBlockQuantized) or "dq" (DequantizeLinear).
      values, scales, zeros: the stored tensors (zeros None for symmetric grids).
      high: the high 4-bit half of an 8-bit "nbits" weight split in two (read with `scales`,
        the default zero point 8, times 16); `values` and `zeros` are then the low half's.
      offsets: [K / block', N] float32 subtracted as the input's block sums times them.
      accuracy_level: MatMulNBits' (see the module docstring).
      activations: "int8-dynamic" for an int8 per-channel weight read by MatMulInteger, its
        input rounded to int8 per row in the graph (`integer_activations`); its values are
        then stored as uint8 q + 128 (layout "dq", `_as_integer`).
    """

    name: str
    in_axes: int
    k: int
    n: int
    bits: int
    block: int
    layout: str
    values: Const
    scales: Const
    zeros: Const | None
    high: Const | None = None
    offsets: Const | None = None
    accuracy_level: int = ACCURACY_LEVEL
    activations: str | None = None

    def describe(self) -> str:
        """What the manifest records: the op, the bits and the inputs one stored scale covers
        (a per-channel scale may be repeated over several MatMulNBits blocks)."""
        if self.activations is not None:
            return "MatMulInteger int8, per channel, the input rounded to int8 per row"
        op = "MatMulNBits" if self.layout == "nbits" else "DequantizeLinear"
        grid = "per channel" if self.block == self.k else f"{self.block} inputs a scale"
        split = self.high is not None
        zeros = ("" if self.zeros is None or split or self.offsets is not None
                 else ", float zero points" if self.zeros.dtype == np.float32 else ", zero points")
        how = (" as two 4-bit halves" if split else
               ", offsets by input block sums" if self.offsets is not None else "")
        return f"{op} {self.bits}-bit{how}, {grid}{zeros}"


class DataWriter:
    """model.onnx.data written tensor by tensor; each becomes a Const pointing at its bytes."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

    def add(self, name: str, data: np.ndarray, shape: tuple[int, ...], dtype: np.dtype,
            packed: int | None = None) -> Const:
        offset = -self._file.tell() % ALIGN + self._file.tell()
        self._file.seek(offset)
        self._file.write(np.ascontiguousarray(data).tobytes())
        path, shape, dtype = self.path, tuple(int(d) for d in shape), np.dtype(dtype)
        count = data.size

        def load() -> np.ndarray:
            array = np.memmap(path, data.dtype, "r", offset, (count,))
            return array if packed is not None else array.reshape(shape)

        return Const(name, shape, dtype, load, (str(path), offset), packed)

    def close(self) -> None:
        self._file.close()


def _nbits_block(k: int, block: int | None) -> int | None:
    if block is not None:
        return block
    return next((b for b in NBITS_BLOCKS if k % b == 0), None)


def _as_nbits(writer: DataWriter, name: str, values, scales, zeros, bits: int,
              block: int, split: bool = False) -> QuantizedWeight:
    """[N, K / block, block * bits / 8] unsigned values, [N, K / block] scales (and zeros);
    float zero points become offsets, and with `split` a symmetric 8-bit weight two 4-bit
    halves (see the module docstring)."""
    k, n = values.shape
    groups = k // block
    float_zeros = zeros is not None and np.asarray(zeros).dtype == np.float32
    shift = 2 ** (bits - 1) if zeros is None else 0
    unsigned = (np.asarray(values).T.astype(np.int16) + shift).astype(np.uint8)  # [N, K]
    repeat = groups // scales.shape[0]  # > 1 for a per-channel scale spread over blocks
    scales_t = np.repeat(np.asarray(scales).T, repeat, axis=1)  # [N, K / block]

    def add_scales(suffix: str, array) -> Const:
        return writer.add(f"{name}.{suffix}", np.asarray(array, np.float32), (n, groups),
                          np.float32)

    def add_zeros(suffix: str, zeros_t, packed: bool = bits == 4) -> Const:
        data = pack4(zeros_t) if packed else zeros_t
        return writer.add(f"{name}.{suffix}", data, data.shape, np.uint8)

    offsets = None
    if split and bits == 8 and zeros is None:
        # u = lo + 16 * hi; s * (lo - 0) + 16 * s * (hi - 8) = s * (u - 128) = s * q
        blob = block // 2
        stored_values = writer.add(f"{name}.nbits", pack4(unsigned & 0x0F), (n, groups, blob),
                                   np.uint8)
        stored_scales = add_scales("nbits_scales", scales_t)
        stored_zeros = add_zeros("nbits_zeros", np.zeros((n, groups), np.uint8), True)
        # The high half shares the scales and takes the default zero point 8; its product
        # is multiplied by 16 (exact in float32).
        high = writer.add(f"{name}.nbits_high", pack4(unsigned >> 4), (n, groups, blob),
                          np.uint8)
        return QuantizedWeight(name, in_axes(name), k, n, bits, block, "nbits", stored_values,
                               stored_scales, stored_zeros, high=high)
    blob = block * bits // 8
    data = pack4(unsigned) if bits == 4 else unsigned
    stored_values = writer.add(f"{name}.nbits", data, (n, groups, blob), np.uint8)
    stored_scales = add_scales("nbits_scales", scales_t)
    stored_zeros = None
    if float_zeros:  # s * (q - z) = s * q - s * z: zero points 0, and the offsets s * z
        stored_zeros = add_zeros("nbits_zeros", np.zeros((n, groups), np.uint8))
        offsets = writer.add(f"{name}.nbits_offsets",
                             (np.asarray(scales, np.float32) * np.asarray(zeros, np.float32)),
                             scales.shape, np.float32)
    elif zeros is not None:
        stored_zeros = add_zeros("nbits_zeros",
                                 np.repeat(np.asarray(zeros).T, repeat, axis=1).astype(np.uint8))
    return QuantizedWeight(name, in_axes(name), k, n, bits, block, "nbits", stored_values,
                           stored_scales, stored_zeros, offsets=offsets)


def _as_dq(writer: DataWriter, name: str, values, scales, zeros, bits: int,
           block: int | None) -> QuantizedWeight:
    """Values [K, N] (INT4 / UINT4 packed, or int8 / uint8; uint8 under float zero points),
    scales [K / block, N] or [N]."""
    k, n = values.shape
    symmetric = zeros is None
    float_zeros = not symmetric and np.asarray(zeros).dtype == np.float32
    dtype = np.dtype(np.int8 if symmetric else np.uint8)
    packed = None
    if bits == 4 and not float_zeros:
        packed = TensorProto.INT4 if symmetric else TensorProto.UINT4
    scale_shape = (k // block, n) if block else (n,)

    def stored(suffix: str, array, shape) -> Const:
        array = np.asarray(array).astype(dtype)
        data = pack4(array.reshape(-1)) if packed else array
        return writer.add(f"{name}.{suffix}", data, shape, dtype, packed)

    stored_values = stored("values", values, (k, n))
    stored_scales = writer.add(f"{name}.scales", np.asarray(scales, np.float32), scale_shape,
                               np.float32)
    stored_zeros = None
    if float_zeros:
        stored_zeros = writer.add(f"{name}.zeros", np.asarray(zeros, np.float32), scale_shape,
                                  np.float32)
    elif not symmetric:
        stored_zeros = stored("zeros", zeros, scale_shape)
    return QuantizedWeight(name, in_axes(name), k, n, bits, block or k, "dq", stored_values,
                           stored_scales, stored_zeros)


# MatMulInteger's operands as uint8 q + 128 with zero points 128: onnxruntime's uint8 x uint8
# kernel is exact and fast (the LM head of gemma3-270m: 11 ms a token on 2 threads), where int8
# x int8 takes a reference loop (1.6 s) and uint8 x int8 saturates 16-bit pair sums.
INTEGER_OFFSET = 128


def _as_integer(writer: DataWriter, name: str, values, scales) -> QuantizedWeight:
    """Values [K, N] as uint8 q + 128, scales [N] (one per channel)."""
    k, n = values.shape
    unsigned = (np.asarray(values).astype(np.int16) + INTEGER_OFFSET).astype(np.uint8)
    stored_values = writer.add(f"{name}.values", unsigned, (k, n), np.uint8)
    stored_scales = writer.add(f"{name}.scales", np.asarray(scales, np.float32).reshape(n),
                               (n,), np.float32)
    return QuantizedWeight(name, in_axes(name), k, n, 8, k, "dq", stored_values, stored_scales,
                           None, activations="int8-dynamic")


def _integer_spec(spec: dict) -> bool:
    return (spec.get("activations") == "int8-dynamic" and spec.get("bits") == 8
            and spec.get("block") is None and spec.get("symmetric", True))


def integer_activations(tensors: dict[str, dict]) -> bool:
    """Whether every matrix of the recipe takes dynamic int8 activations on an int8 per-channel
    symmetric weight: then each quantized matmul is MatMulInteger on its input rounded to
    int8 per row in the graph (the reference's ModelConfig.activation_quant, `_integer_matmul`),
    and the decoder is traced with float activations. Otherwise the trace carries the
    rounding and the weights lower as for weight-only recipes."""
    matrices = [spec for name, spec in tensors.items() if is_matrix(name)]
    return bool(matrices) and all(_integer_spec(spec) for spec in matrices)


def write_weights(weights_file: Path, data_file: Path, config: ModelConfig,
                  tensors: dict[str, dict], profile: str,
                  accuracy_level: int = ACCURACY_LEVEL) -> dict[str, Const | QuantizedWeight]:
    """Writes every weight of `weights_file` (the quantized artifact's tensors) into
    `data_file` in the layout `profile` reads, and returns each weight's stored value.
    `tensors` is the manifest's per-tensor specs."""
    from model_zoo.transformer import weight_specs

    stored = read_tensors(weights_file, mapped=True)
    integer = integer_activations(tensors)
    writer = DataWriter(data_file)
    weights: dict[str, Const | QuantizedWeight] = {}
    try:
        for name, spec in weight_specs(config).items():
            described = tensors.get(name, {})
            if "bits" not in described:
                if name not in stored:
                    raise GemmaforgeError(f"{weights_file} has no tensor {name}")
                array = stored[name]
                weights[name] = writer.add(name, array, array.shape, array.dtype)
                continue
            values, scales = stored[f"{name}.values"], stored[f"{name}.scales"]
            zeros = stored.get(f"{name}.zeros")
            bits, block = described["bits"], described["block"]
            if values.shape[0] * values.shape[1] != int(np.prod(spec.shape)):
                raise GemmaforgeError(f"{weights_file}: {name}.values has shape "
                                      f"{list(values.shape)}, not a matrix of "
                                      f"{list(spec.shape)}")
            nbits_block = _nbits_block(values.shape[0], block)
            # Float zero points run as offsets on 4-bit MatMulNBits only; GatherBlockQuantized
            # takes integer zero points
            float_zeros = described.get("zero_point") == "float"
            if float_zeros and (bits == 8 or in_axes(name) < 0):
                nbits_block = None
            if integer:
                weight = _as_integer(writer, name, values, scales)
            elif profile == "ort" and nbits_block is not None:
                weight = _as_nbits(writer, name, values, scales, zeros, bits, nbits_block,
                                   split=accuracy_level == 0)
            else:
                weight = _as_dq(writer, name, values, scales, zeros, bits, block)
            weights[name] = dataclasses.replace(weight, accuracy_level=accuracy_level)
    finally:
        writer.close()
    return weights


def _float_zeros(weight: QuantizedWeight) -> bool:
    return weight.zeros is not None and weight.zeros.dtype == np.float32


def _dequantized(ops: Ops, weight: QuantizedWeight) -> str:
    """float32 [K, N] of a "dq" weight."""
    if _float_zeros(weight):  # (q - zero) * scale, each block's pair broadcast over it
        values = ops.op("Cast", [weight.values], to=TensorProto.FLOAT)
        if weight.block == weight.k:
            return ops.op("Mul", [ops.op("Sub", [values, weight.zeros]), weight.scales])
        blocks = ops.op("Reshape", [values, ops.ints([weight.k // weight.block, weight.block,
                                                      weight.n])])
        centred = ops.op("Sub", [blocks, ops.op("Unsqueeze", [weight.zeros, ops.ints([1])])])
        scaled = ops.op("Mul", [centred, ops.op("Unsqueeze", [weight.scales, ops.ints([1])])])
        return ops.op("Reshape", [scaled, ops.ints([weight.k, weight.n])])
    if weight.block == weight.k:
        return ops.op("DequantizeLinear", [weight.values, weight.scales, weight.zeros],
                      axis=1)
    return ops.op("DequantizeLinear", [weight.values, weight.scales, weight.zeros], axis=0,
                  block_size=weight.block)


def _integer_matmul(ops: Ops, lhs: Value, weight: QuantizedWeight) -> str:
    """lhs [..., K] rounded to int8 per row as the reference rounds it
    (`quantize.activations.round_activations`: s = max(max |x| / 127, tiny), q = round(x / s)),
    times the int8 weight [K, N] in int32 (MatMulInteger, both offset by INTEGER_OFFSET),
    then times s and the weight's per-channel scales."""
    largest = ops.op("ReduceMax", [ops.op("Abs", [lhs]), ops.ints([-1])], keepdims=1)
    scale = ops.op("Max", [ops.op("Div", [largest, ops.const(INT8_MAX, np.float32)]),
                           ops.const(np.finfo(np.float32).tiny, np.float32)])
    rounded = ops.op("Clip", [ops.op("Round", [ops.op("Div", [lhs, scale])]),
                              ops.const(-INT8_MAX, np.float32), ops.const(INT8_MAX, np.float32)])
    offset = ops.const(INTEGER_OFFSET, np.uint8)
    unsigned = ops.op("Cast", [ops.op("Add", [rounded, ops.const(INTEGER_OFFSET, np.float32)])],
                      to=TensorProto.UINT8)
    product = ops.op("MatMulInteger", [unsigned, weight.values, offset, offset])
    return ops.op("Mul", [ops.op("Mul", [ops.op("Cast", [product], to=TensorProto.FLOAT),
                                         scale]), weight.scales])


def matmul(ops: Ops, lhs: Value, weight: QuantizedWeight) -> str:
    """lhs [..., K] times the weight [K, N] -> [..., N]."""
    if weight.activations is not None:
        return _integer_matmul(ops, lhs, weight)
    if weight.layout == "dq":
        return ops.op("MatMul", [lhs, _dequantized(ops, weight)])
    groups = weight.k // weight.block
    bits = 4 if weight.high is not None else weight.bits

    def nbits(values: Const, scales: Const, zeros: Const | None) -> str:
        if zeros is not None:
            zeros = zeros.reshaped((zeros.nbytes,))
        return ops.op("MatMulNBits", [lhs, values, scales.reshaped((weight.n * groups,)),
                                      zeros], domain=MS_DOMAIN, K=weight.k, N=weight.n,
                      bits=bits, block_size=weight.block, accuracy_level=weight.accuracy_level)

    out = nbits(weight.values, weight.scales, weight.zeros)
    if weight.high is not None:
        high = ops.op("Mul", [nbits(weight.high, weight.scales, None),
                              ops.const(16.0, np.float32)])
        out = ops.op("Add", [out, high])
    if weight.offsets is not None:  # minus the input's block sums times the offsets
        offset_groups = weight.offsets.shape[0]
        shape = ops.op("Concat", [ops.op("Shape", [lhs], end=-1),
                                  ops.ints([offset_groups, weight.k // offset_groups])], axis=0)
        sums = ops.op("ReduceSum", [ops.op("Reshape", [lhs, shape]), ops.ints([-1])],
                      keepdims=0)
        out = ops.op("Sub", [out, ops.op("MatMul", [sums, weight.offsets])])
    return out


def lookup(ops: Ops, table: QuantizedWeight, ids: Value) -> str:
    """Rows `ids` of the table [N, K] (stored as the LM head reads it: K = the hidden size
    contracted, N = the vocabulary) -> float32 [*ids, K]."""
    if table.layout == "nbits":
        bits = 4 if table.high is not None else table.bits

        def gathered(values: Const, scales: Const, zeros: Const | None) -> str:
            data = values.reshaped((table.n, table.k * bits // 8))
            return ops.op("GatherBlockQuantized", [data, ids, scales, zeros], domain=MS_DOMAIN,
                          bits=bits, block_size=table.block, gather_axis=0, quantize_axis=1)

        rows = gathered(table.values, table.scales, table.zeros)
        if table.high is not None:
            high = ops.op("Mul", [gathered(table.high, table.scales, None),
                                  ops.const(16.0, np.float32)])
            rows = ops.op("Add", [rows, high])
        return rows
    flat_ids = ops.op("Reshape", [ids, ops.ints([-1])])
    rows_shape = ops.op("Concat", [ops.op("Shape", [ids]), ops.ints([table.k])], axis=0)
    if table.values.packed is not None:
        # Gather does not take INT4: the whole table dequantized, then its columns gathered.
        columns = ops.op("Gather", [_dequantized(ops, table), flat_ids], axis=1)
    else:
        per_channel = table.block == table.k
        axis = 0 if per_channel else 1  # scales [N] or [K / block, N]

        def gathered(stored: Const, along: int) -> str:
            return ops.op("Cast", [ops.op("Gather", [stored, flat_ids], axis=along)],
                          to=TensorProto.FLOAT)

        columns = gathered(table.values, 1)  # [K, M]
        if table.activations is not None:  # stored as q + 128 for MatMulInteger
            columns = ops.op("Sub", [columns, ops.const(INTEGER_OFFSET, np.float32)])
        scales = ops.op("Gather", [table.scales, flat_ids], axis=axis)
        zeros = None if table.zeros is None else gathered(table.zeros, axis)
        if per_channel:  # one scale (and zero) per row of the table: [M]
            if zeros is not None:
                columns = ops.op("Sub", [columns, zeros])
            columns = ops.op("Mul", [columns, scales])
        else:
            # [K, M] -> [K / block, block, M], each block times its scale, -> [K, M]
            blocks = ops.op("Reshape", [columns, ops.ints([table.k // table.block,
                                                           table.block, -1])])
            if zeros is not None:
                blocks = ops.op("Sub", [blocks, ops.op("Unsqueeze", [zeros, ops.ints([1])])])
            scaled = ops.op("Mul", [blocks, ops.op("Unsqueeze", [scales, ops.ints([1])])])
            columns = ops.op("Reshape", [scaled, ops.ints([table.k, -1])])
    rows = ops.op("Transpose", [columns], perm=[1, 0])  # [M, K]
    return ops.op("Reshape", [rows, rows_shape])
