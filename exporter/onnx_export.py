"""ONNX: one decoder graph for ONNX Runtime and onnxruntime-genai, lowered from the exporter
core's trace by our own jaxpr -> ONNX writer.

    onnx/
      model.onnx             the decoder, opset 23 (+ com.microsoft for the ort profile)
      model.onnx.data        the float32 weights when large: the artifact's weights.safetensors
                             itself (a hard link where the filesystem allows), read at offsets;
                             for a quantized artifact, its integer values and scales in the
                             layout the profile's ops read (exporter.onnx_quant)
      genai_config.json      onnxruntime-genai's description of the model
      tokenizer.json, tokenizer_config.json, special_tokens_map.json

The graph takes what onnxruntime-genai feeds a decoder:

  input_ids int64 [1, T], attention_mask int64 [1, total], position_ids int64 [1, T],
  past_key_values.<i>.key / .value float32 [1, K, max_len, H] ("ort": one fixed buffer that
  present.<i>.* shares) or [1, K, P, H] ("standard": present is P + T long)
  -> logits float32 [1, T, V], present.<i>.key / .value

It is the trace's `step` entry point (symbolic T, logits at every position, composites on)
with int64 inputs cast at the door.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import onnx
from jax import export as jax_export
from onnx import TensorProto, helper

from exporter.artifact import TOKENIZER
from exporter.genai import genai_config, write_tokenizer_files
from exporter.manifest import FormatResult, files_under
from exporter.onnx_fused import PROFILES, fuse_skip_norms
from exporter.onnx_graph import MS_DOMAIN, Const, Context, Ops, tensor_proto
from exporter.onnx_lower import lower_jaxpr, prune, rename
from exporter.onnx_quant import (
    QuantizedWeight,
    integer_activations,
    session_config,
    write_weights,
)
from exporter.request import ExportPlan, ExportRequest, StoredWeights
from exporter.trace import EntryPoint, TraceOptions, entry_function, input_specs
from model_zoo.checkpoints.native import weight_offsets
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.lowering import Composites, Head, Lowering
from model_zoo.transformer import weight_specs

DIRECTORY = "onnx"
MODEL = "model.onnx"
DATA = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"
OPSET = 23
# Above this many bytes of weights the model keeps them outside the protobuf (whose limit is
# 2 GiB): tiny test models stay one self-contained file.
EXTERNAL_DATA_BYTES = 64 * 2**20
STEP = EntryPoint("step", None, True, every_position=True)


def past_name(layer: int, kind: str) -> str:
    return f"past_key_values.{layer}.{'key' if kind == 'k' else 'value'}"


def present_name(layer: int, kind: str) -> str:
    return f"present.{layer}.{'key' if kind == 'k' else 'value'}"


@dataclasses.dataclass(frozen=True)
class OnnxGraph:
    """The lowered decoder before it is saved."""

    nodes: list[onnx.NodeProto]
    constants: list[Const]
    inputs: list[onnx.ValueInfoProto]
    outputs: list[onnx.ValueInfoProto]


def weight_constants(path: Path, config: ModelConfig) -> dict[str, Const]:
    """Every weight as a constant read from `path` (our safetensors) only when saved."""
    constants, specs = {}, weight_specs(config)
    for name, offset in weight_offsets(path, config).items():
        shape = tuple(specs[name].shape)

        def load(offset=offset, shape=shape) -> np.ndarray:
            return np.memmap(path, np.float32, "r", offset, shape)

        constants[name] = Const(name, shape, np.dtype(np.float32), load, (str(path), offset))
    return constants


def _preamble(config: ModelConfig, profile: str,
              max_len: int) -> tuple[Ops, Context, str, str]:
    """The graph-level values every layer reads: the int32 tokens and positions, the token
    count T, and for GroupQueryAttention the cache lengths from the attention mask."""
    ops = Ops("inputs")
    tokens = ops.op("Cast", ["input_ids"], to=TensorProto.INT32)
    positions = ops.op("Cast", ["position_ids"], to=TensorProto.INT32)
    input_pos = ops.op("Reshape", [positions, ops.ints([-1])])
    count = ops.op("Slice", [ops.op("Shape", ["input_ids"]), ops.ints([1]), ops.ints([2])])
    seqlens = total = None
    if profile == "ort":
        length = ops.op("ReduceSum", ["attention_mask", ops.ints([1])], keepdims=0)
        seqlens = ops.op("Cast", [ops.op("Sub", [length, ops.const(1, np.int64)])],
                         to=TensorProto.INT32)
        width = ops.op("Slice", [ops.op("Shape", ["attention_mask"]), ops.ints([1]),
                                 ops.ints([2])])
        total = ops.op("Cast", [ops.op("Squeeze", [width, ops.ints([0])])],
                       to=TensorProto.INT32)
    ctx = Context(profile, {"T": count}, positions, seqlens, total, max_len)
    return ops, ctx, tokens, input_pos


def lower_decoder(config: ModelConfig, options: TraceOptions,
                  weights: dict[str, Const | QuantizedWeight], profile: str) -> OnnxGraph:
    """The decoder graph of `profile` from the trace's step entry point."""
    if profile not in PROFILES:
        raise GemmaforgeError(f"unknown ONNX profile {profile!r}; profiles: "
                              f"{', '.join(PROFILES)}")
    (length,) = jax_export.symbolic_shape("T", constraints=(f"T <= {options.max_len}",))
    # The writer reads the jaxpr itself, so composites survive the symbolic length; ONNX has
    # rotary ops, and MatMul takes the head as tokens x table.
    function = entry_function(config, STEP, Lowering(Composites.CORE | Composites.ROPE,
                                                     head=Head.TOKENS_LEFT))
    specs = (weight_specs(config), *input_specs(config, STEP, options.max_len, length))
    closed, out_shapes = jax.make_jaxpr(function, return_shape=True)(*specs)

    preamble, ctx, tokens, input_pos = _preamble(config, profile, options.max_len)
    cache_inputs = {name: _cache_input_name(name) for name in specs[3]}
    args = jax.tree_util.tree_leaves(
        (weights, tokens, input_pos, cache_inputs),
        is_leaf=lambda x: isinstance(x, (str, Const, QuantizedWeight)))
    lowered = lower_jaxpr(closed, args, ctx)
    logits, caches = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shapes),
                                                  lowered.outputs)

    names = {_value(logits, "logits"): "logits"}
    for cache_name, value in caches.items():
        names[_value(value, cache_name)] = _cache_output_name(cache_name)
    nodes = preamble.nodes + lowered.nodes
    constants = preamble.constants + lowered.constants
    if profile == "ort":
        nodes = fuse_skip_norms(nodes, {c.name for c in constants})
    nodes = rename(prune(nodes, list(names)), names)
    used = {name for node in nodes for name in node.input}
    unique = {c.name: c for c in constants if c.name in used}
    inputs, outputs = _signature(config, options, profile)
    return OnnxGraph(nodes, list(unique.values()), inputs, outputs)


def _cache_input_name(trace_name: str) -> str:
    """kv_cache_k_<i> -> past_key_values.<i>.key (and v -> value)."""
    return past_name(*_layer_and_kind(trace_name))


def _cache_output_name(trace_name: str) -> str:
    """kv_cache_k_<i> -> present.<i>.key (and v -> value)."""
    return present_name(*_layer_and_kind(trace_name))


def _layer_and_kind(trace_name: str) -> tuple[int, str]:
    _, _, kind, layer = trace_name.split("_")
    return int(layer), kind


def _value(value, what: str) -> str:
    if not isinstance(value, str):
        raise GemmaforgeError(f"the ONNX decoder's {what} is not computed at run time "
                              f"({type(value).__name__}); this trace cannot be exported")
    return value


def _signature(config: ModelConfig, options: TraceOptions,
               profile: str) -> tuple[list, list]:
    k, h = config.num_kv_heads, config.head_dim
    past = [1, k, options.max_len if profile == "ort" else "past_sequence_length", h]
    present = [1, k, options.max_len if profile == "ort" else "total_sequence_length", h]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                            [1, "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            [1, "total_sequence_length"]),
              helper.make_tensor_value_info("position_ids", TensorProto.INT64,
                                            [1, "sequence_length"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             [1, "sequence_length", config.vocab_size])]
    for layer in range(config.num_layers):
        for kind in "kv":
            inputs.append(helper.make_tensor_value_info(past_name(layer, kind),
                                                        TensorProto.FLOAT, past))
            outputs.append(helper.make_tensor_value_info(present_name(layer, kind),
                                                         TensorProto.FLOAT, present))
    return inputs, outputs


def save_decoder(graph: OnnxGraph, directory: Path, weights_file: Path, *,
                 external_bytes: int = EXTERNAL_DATA_BYTES, data_written: bool = False) -> dict:
    """Writes model.onnx (and model.onnx.data when the weights are large) into `directory`.

    Large weights are not written again: model.onnx.data is `weights_file` (a hard link, or a
    copy where links are refused) and the initializers point at their offsets in it. With
    `data_written`, model.onnx.data already holds the weights (a quantized artifact's layout)
    and the initializers point into it."""
    data_file = directory / DATA
    if data_written:
        source_file, external = data_file, True
    else:
        source_file = weights_file
        stored = sum(c.nbytes for c in graph.constants if c.source is not None)
        external = stored > external_bytes
        if external:
            try:
                os.link(weights_file, data_file)
            except OSError:
                shutil.copyfile(weights_file, data_file)
    initializers = []
    for const in graph.constants:
        pointed = external and const.source is not None and const.source[0] == str(source_file)
        initializers.append(tensor_proto(const, (DATA, const.source[1]) if pointed else None))
    model = helper.make_model(
        helper.make_graph(graph.nodes, "gemmaforge_decoder", graph.inputs, graph.outputs,
                          initializers),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="gemmaforge")
    data = model.SerializeToString()
    if len(data) >= 2**31:
        raise GemmaforgeError(f"the ONNX protobuf would be {len(data)} bytes, over the 2 GiB "
                              "limit; this is a gemmaforge bug (weights should be external)")
    (directory / MODEL).write_bytes(data)
    section = {"file": f"{DIRECTORY}/{MODEL}", "opset": OPSET, "nodes": len(graph.nodes),
               "initializers": len(initializers)}
    if external:
        section["external_data"] = f"{DIRECTORY}/{DATA}"
    return section


def op_counts(nodes: list[onnx.NodeProto]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        key = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def write_onnx(plan: ExportPlan, stored: StoredWeights, root: Path,
               request: ExportRequest) -> FormatResult:
    """Writes `root/onnx/` (the decoder of `request.onnx_profile`, genai_config.json, tokenizer
    files). The weights come from the stored file, one at a time; a quantized artifact's
    (integer values and scales) are laid out for the profile's ops at MatMulNBits'
    `request.onnx_accuracy_level` (exporter.onnx_quant)."""
    config, options, profile = plan.traced, plan.options, request.onnx_profile
    weights_file, tokenizer = stored.file, plan.tokenizer
    quantization, accuracy_level = stored.quantization, request.onnx_accuracy_level
    directory = root / DIRECTORY
    directory.mkdir()
    traced = config
    if quantization is None:
        weights = weight_constants(weights_file, config)
    else:
        weights = write_weights(weights_file, directory / DATA, config,
                                quantization.tensors, profile, accuracy_level)
        if integer_activations(quantization.tensors):  # the matmuls round their inputs
            traced = dataclasses.replace(config, activation_quant=None)
    graph = lower_decoder(traced, options, weights, profile)
    section = save_decoder(graph, directory, weights_file, data_written=quantization is not None)
    entries = session_config(accuracy_level) if quantization is not None else {}
    if quantization is not None:
        section["quantization"] = {
            "accuracy_level": accuracy_level, "session_config": entries,
            "tensors": {name: weight.describe() for name, weight in weights.items()
                        if isinstance(weight, QuantizedWeight)}}
    (directory / GENAI_CONFIG).write_text(json.dumps(genai_config(
        config, filename=MODEL, max_len=options.max_len, profile=profile,
        bos_id=tokenizer.bos_id, stop_ids=list(tokenizer.stop_ids), pad_id=config.pad_id,
        session_config=entries), indent=2) + "\n")
    files = write_tokenizer_files(directory, (root / TOKENIZER).read_bytes(),
                                  max_len=options.max_len)
    section.update(profile=str(profile), directory=DIRECTORY, genai_config=GENAI_CONFIG,
                   tokenizer_files=files, share_buffer=profile == "ort",
                   ops=op_counts(graph.nodes),
                   inputs=[i.name for i in graph.inputs], outputs=[o.name for o in graph.outputs])
    return FormatResult(files_under(root, directory), (STEP.name,), ("onnx",), section)
