"""The walker: a traced entry point's jaxpr -> ONNX nodes, through the primitive and composite
tables. Wrappers (jit, custom_jvp) are lowered in place; equations whose inputs are all known
at export time are folded into constants; everything else goes through its emitter. A
primitive or composite without one is an error naming it and the line of the model it came
from.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import onnx
from jax.extend import source_info_util

from exporter.onnx_fused import COMPOSITES, TAKES_PENDING, materialize
from exporter.onnx_graph import Const, Context, Ops, Pending, Value
from exporter.onnx_ops import FOLDABLE, INLINED, PRIMITIVES, is_static
from model_zoo.errors import GemmaforgeError


@dataclasses.dataclass(frozen=True)
class LoweredGraph:
    """Nodes and constants of a whole jaxpr, and the values of its outputs."""

    outputs: list[Value]
    nodes: list[onnx.NodeProto]
    constants: list[Const]


def _where(eqn, outer: str) -> str:
    """The model line an equation was traced from; inside a wrapper whose own equations carry
    no user frame (jnp functions are jitted), the wrapper's."""
    return source_info_util.summarize(eqn.source_info) or outer or "an unknown line"


def _inner(eqn) -> jax.extend.core.ClosedJaxpr:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    raise GemmaforgeError(f"cannot find the inner jaxpr of {eqn.primitive.name}")


def _fold(eqn, inputs: list[Const], prefix: str) -> list[Const] | None:
    """The equation evaluated at export time, lazily (a weight is read only when saved)."""
    if eqn.primitive.name not in FOLDABLE or eqn.primitive.multiple_results:
        return None
    out = eqn.outvars[0].aval
    if not is_static(out.shape):
        return None
    primitive, params = eqn.primitive, dict(eqn.params)
    loads = [c.load for c in inputs]

    def load() -> np.ndarray:
        return np.asarray(primitive.bind(*(load_one() for load_one in loads), **params))

    first = next((c.name for c in inputs if c.source is not None), prefix)
    return [Const(f"{first}:{primitive.name}@{prefix}", tuple(out.shape), np.dtype(out.dtype),
                  load)]


def lower_jaxpr(closed, inputs: list[Value], ctx: Context, prefix: str = "",
                outer: str = "") -> LoweredGraph:
    """Lowers `closed` (a ClosedJaxpr) applied to `inputs`; `outer` is where the wrapper it
    came from was traced."""
    nodes: list[onnx.NodeProto] = []
    constants: list[Const] = []
    resolved: dict[int, Value] = {}
    env: dict = {}

    def read(var, name: str) -> Value:
        if isinstance(var, jax.extend.core.Literal):
            return Const.of(name, np.asarray(var.val, var.aval.dtype))
        value = env[var]
        if isinstance(value, Pending) and value.transposed is None \
                and id(value.root) in resolved:
            return resolved[id(value.root)]
        return value

    jaxpr = closed.jaxpr
    for index, (var, const) in enumerate(zip(jaxpr.constvars, closed.consts, strict=True)):
        env[var] = Const.of(f"{prefix}c{index}", np.asarray(const))
    for var, value in zip(jaxpr.invars, inputs, strict=True):
        env[var] = value

    for number, eqn in enumerate(jaxpr.eqns):
        name = eqn.primitive.name
        here = f"{prefix}{number}"
        args = [read(v, f"{here}/literal{i}") for i, v in enumerate(eqn.invars)]
        where = _where(eqn, outer)
        if name in INLINED:
            inner = lower_jaxpr(_inner(eqn), args, ctx, prefix=f"{here}.", outer=where)
            nodes += inner.nodes
            constants += inner.constants
            outputs = inner.outputs
        elif name == "transpose" and isinstance(args[0], Pending):
            outputs = [dataclasses.replace(args[0], transposed=tuple(eqn.params["permutation"]),
                                           origin=args[0].root)]
        elif name == "composite":
            composite = eqn.params["name"]
            if composite not in COMPOSITES:
                raise GemmaforgeError(f"the ONNX writer has no fused op for composite "
                                      f"{composite!r} (from {where}); known: "
                                      f"{', '.join(COMPOSITES)}")
            ops = Ops(here)
            if composite not in TAKES_PENDING:
                args = [materialize(ops, ctx, a) for a in args]
            try:
                outputs, rebind = COMPOSITES[composite](ops, ctx, eqn, args)
            except (NotImplementedError, TypeError) as error:
                raise GemmaforgeError(f"cannot lower composite {composite!r} (from "
                                      f"{where}) to ONNX: {error}") from None
            for pending, value in rebind:
                resolved[id(pending.root)] = value
            nodes += ops.nodes
            constants += ops.constants
        else:
            folded = (_fold(eqn, args, here)
                      if all(isinstance(a, Const) for a in args) else None)
            if folded is not None:
                outputs = folded
            elif name not in PRIMITIVES:
                raise GemmaforgeError(f"the ONNX writer has no emitter for primitive {name!r} "
                                      f"(from {where})")
            else:
                ops = Ops(here)
                args = [materialize(ops, ctx, a) for a in args]
                try:
                    outputs = PRIMITIVES[name](ops, ctx, eqn, args)
                except (NotImplementedError, TypeError) as error:
                    raise GemmaforgeError(f"cannot lower {name} (from {where}) to ONNX: "
                                          f"{error}") from None
                nodes += ops.nodes
                constants += ops.constants
        for var, value in zip(eqn.outvars, outputs, strict=True):
            env[var] = value
    return LoweredGraph([read(v, f"{prefix}out{i}") for i, v in enumerate(jaxpr.outvars)],
                        nodes, constants)


def prune(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """Drops the nodes no output depends on (the trace's own masks, which the fused attention
    rebuilds, and what only they read)."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return kept[::-1]


def rename(nodes: list[onnx.NodeProto], names: dict[str, str]) -> list[onnx.NodeProto]:
    """Copies of `nodes` with values renamed: what the graph's outputs are called."""
    renamed = []
    for node in nodes:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for field in (copy.input, copy.output):
            for index, name in enumerate(field):
                if name in names:
                    field[index] = names[name]
        renamed.append(copy)
    return renamed
