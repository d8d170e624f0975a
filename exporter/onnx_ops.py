"""JAX primitives -> ONNX nodes: one emitter per primitive, in the table `PRIMITIVES`.

An emitter takes (ops, ctx, eqn, inputs) and returns the equation's output values. Shapes may
hold the symbolic token count T; `shape_of` turns such a shape into an int64 tensor computed
from the graph's own inputs. Equations whose inputs are all known at export time are folded by
the walker (exporter.onnx_lower), so emitters only see run-time values or single constants.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from exporter import onnx_quant
from exporter.onnx_graph import Const, Context, Ops, Value, onnx_dtype
from exporter.onnx_quant import QuantizedWeight


class SymInt:
    """An int64 [1] ONNX value standing for a symbolic dimension. `dim_value` evaluates a
    `jax.export` dimension expression with its variables bound to SymInts; the evaluator
    combines them with Python ints through +, * and divmod (for floordiv and mod). It hands max
    and min to lax, which refuses a SymInt: the walker reports such a shape as unsupported."""

    def __init__(self, ops: Ops, name: str):
        self.ops, self.name = ops, name

    def _name(self, other) -> str:
        return other.name if isinstance(other, SymInt) else self.ops.ints([int(other)])

    def _binary(self, op: str, other, reverse: bool = False) -> SymInt:
        pair = (self._name(other), self.name) if reverse else (self.name, self._name(other))
        return SymInt(self.ops, self.ops.op(op, list(pair)))

    def _divmod(self, dividend: str, divisor: str) -> tuple[SymInt, SymInt]:
        # Python's floor division, not ONNX Div's truncation: Mod (fmod=0) takes the divisor's
        # sign as Python's % does, and the dividend minus it divides exactly.
        remainder = self.ops.op("Mod", [dividend, divisor], fmod=0)
        quotient = self.ops.op("Div", [self.ops.op("Sub", [dividend, remainder]), divisor])
        return SymInt(self.ops, quotient), SymInt(self.ops, remainder)

    def __add__(self, other) -> SymInt:
        return self._binary("Add", other)

    def __radd__(self, other) -> SymInt:
        return self._binary("Add", other, reverse=True)

    def __mul__(self, other) -> SymInt:
        return self._binary("Mul", other)

    def __rmul__(self, other) -> SymInt:
        return self._binary("Mul", other, reverse=True)

    def __divmod__(self, other) -> tuple[SymInt, SymInt]:
        return self._divmod(self.name, self._name(other))

    def __rdivmod__(self, other) -> tuple[SymInt, SymInt]:
        return self._divmod(self._name(other), self.name)


def is_static(shape: Sequence) -> bool:
    return all(isinstance(d, (int, np.integer)) for d in shape)


def dim_value(ops: Ops, ctx: Context, dim) -> str:
    """int64 [1] holding one (possibly symbolic) dimension."""
    if isinstance(dim, (int, np.integer)):
        return ops.ints([int(dim)])
    env = {name: SymInt(ops, value) for name, value in ctx.dims.items()}
    # jax.export has no public evaluator of a dimension expression (jax is pinned below 0.11).
    result = dim._evaluate(env)
    return result.name if isinstance(result, SymInt) else ops.ints([int(result)])


def shape_of(ops: Ops, ctx: Context, shape: Sequence) -> str:
    """int64 [rank] holding `shape`."""
    if is_static(shape):
        return ops.ints([int(d) for d in shape])
    return ops.op("Concat", [dim_value(ops, ctx, d) for d in shape], axis=0)


def _direct(op_type: str) -> Callable:
    """A primitive that is one ONNX op on the same inputs."""
    def emit(ops, ctx, eqn, inputs):
        return [ops.op(op_type, inputs)]
    return emit


def arange(ops: Ops, ctx: Context, dim) -> str:
    """int64 [dim]: 0, 1, ..., dim - 1 for a (possibly symbolic) dimension."""
    count = ops.op("Squeeze", [dim_value(ops, ctx, dim), ops.ints([0])])
    return ops.op("Range", [ops.const(0, np.int64), count, ops.const(1, np.int64)])


def _not_equal(ops, ctx, eqn, inputs):
    return [ops.op("Not", [ops.op("Equal", inputs)])]


def _round(ops, ctx, eqn, inputs):
    """ONNX Round rounds halves to even, as jnp.round does; JAX's other method (away from
    zero) has no one-op twin."""
    if eqn.params["rounding_method"] != jax.lax.RoundingMethod.TO_NEAREST_EVEN:
        raise NotImplementedError("round with halves away from zero")
    return [ops.op("Round", inputs)]


def _square(ops, ctx, eqn, inputs):
    return [ops.op("Mul", [inputs[0], inputs[0]])]


def _rsqrt(ops, ctx, eqn, inputs):
    return [ops.op("Reciprocal", [ops.op("Sqrt", inputs)])]


def _integer_pow(ops, ctx, eqn, inputs):
    exponent = eqn.params["y"]
    dtype = eqn.invars[0].aval.dtype
    if exponent == 2:
        return _square(ops, ctx, eqn, inputs)
    return [ops.op("Pow", [inputs[0], ops.const(exponent, dtype)])]


def _identity(ops, ctx, eqn, inputs):
    return [ops.op("Identity", inputs)]


def _convert(ops, ctx, eqn, inputs):
    return [ops.op("Cast", inputs, to=onnx_dtype(eqn.params["new_dtype"]))]


def _select_n(ops, ctx, eqn, inputs):
    predicate, *cases = inputs
    if len(cases) != 2:
        raise NotImplementedError("select_n with more than two cases")
    # select_n picks cases[predicate]: True -> the second.
    return [ops.op("Where", [predicate, cases[1], cases[0]])]


def _reduce(op_type: str) -> Callable:
    def emit(ops, ctx, eqn, inputs):
        axes = ops.ints(list(eqn.params["axes"]))
        return [ops.op(op_type, [inputs[0], axes], keepdims=0)]
    return emit


def _reshape(ops, ctx, eqn, inputs):
    if eqn.params.get("dimensions") is not None:
        raise NotImplementedError("reshape with dimensions")
    return [ops.op("Reshape", [inputs[0], shape_of(ops, ctx, eqn.params["new_sizes"])])]


def _squeeze(ops, ctx, eqn, inputs):
    return [ops.op("Squeeze", [inputs[0], ops.ints(list(eqn.params["dimensions"]))])]


def _expand_dims(ops, ctx, eqn, inputs):
    return [ops.op("Unsqueeze", [inputs[0], ops.ints(list(eqn.params["dimensions"]))])]


def _transpose(ops, ctx, eqn, inputs):
    return [ops.op("Transpose", inputs, perm=list(eqn.params["permutation"]))]


def _broadcast_in_dim(ops, ctx, eqn, inputs):
    shape = eqn.params["shape"]
    kept = eqn.params["broadcast_dimensions"]
    operand_shape = eqn.invars[0].aval.shape
    value = inputs[0]
    new_axes = [axis for axis in range(len(shape)) if axis not in kept]
    if new_axes:
        value = ops.op("Unsqueeze", [value, ops.ints(new_axes)])
    same = (len(operand_shape) == len(shape) and not new_axes
            and all(a is b or a == b for a, b in zip(operand_shape, shape, strict=True)))
    if same:
        return [value]
    return [ops.op("Expand", [value, shape_of(ops, ctx, shape)])]


def _concatenate(ops, ctx, eqn, inputs):
    return [ops.op("Concat", inputs, axis=eqn.params["dimension"])]


def _split(ops, ctx, eqn, inputs):
    sizes = [int(s) for s in eqn.params["sizes"]]
    outputs = ops.op("Split", [inputs[0], ops.ints(sizes)], outputs=len(sizes),
                     axis=eqn.params["axis"])
    return list(outputs) if len(sizes) > 1 else [outputs]


def _iota(ops, ctx, eqn, inputs):
    shape, dimension = eqn.params["shape"], eqn.params["dimension"]
    dtype = eqn.params["dtype"]
    values = ops.op("Cast", [arange(ops, ctx, shape[dimension])], to=onnx_dtype(dtype))
    axes = [axis for axis in range(len(shape)) if axis != dimension]
    if axes:
        values = ops.op("Unsqueeze", [values, ops.ints(axes)])
        values = ops.op("Expand", [values, shape_of(ops, ctx, shape)])
    return [values]


def _dim_as_value(ops, ctx, eqn, inputs):
    value = ops.op("Squeeze", [dim_value(ops, ctx, eqn.params["dim"]), ops.ints([0])])
    return [ops.op("Cast", [value], to=onnx_dtype(eqn.outvars[0].aval.dtype))]


def _gather(ops, ctx, eqn, inputs):
    """Only the row lookup `jnp.take(table, ids, axis=0)` lowers to: Gather on axis 0."""
    dims = eqn.params["dimension_numbers"]
    operand, indices = inputs
    table_shape = eqn.invars[0].aval.shape
    rows_of_axis0 = (tuple(dims.collapsed_slice_dims) == (0,)
                     and tuple(dims.start_index_map) == (0,)
                     and tuple(eqn.params["slice_sizes"]) == (1, *table_shape[1:])
                     and not dims.operand_batching_dims)
    if not rows_of_axis0:
        raise NotImplementedError(f"gather other than a row lookup ({dims})")
    # indices [..., 1] -> [...]
    index_rank = len(eqn.invars[1].aval.shape)
    ids = ops.op("Squeeze", [indices, ops.ints([index_rank - 1])])
    if isinstance(operand, QuantizedWeight):
        return [onnx_quant.lookup(ops, operand, ids)]
    rows = ops.op("Gather", [operand, ids], axis=0)
    if isinstance(operand, Const) and operand.dtype == np.float16:
        rows = ops.op("Cast", [rows], to=onnx_dtype(np.float32))
    return [rows]


def _starts(ops: Ops, ctx: Context, starts, shape, sizes) -> str:
    """int64 [rank] of clamped start indices: JAX keeps a slice inside its operand."""
    begin = ops.op("Concat", [ops.op("Reshape", [ops.op("Cast", [s], to=onnx_dtype(np.int64)),
                                                 ops.ints([1])]) for s in starts], axis=0)
    room = ops.op("Sub", [shape_of(ops, ctx, shape), shape_of(ops, ctx, sizes)])
    return ops.op("Max", [ops.op("Min", [begin, room]), ops.ints([0] * len(shape))])


def _dynamic_slice(ops, ctx, eqn, inputs):
    operand, *starts = inputs
    sizes = eqn.params["slice_sizes"]
    begin = _starts(ops, ctx, starts, eqn.invars[0].aval.shape, sizes)
    end = ops.op("Add", [begin, shape_of(ops, ctx, sizes)])
    return [ops.op("Slice", [operand, begin, end])]


def _dot_general(ops, ctx, eqn, inputs):
    """A contraction of trailing activation axes with a stored matrix becomes MatMul (its
    contracted axes leading) or Gemm with transB (trailing: a [N, K] table such as the tied
    embedding is read without a transposed copy), a quantized one MatMulNBits or
    DequantizeLinear + MatMul; anything else becomes Einsum."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs_shape, rhs_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    lhs, rhs = inputs
    # The same contraction with its pairs in lhs order.
    pairs = sorted(zip(lhs_contract, rhs_contract, strict=True))
    lhs_contract, rhs_contract = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    rank, count = len(lhs_shape), len(lhs_contract)
    keep = rank - count
    form = None
    if (isinstance(rhs, (Const, QuantizedWeight)) and not lhs_batch
            and lhs_contract == tuple(range(keep, rank))):
        if rhs_contract == tuple(range(count)):
            form = "MatMul"
        elif rhs_contract == tuple(range(len(rhs_shape) - count, len(rhs_shape))):
            form = "Gemm"
    if isinstance(rhs, QuantizedWeight) and (form is None or rhs.in_axes != (
            count if form == "MatMul" else -count)):
        raise NotImplementedError(f"a contraction of {rhs.name} other than over its input "
                                  "features")
    if form is None:
        return [ops.op("Einsum", [lhs, rhs], equation=_einsum_equation(
            rank, len(rhs_shape), lhs_contract, rhs_contract, tuple(lhs_batch),
            tuple(rhs_batch)))]
    k = int(np.prod([rhs_shape[d] for d in rhs_contract]))
    free = [int(rhs_shape[d]) for d in range(len(rhs_shape)) if d not in rhs_contract]
    n = int(np.prod(free))
    if count > 1:
        # [..., K1, K2] -> [..., K]
        lhs = ops.op("Reshape", [lhs, ops.ints([0] * keep + [k])])
    if isinstance(rhs, QuantizedWeight):
        out = onnx_quant.matmul(ops, lhs, rhs)
    elif form == "MatMul":
        out = ops.op("MatMul", [lhs, _float32(ops, rhs.reshaped((k, n)))])
    else:
        # [..., K] -> [M, K]; Gemm with the [N, K] table; [M, N] -> [..., N]
        flat = ops.op("Reshape", [lhs, ops.ints([-1, k])])
        product = ops.op("Gemm", [flat, _float32(ops, rhs.reshaped((n, k)))], transB=1)
        out = ops.op("Reshape", [product, shape_of(ops, ctx, (*lhs_shape[:keep], n))])
    if len(free) > 1:
        # [..., N] -> [..., N1, N2]
        out = ops.op("Reshape", [out, ops.ints([0] * keep + free)])
    return [out]


def _float32(ops: Ops, weight: Const) -> Value:
    """A weight stored in float16 (the fp16 recipe), cast to float32 where it is read."""
    if weight.dtype == np.float16:
        return ops.op("Cast", [weight], to=onnx_dtype(np.float32))
    return weight


def _einsum_equation(lhs_rank: int, rhs_rank: int, lhs_contract, rhs_contract, lhs_batch,
                     rhs_batch) -> str:
    """dot_general's dimension numbers as an einsum equation (batch, lhs free, rhs free)."""
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [""] * lhs_rank
    rhs = [""] * rhs_rank
    for left, right in zip(lhs_batch, rhs_batch, strict=True):
        lhs[left] = rhs[right] = next(letters)
    for left, right in zip(lhs_contract, rhs_contract, strict=True):
        lhs[left] = rhs[right] = next(letters)
    for axis in range(lhs_rank):
        lhs[axis] = lhs[axis] or next(letters)
    for axis in range(rhs_rank):
        rhs[axis] = rhs[axis] or next(letters)
    out = ([lhs[d] for d in lhs_batch]
           + [lhs[d] for d in range(lhs_rank) if d not in lhs_batch and d not in lhs_contract]
           + [rhs[d] for d in range(rhs_rank) if d not in rhs_batch and d not in rhs_contract])
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def _dynamic_update_slice(ops, ctx, eqn, inputs):
    """operand[start : start + update.shape] = update, as a ScatterND of every element."""
    operand, update, *starts = inputs
    shape, update_shape = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    rank = len(shape)
    sizes = shape_of(ops, ctx, update_shape)
    begin = _starts(ops, ctx, starts, shape, update_shape)
    # Index of every update element: begin + its coordinates, as [*update_shape, rank].
    grids = []
    for axis in range(rank):
        start = ops.op("Slice", [begin, ops.ints([axis]), ops.ints([axis + 1])])
        line = ops.op("Add", [arange(ops, ctx, update_shape[axis]), start])
        others = [a for a in range(rank) if a != axis]
        line = ops.op("Unsqueeze", [line, ops.ints(others)]) if others else line
        line = ops.op("Expand", [line, sizes])
        grids.append(ops.op("Unsqueeze", [line, ops.ints([rank])]))
    indices = ops.op("Concat", grids, axis=rank)
    return [ops.op("ScatterND", [operand, indices, update])]


PRIMITIVES: dict[str, Callable] = {
    "add": _direct("Add"), "sub": _direct("Sub"), "mul": _direct("Mul"), "div": _direct("Div"),
    "max": _direct("Max"), "min": _direct("Min"), "pow": _direct("Pow"),
    "and": _direct("And"), "or": _direct("Or"), "not": _direct("Not"),
    "lt": _direct("Less"), "le": _direct("LessOrEqual"), "gt": _direct("Greater"),
    "ge": _direct("GreaterOrEqual"), "eq": _direct("Equal"), "ne": _not_equal,
    "neg": _direct("Neg"), "exp": _direct("Exp"), "log": _direct("Log"), "tanh": _direct("Tanh"),
    "sin": _direct("Sin"), "cos": _direct("Cos"), "sqrt": _direct("Sqrt"), "abs": _direct("Abs"),
    "erf": _direct("Erf"), "logistic": _direct("Sigmoid"), "floor": _direct("Floor"),
    "round": _round, "square": _square, "rsqrt": _rsqrt, "integer_pow": _integer_pow,
    "stop_gradient": _identity, "copy": _identity, "copy_p": _identity,
    "convert_element_type": _convert, "select_n": _select_n,
    "reduce_sum": _reduce("ReduceSum"), "reduce_max": _reduce("ReduceMax"),
    "reduce_min": _reduce("ReduceMin"),
    "reshape": _reshape, "squeeze": _squeeze, "expand_dims": _expand_dims,
    "transpose": _transpose, "broadcast_in_dim": _broadcast_in_dim,
    "concatenate": _concatenate, "split": _split, "iota": _iota, "dim_as_value": _dim_as_value,
    "gather": _gather, "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": _dynamic_update_slice, "dot_general": _dot_general,
}

# Primitives folded at export time when their inputs are constants (the walker runs them).
FOLDABLE = set(PRIMITIVES) - {"dim_as_value"}

# Control-flow-free wrappers whose inner jaxpr is lowered in place.
INLINED = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
           "remat", "checkpoint"}
