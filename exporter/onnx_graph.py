"""The values and node-building helpers the jaxpr -> ONNX writer passes around.

A jaxpr variable lowers to one of:
  - a `str`: the name of an ONNX value computed at run time;
  - a `Const`: a value known at export time (a weight, a literal, anything folded from them),
    kept out of the graph until a node consumes it, so that `1 + scale` or a weight's reshape
    becomes a stored tensor instead of a run-time op. A weight's data stays where it is (a
    memory-mapped file) until the model is saved;
  - a `Pending` region: a value a fused emitter will produce later (the KV-cache update, which
    GroupQueryAttention and Attention perform themselves).

Emitters never share a builder: each equation gets its own `Ops`, which collects the nodes and
constants it makes under a name prefix unique to that equation, and hands them back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"


@dataclasses.dataclass(frozen=True, eq=False)
class Const:
    """A tensor known at export time.

    Attributes:
      name: the initializer name it will have (a weight keeps its dotted name).
      shape, dtype: of the value.
      load: returns the value; called when the model is saved (weights) or when a fold needs it.
      source: for weights, (file, byte offset) of the unchanged bytes, so the saved model can
        point at them instead of writing them again.
      packed: the ONNX element type of 4-bit values (INT4 / UINT4) stored two to a byte in
        the file `source` names; `dtype` is then the int8 / uint8 of one unpacked value.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Callable[[], np.ndarray]
    source: tuple[str, int] | None = None
    packed: int | None = None

    @staticmethod
    def of(name: str, value: Any) -> Const:
        array = np.asarray(value)
        return Const(name, tuple(array.shape), array.dtype, lambda: array)

    @property
    def nbytes(self) -> int:
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.packed is not None:
            return (count + 1) // 2
        return count * np.dtype(self.dtype).itemsize

    def reshaped(self, shape: Sequence[int]) -> Const:
        """The same bytes under another shape: a stored weight stays shared with its file.
        Under its own shape it is itself (one initializer, e.g. the tied embedding that both
        Gather and the LM head read)."""
        shape = tuple(int(d) for d in shape)
        if shape == self.shape:
            return self
        load = self.load
        return Const(f"{self.name}.{'x'.join(map(str, shape))}", shape, self.dtype,
                     lambda: np.reshape(load(), shape), self.source, self.packed)


@dataclasses.dataclass(eq=False)
class Pending:
    """A fused region's result that another composite will compute (see module docstring).

    Attributes:
      kind: the composite it comes from (the KV-cache update, or the rotary embedding that
        GroupQueryAttention may apply itself).
      inputs: the region's lowered inputs.
      index: which of the region's results this is.
      params: the region's attributes.
      transposed: the permutation applied to it since (None if none).
      origin: the untransposed result this one was made from (None for that one itself).
    """

    kind: str
    inputs: tuple
    index: int
    params: dict
    transposed: tuple[int, ...] | None = None
    origin: Pending | None = None

    @property
    def root(self) -> Pending:
        return self.origin or self


# (and exporter.onnx_quant.QuantizedWeight: a stored quantized weight, read by matmuls and
# lookups only)
Value = str | Const | Pending


@dataclasses.dataclass(frozen=True)
class Context:
    """What every emitter may read: the profile and the graph-level values made once up front.

    Attributes:
      profile: "ort" or "standard".
      dims: symbolic dimension name -> int64 [1] value holding it (the new tokens, "T").
      positions: int32 [1, T] absolute positions of the new tokens.
      seqlens_k: int32 [1], total tokens in the cache after this step minus one ("ort").
      total_length: int32 scalar, the same plus one ("ort").
      max_len: the cache length, which bounds positions (rotary tables have that many rows).
    """

    profile: str
    dims: dict[str, str]
    positions: str
    seqlens_k: str | None = None
    total_length: str | None = None
    max_len: int = 0


class Ops:
    """The nodes and constants one equation lowers to, named under `prefix`."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[Const] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}/{hint}{self._count}"

    def op(self, op_type: str, inputs: Sequence[Value | None], outputs: int | Sequence[str] = 1,
           domain: str = "", **attributes) -> Any:
        """Adds a node; returns its output name (one output) or names (several)."""
        names = ([self.fresh(op_type) for _ in range(outputs)] if isinstance(outputs, int)
                 else list(outputs))
        node = helper.make_node(op_type, [self.use(v) if v is not None else "" for v in inputs],
                                names, name=self.fresh(f"{op_type}_node"), domain=domain or None,
                                **{k: v for k, v in attributes.items() if v is not None})
        self.nodes.append(node)
        return names[0] if len(names) == 1 else names

    def use(self, value: Value) -> str:
        """An ONNX name for `value`; a constant becomes an initializer."""
        if isinstance(value, str):
            return value
        if isinstance(value, Const):
            self.constants.append(value)
            return value.name
        if isinstance(value, Pending):
            raise TypeError(f"a fused region's result is used outside its fused op: "
                            f"{value.kind}")
        raise TypeError(f"a quantized weight ({value.name}) is read by an op other than a "
                        "matmul or an embedding lookup")

    def const(self, value: Any, dtype: Any = None) -> str:
        array = np.asarray(value, dtype=dtype)
        return self.use(Const.of(self.fresh("const"), array))

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.asarray(values, np.int64))


ONNX_DTYPES = {
    np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int32): TensorProto.INT32, np.dtype(np.int64): TensorProto.INT64,
    np.dtype(np.bool_): TensorProto.BOOL, np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
}


def onnx_dtype(dtype: Any) -> int:
    dtype = np.dtype(dtype)
    if dtype not in ONNX_DTYPES:
        raise TypeError(f"no ONNX element type for {dtype}")
    return ONNX_DTYPES[dtype]


def tensor_proto(const: Const, external: tuple[str, int] | None = None) -> TensorProto:
    """The initializer of `const`: inline, or pointing at (file, offset) of its raw bytes."""
    if external is None:
        if const.packed is not None:
            raise TypeError(f"{const.name}: 4-bit values are stored in the external data file")
        return numpy_helper.from_array(np.ascontiguousarray(const.load()), const.name)
    proto = TensorProto(name=const.name, data_type=const.packed or onnx_dtype(const.dtype),
                        dims=list(const.shape), data_location=TensorProto.EXTERNAL)
    location, offset = external
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(const.nbytes))):
        proto.external_data.add(key=key, value=value)
    return proto
