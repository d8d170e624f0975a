"""The primitive emitters of the jaxpr -> ONNX writer (exporter.onnx_ops): shapes that are
expressions of the symbolic token count T, lowered by the writer and run by onnxruntime at
several T against JAX; and single emitters on their own."""

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime as ort
import pytest
from jax import export as jax_export
from jax import lax
from onnx import TensorProto, helper

from exporter.onnx_export import OnnxGraph, save_decoder
from exporter.onnx_graph import Context, Ops, onnx_dtype, tensor_proto
from exporter.onnx_lower import lower_jaxpr, prune, rename
from exporter.onnx_ops import SymInt, _einsum_equation
from model_zoo.errors import GemmaforgeError

(T,) = jax_export.symbolic_shape("T", constraints=("T <= 64",))


def _session(fn, specs, directory) -> ort.InferenceSession:
    """`fn` traced at `specs` (jax.ShapeDtypeStruct; the first one's leading axis may be T),
    lowered by the writer, saved as the exporter saves the decoder and opened by onnxruntime.
    Inputs are in0, in1, ...; outputs out0, out1, ..."""
    closed = jax.make_jaxpr(fn)(*specs)
    # T as the decoder's preamble computes it: int64 [1] read off an input's shape.
    preamble = Ops("inputs")
    count = preamble.op("Slice", [preamble.op("Shape", ["in0"]), preamble.ints([0]),
                                  preamble.ints([1])])
    ctx = Context("standard", {"T": count}, "positions")
    lowered = lower_jaxpr(closed, [f"in{i}" for i in range(len(specs))], ctx)
    names = {value: f"out{i}" for i, value in enumerate(lowered.outputs)}
    nodes = rename(prune(preamble.nodes + lowered.nodes, list(names)), names)
    used = {name for node in nodes for name in node.input}
    constants = {c.name: c for c in preamble.constants + lowered.constants if c.name in used}
    inputs = [helper.make_tensor_value_info(
        f"in{i}", onnx_dtype(s.dtype), [d if isinstance(d, int) else str(d) for d in s.shape])
        for i, s in enumerate(specs)]
    outputs = [helper.make_tensor_value_info(name, onnx_dtype(aval.dtype), None)
               for name, aval in zip(names.values(), closed.out_avals, strict=True)]
    graph = OnnxGraph(nodes, list(constants.values()), inputs, outputs)
    save_decoder(graph, directory, directory / "no-weights")
    return ort.InferenceSession(str(directory / "model.onnx"),
                                providers=["CPUExecutionProvider"])


def _assert_runs_like_jax(fn, specs, feeds_per_run, directory):
    session = _session(fn, specs, directory)
    for feeds in feeds_per_run:
        expected = jax.jit(fn)(*feeds)
        got = session.run(None, {f"in{i}": x for i, x in enumerate(feeds)})
        assert len(got) == len(expected)
        for index, (g, e) in enumerate(zip(got, expected, strict=True)):
            np.testing.assert_allclose(g, np.asarray(e), rtol=1e-6,
                                       err_msg=f"output {index} at T={len(feeds[0])}")


def test_shapes_computed_from_t_run_at_every_t(tmp_path):
    """Output shapes 2T, 2T + 1, T - 1, T // 2 and values T - 1, T mod 3: the writer evaluates
    each dimension expression as int64 ops on the graph's T."""

    def fn(x):  # x: [T, 2]
        flat = x.reshape(-1) * 3  # [2T]
        ramp = lax.iota(jnp.float32, 2 * x.shape[0] + 1)  # [2T + 1]
        tail = lax.dynamic_slice_in_dim(x, 1, x.shape[0] - 1)  # [T - 1, 2]
        half = lax.dynamic_slice_in_dim(x, 0, x.shape[0] // 2)  # [T // 2, 2]
        last = jnp.asarray(x.shape[0] - 1, jnp.float32)  # []
        phase = jnp.asarray(x.shape[0] % 3, jnp.float32)  # []
        return flat, ramp, tail, half, last, phase

    rng = np.random.default_rng(0)
    runs = [(rng.standard_normal((t, 2), np.float32),) for t in (5, 6)]
    _assert_runs_like_jax(fn, [jax.ShapeDtypeStruct((T, 2), jnp.float32)], runs, tmp_path)


def test_sym_int_divides_as_python_does():
    """floordiv and mod of dimension expressions round toward minus infinity, also for a
    negative dividend (ONNX Div alone truncates toward zero)."""
    ops = Ops("test")
    t = SymInt(ops, "t")
    negative = t * -1 + 7  # 7 - t
    quotient, remainder = divmod(negative, 4)
    reverse_quotient, reverse_remainder = divmod(23, t)
    scaled = 2 * t + 1
    results = [quotient, remainder, reverse_quotient, reverse_remainder, scaled]
    names = {r.name: f"out{i}" for i, r in enumerate(results)}
    model = helper.make_model(
        helper.make_graph(rename(ops.nodes, names), "sym_int",
                          [helper.make_tensor_value_info("t", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info(n, TensorProto.INT64, [1])
                           for n in names.values()],
                          [tensor_proto(c) for c in ops.constants]),
        opset_imports=[helper.make_opsetid("", 23)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for value in (3, 10):
        got = [int(r[0]) for r in session.run(None, {"t": np.asarray([value], np.int64)})]
        assert got == [*divmod(7 - value, 4), *divmod(23, value), 2 * value + 1], value


def test_select_n_picks_its_second_case_where_true(tmp_path):
    def fn(x):
        return jnp.where(x > 0, x, -2 * x), lax.select_n(x > 0, x, -x)

    rng = np.random.default_rng(1)
    runs = [(rng.standard_normal((t,), np.float32),) for t in (3, 4)]
    _assert_runs_like_jax(fn, [jax.ShapeDtypeStruct((T,), jnp.float32)], runs, tmp_path)


def test_rounding_away_from_zero_is_refused_with_its_source(tmp_path):
    def fn(x):
        return lax.round(x, lax.RoundingMethod.AWAY_FROM_ZERO)

    with pytest.raises(GemmaforgeError, match=r"cannot lower round \(from .*test_onnx_ops"):
        _session(fn, [jax.ShapeDtypeStruct((T,), jnp.float32)], tmp_path)


def test_einsum_equation_orders_batch_then_free_axes():
    # [B, M, K] x [B, K, N] -> [B, M, N]; then a contraction over two axes, no batch.
    assert _einsum_equation(3, 3, (2,), (1,), (0,), (0,)) == "acb,abd->acd"
    assert _einsum_equation(3, 3, (1, 2), (0, 1), (), ()) == "cab,abd->cd"
