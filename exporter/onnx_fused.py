"""Composites -> fused ONNX ops, per profile: the table `COMPOSITES`.

  ort       com.microsoft GroupQueryAttention over a fixed [1, K, max_len, H] buffer shared by
            past and present (soft-cap, per-layer local window), SimplifiedLayerNormalization
            (SkipSimplifiedLayerNormalization where a residual add feeds it; see
            `fuse_skip_norms`), norm weights with Gemma's +1 folded in.
  standard  opset-23 Attention with past/present (the cache grows by concatenation, soft-cap,
            the window as a boolean mask from the positions), RMSNormalization.

The KV-cache update composite lowers to nothing by itself: both attention ops write the cache,
so its results stay `Pending` until the attention composite that reads them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from exporter.onnx_graph import MS_DOMAIN, Context, Ops, Pending
from model_zoo.composites import KV_CACHE_UPDATE, RMS_NORM, SDPA, SOFT_CAP

PROFILES = ("ort", "standard")
TRANSPOSE_SK = (0, 2, 1, 3)  # [B, K, S, H] <-> [B, S, K, H]


def composite_attributes(eqn) -> dict:
    return {key: tree.unflatten(leaves) for key, leaves, tree in eqn.params["attributes"]}


def _rms_norm(ops: Ops, ctx: Context, eqn, inputs, attributes):
    x, weight = inputs
    if ctx.profile == "ort":
        return [ops.op("SimplifiedLayerNormalization", [x, weight], axis=-1,
                       epsilon=float(attributes["epsilon"]), stash_type=1)]
    return [ops.op("RMSNormalization", [x, weight], axis=-1,
                   epsilon=float(attributes["epsilon"]), stash_type=1)]


def _soft_cap(ops: Ops, ctx: Context, eqn, inputs, attributes):
    cap = ops.const(attributes["cap"], np.float32)
    return [ops.op("Mul", [ops.op("Tanh", [ops.op("Div", [inputs[0], cap])]), cap])]


def _kv_cache_update(ops: Ops, ctx: Context, eqn, inputs, attributes):
    region = tuple(inputs)
    return [Pending(KV_CACHE_UPDATE, region, index, attributes) for index in range(2)]


def _cache_update_of(value, role: str) -> Pending:
    if not (isinstance(value, Pending) and value.kind == KV_CACHE_UPDATE
            and value.transposed == TRANSPOSE_SK):
        raise NotImplementedError(f"attention whose {role} is not a KV-cache update composite "
                                  "transposed to [B, S, K, H]")
    return value


def _sdpa(ops: Ops, ctx: Context, eqn, inputs, attributes):
    q, k, v, _ = inputs  # the mask is rebuilt from the positions by the fused op
    key, value = _cache_update_of(k, "key"), _cache_update_of(v, "value")
    if key.inputs is not value.inputs or (key.index, value.index) != (0, 1):
        raise NotImplementedError("attention whose key and value come from different updates")
    k_cache, v_cache, _, k_new, v_new = key.inputs
    _, t, heads, head_dim = eqn.invars[0].aval.shape
    kv_heads = eqn.invars[1].aval.shape[2]
    window = int(key.params.get("window", 0))
    scale = float(attributes["scale"])
    cap = attributes.get("logit_cap")
    if ctx.profile == "ort":
        def flat(x4):  # [B, K, T, H] -> [B, T, K*H]
            return ops.op("Reshape", [ops.op("Transpose", [x4], perm=list(TRANSPOSE_SK)),
                                      ops.ints([0, 0, kv_heads * head_dim])])
        query = ops.op("Reshape", [q, ops.ints([0, 0, heads * head_dim])])
        out, present_k, present_v = ops.op(
            "GroupQueryAttention",
            [query, flat(k_new), flat(v_new), k_cache, v_cache, ctx.seqlens_k, ctx.total_length],
            outputs=3, domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=scale,
            softcap=float(cap) if cap is not None else None,
            local_window_size=window if window else -1, do_rotary=0)
        # [B, T, N*H] -> [B, T, N, H]
        attended = ops.op("Reshape", [out, ops.ints([0, 0, heads, head_dim])])
    else:
        # Queries [B, T, N, H] -> [B, N, T, H]; keys/values are [B, K, T, H] already.
        query = ops.op("Transpose", [q], perm=list(TRANSPOSE_SK))
        out, present_k, present_v = ops.op(
            "Attention", [query, k_new, v_new, _visible(ops, ctx, k_cache, window), k_cache,
                          v_cache],
            outputs=3, scale=scale, softcap=float(cap) if cap is not None else None)
        attended = ops.op("Transpose", [out], perm=list(TRANSPOSE_SK))
    del t
    return [attended], [(key, present_k), (value, present_v)]


def _visible(ops: Ops, ctx: Context, past: str, window: int) -> str:
    """bool [T, P + T]: query i (absolute position p_i) sees key j when j <= p_i and, for a
    local layer, p_i - j < window. Keys are the P past tokens followed by the T new ones."""
    past_len = ops.op("Slice", [ops.op("Shape", [past]), ops.ints([2]), ops.ints([3])])
    total = ops.op("Squeeze", [ops.op("Add", [past_len, ctx.dims["T"]]), ops.ints([0])])
    keys = ops.op("Range", [ops.const(0, np.int64), total, ops.const(1, np.int64)])
    keys = ops.op("Cast", [keys], to=onnx.TensorProto.INT32)
    # [1, T] -> [T, 1]
    queries = ops.op("Reshape", [ctx.positions, ops.ints([-1, 1])])
    visible = ops.op("LessOrEqual", [keys, queries])
    if window:
        distance = ops.op("Sub", [queries, keys])
        near = ops.op("Less", [distance, ops.const(window, np.int32)])
        visible = ops.op("And", [visible, near])
    return visible


def _emitter(fn: Callable) -> Callable:
    """Adapts a composite emitter to (outputs, rebind)."""
    def emit(ops, ctx, eqn, inputs):
        result = fn(ops, ctx, eqn, inputs, composite_attributes(eqn))
        return result if isinstance(result, tuple) else (result, [])
    return emit


COMPOSITES: dict[str, Callable] = {
    RMS_NORM: _emitter(_rms_norm),
    SOFT_CAP: _emitter(_soft_cap),
    KV_CACHE_UPDATE: _emitter(_kv_cache_update),
    SDPA: _emitter(_sdpa),
}


def fuse_skip_norms(nodes: list[onnx.NodeProto], constants: set[str]) -> list[onnx.NodeProto]:
    """Add -> SimplifiedLayerNormalization becomes one SkipSimplifiedLayerNormalization, placed
    where the Add was, whose fourth output is the sum that every other consumer reads as before.

    Only adds of two run-time values qualify (not in `constants`): in the decoder those are the
    residual adds, of two [B, T, D] tensors."""
    producer = {output: node for node in nodes for output in node.output}
    at_add, dropped = {}, set()
    for node in nodes:
        if node.op_type != "SimplifiedLayerNormalization":
            continue
        add = producer.get(node.input[0])
        if (add is None or add.op_type != "Add" or add.name in at_add
                or any(name in constants for name in add.input)):
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        at_add[add.name] = onnx.helper.make_node(
            "SkipSimplifiedLayerNormalization", [add.input[0], add.input[1], node.input[1]],
            [node.output[0], "", "", add.output[0]], name=node.name + "_skip",
            domain=MS_DOMAIN, epsilon=attributes["epsilon"])
        dropped.add(node.name)
    return [at_add.get(node.name, node) for node in nodes if node.name not in dropped]
