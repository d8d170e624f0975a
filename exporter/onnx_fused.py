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

import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import onnx

from exporter.onnx_graph import MS_DOMAIN, Const, Context, Ops, Pending, Value
from model_zoo.composites import KV_CACHE_UPDATE, RMS_NORM, ROPE, SDPA, SOFT_CAP, rope_angles

PROFILES = ("ort", "standard")
TRANSPOSE_SK = (0, 2, 1, 3)  # [B, K, S, H] <-> [B, S, K, H]


def composite_attributes(eqn) -> dict:
    return {key: tree.unflatten(leaves) for key, leaves, tree in eqn.params["attributes"]}


def _rms_norm(ops: Ops, ctx: Context, eqn, inputs, attributes):
    op_type = "SimplifiedLayerNormalization" if ctx.profile == "ort" else "RMSNormalization"
    return [ops.op(op_type, inputs, axis=-1, epsilon=float(attributes["epsilon"]),
                   stash_type=1)]


def _soft_cap(ops: Ops, ctx: Context, eqn, inputs, attributes):
    cap = ops.const(attributes["cap"], np.float32)
    return [ops.op("Mul", [ops.op("Tanh", [ops.op("Div", [inputs[0], cap])]), cap])]


def _rope_tables(ctx: Context, head_dim: int, base: float, scale: float) -> tuple[Const, Const]:
    """cos and sin [max_len, H/2] of every position, computed by the reference's own code."""
    return _rope_tables_of(ctx.max_len, head_dim, float(base), float(scale))


@functools.lru_cache(maxsize=16)
def _rope_tables_of(max_len: int, head_dim: int, base: float,
                    scale: float) -> tuple[Const, Const]:
    """Once per rotation, not once per layer: every layer with that base shares the tables."""
    angles = np.asarray(rope_angles(jnp.arange(max_len), head_dim, base, scale))
    key = f"rope_{head_dim}_{base:g}_{scale:g}_{max_len}"
    return (Const.of(f"{key}.cos", np.cos(angles).astype(np.float32)),
            Const.of(f"{key}.sin", np.sin(angles).astype(np.float32)))


def _rotate(ops: Ops, ctx: Context, x: Value, positions: Value, shape, attributes) -> str:
    """x [B, T, N, H] rotated at int32 positions [B, T], by the profile's rotary op."""
    _, _, heads, head_dim = shape
    cos, sin = _rope_tables(ctx, head_dim, attributes["base"], attributes["scale"])
    # [B, T, N, H] -> [B, T, N*H]
    flat = ops.op("Reshape", [x, ops.ints([0, 0, heads * head_dim])])
    ids = ops.op("Cast", [positions], to=onnx.TensorProto.INT64)
    if ctx.profile == "ort":
        rotated = ops.op("RotaryEmbedding", [flat, ids, cos, sin], domain=MS_DOMAIN,
                         interleaved=0, num_heads=heads)
    else:
        rotated = ops.op("RotaryEmbedding", [flat, cos, sin, ids], interleaved=0,
                         num_heads=heads)
    return ops.op("Reshape", [rotated, ops.ints([0, 0, heads, head_dim])])


def _rope(ops: Ops, ctx: Context, eqn, inputs, attributes):
    """The standard profile rotates here; the ort profile leaves it to GroupQueryAttention
    when the rotated queries and keys both reach one (`materialize` otherwise)."""
    if ctx.profile == "ort":
        return [Pending(ROPE, (*inputs, tuple(eqn.invars[0].aval.shape)), 0, attributes)]
    return [_rotate(ops, ctx, *inputs, eqn.invars[0].aval.shape, attributes)]


def materialize(ops: Ops, ctx: Context, value: Value) -> Value:
    """A pending rotation computed where a plain op needs it (other pendings pass through)."""
    if not (isinstance(value, Pending) and value.kind == ROPE):
        return value
    x, positions, shape = value.inputs
    rotated = _rotate(ops, ctx, x, positions, shape, value.params)
    if value.transposed is not None:
        rotated = ops.op("Transpose", [rotated], perm=list(value.transposed))
    return rotated


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
    _, _, heads, head_dim = eqn.invars[0].aval.shape
    kv_heads = eqn.invars[1].aval.shape[2]
    window = int(key.params.get("window", 0))
    scale = float(attributes["scale"])
    cap = attributes.get("logit_cap")
    if ctx.profile == "ort":
        # GroupQueryAttention rotates queries and keys itself when both arrive unrotated
        # with the same rotation (at positions following the cache, as every step has them).
        rotary = (isinstance(q, Pending) and isinstance(k_new, Pending)
                  and q.kind == k_new.kind == ROPE and q.params == k_new.params
                  and k_new.transposed == TRANSPOSE_SK)
        tables = [None, None]
        if rotary:
            tables = list(_rope_tables(ctx, head_dim, q.params["base"], q.params["scale"]))
            q, k_heads_last = q.inputs[0], k_new.inputs[0]  # [B, T, N, H], [B, T, K, H]
        else:
            q = materialize(ops, ctx, q)
            k_heads_last = ops.op("Transpose", [materialize(ops, ctx, k_new)],
                                  perm=list(TRANSPOSE_SK))
        v_heads_last = ops.op("Transpose", [v_new], perm=list(TRANSPOSE_SK))
        # [B, T, N, H] -> [B, T, N*H]; [B, T, K, H] -> [B, T, K*H]
        query = ops.op("Reshape", [q, ops.ints([0, 0, heads * head_dim])])
        key_new = ops.op("Reshape", [k_heads_last, ops.ints([0, 0, kv_heads * head_dim])])
        value_new = ops.op("Reshape", [v_heads_last, ops.ints([0, 0, kv_heads * head_dim])])
        out, present_k, present_v = ops.op(
            "GroupQueryAttention",
            [query, key_new, value_new, k_cache, v_cache, ctx.seqlens_k, ctx.total_length,
             *tables],
            outputs=3, domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=scale,
            softcap=float(cap) if cap is not None else None,
            local_window_size=window if window else -1, do_rotary=int(rotary),
            rotary_interleaved=0 if rotary else None)
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
    ROPE: _emitter(_rope),
}
# Composites that take fused regions' pending results as they are; every other emitter gets
# them computed first (`materialize`).
TAKES_PENDING = {KV_CACHE_UPDATE, SDPA}


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
