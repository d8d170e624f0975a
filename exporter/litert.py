"""LiteRT artifacts for Android and iOS: a .tflite with `prefill_<T>` and `decode` signatures in
the contract LiteRT-LM reads, and a .litertlm bundle (model, tokenizer, LlmMetadata).

Each entry point is exported with `jax.export(platforms=("cpu",))`, weights as arguments, so its
StableHLO module is small. In the converter's MLIR context every weight becomes one constant used
by every signature; the arguments are replaced by those constants, each module is converted by
litert-converter (TensorFlow-free), and the modules are merged into one flatbuffer, weights stored
once. The converter copies constants several times over (about 4x the float32 weights at its
peak, none of it freed before the context dies), so weight matrices enter it as placeholders and
their values are written into the finished flatbuffer from the exported safetensors
(`exporter.tflite_weights`). What remains is the flatbuffer writer expanding the placeholders in
memory while it writes (`python -m benchmarks litert-convert` measures the peak).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
from pathlib import Path
from unittest import mock

import jax
import numpy as np
from jax import export as jax_export

from exporter import litert_quant
from exporter.artifact import TOKENIZER
from exporter.manifest import FormatResult, files_under
from exporter.request import ExportPlan, ExportRequest, StoredWeights
from exporter.tflite_inspect import describe
from exporter.tflite_weights import fill_weights, placeable, placeholder
from exporter.trace import EntryPoint, TraceOptions, entry_function, input_specs, kv_names
from model_zoo.checkpoints.default import sha256_of
from model_zoo.checkpoints.native import weight_offsets, write_safetensors
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.lowering import Composites, Head, Lowering
from model_zoo.tokenizer import TURN_END, turn_start
from model_zoo.transformer import EMBEDDING, weight_specs
from quantize import dequantize

DIRECTORY = "litert"
TFLITE = "model.tflite"
BUNDLE = "model.litertlm"
FLOAT_FOR_LITERT = ".litert-float.safetensors"  # the dequantized weights the converter reads


def _converter():
    from litert_converter.mlir import ir, passmanager
    from litert_converter.mlir._mlir_libs import converter_api_ext
    from litert_converter.mlir.dialects import stablehlo

    return ir, passmanager, converter_api_ext, stablehlo


def _constants(context, config: ModelConfig, shapes: dict[str, tuple[int, ...]],
               weights_file: Path, offsets: dict[str, int],
               fused: bool) -> tuple[dict, dict[str, float]]:
    """One MLIR constant attribute per weight, and the placeholder value of each weight that
    goes in as a splat (its values are written into the flatbuffer after conversion)."""
    ir = _converter()[0]
    # Without the soft-cap composite the converter folds x / cap into the LM head: a second
    # table computed from the first, which therefore must go in with its values.
    folded = {EMBEDDING} if not fused and config.final_logit_softcap is not None else set()
    attributes, placed = {}, {}
    with context, ir.Location.unknown():
        for name, shape in shapes.items():
            kind = ir.RankedTensorType.get(shape, ir.F32Type.get())
            if placeable(shape) and name not in folded:
                placed[name] = placeholder(len(placed))
                attributes[name] = ir.DenseElementsAttr.get_splat(
                    kind, ir.FloatAttr.get(ir.F32Type.get(), placed[name]))
            else:
                value = np.array(np.memmap(weights_file, np.float32, "r", offsets[name], shape))
                attributes[name] = ir.DenseElementsAttr.get(value, type=kind)
    return attributes, placed


def _main_function(module):
    for operation in module.body.operations:
        if (operation.operation.name == "func.func"
                and operation.attributes["sym_name"].value == "main"):
            return operation
    raise GemmaforgeError("the exported module has no main function")


def _bake_weights(module, attributes: dict, names: list[str]) -> None:
    """Replaces main's leading weight arguments with constants and drops the arguments."""
    ir, _, _, stablehlo = _converter()
    main = _main_function(module)
    block = main.regions[0].blocks[0]
    with ir.InsertionPoint(block.operations[0]):
        for index, name in enumerate(names):
            block.arguments[index].replace_all_uses_with(
                stablehlo.ConstantOp(attributes[name]).result)
    for index in reversed(range(len(names))):
        block.erase_argument(index)
    signature = ir.FunctionType(main.attributes["function_type"].value)
    main.attributes["function_type"] = ir.TypeAttr.get(ir.FunctionType.get(
        list(signature.inputs)[len(names):], list(signature.results)))
    if "arg_attrs" in main.attributes:
        old = main.attributes["arg_attrs"]
        main.attributes["arg_attrs"] = ir.ArrayAttr.get(
            [old[i] for i in range(len(names), len(old))])


def convert_entry(config: ModelConfig, entry: EntryPoint, options: TraceOptions, context,
                  attributes: dict, lowering: Lowering):
    """One entry point as a converted TFL module with its signature set."""
    ir, passmanager, converter, _ = _converter()
    specs = weight_specs(config)
    names = sorted(specs)
    function = entry_function(config, entry, lowering)
    tokens, positions, cache = input_specs(config, entry, options.max_len)
    exported = jax_export.export(jax.jit(function, keep_unused=True),
                                 platforms=("cpu",))(specs, tokens, positions, cache)
    cache_names = sorted(kv_names(config))
    with context, ir.Location.unknown():
        module = ir.Module.parse(exported.mlir_module())
        _bake_weights(module, attributes, names)
        outputs = (["logits"] if entry.returns_logits else []) + cache_names
        converter.set_signature(module.operation, entry.name,
                                ["tokens", "input_pos", *cache_names], outputs)
        try:
            converter.run_convert_to_tfl_passes(module, passmanager.PassManager(),
                                                converter.ConvertToTFLConfig())
        except Exception as error:  # the converter raises bare RuntimeErrors with its diagnostics
            first = str(error).strip().splitlines()[0] if str(error).strip() else "failed"
            raise GemmaforgeError(f"litert-converter rejected {config.name}'s {entry.name}: "
                                  f"{first}") from None
    return module


def write_tflite(config: ModelConfig, directory: Path, options: TraceOptions,
                 weights_file: Path, *, table: bool = False) -> dict:
    """Writes directory/model.tflite with the weights in `weights_file` (our safetensors) and
    returns its manifest section. `table` marks the tied table's lookup and soft-cap as
    composites whatever `options` says (Composites.TABLE), for the quantizer."""
    ir, _, converter, _ = _converter()
    started = time.perf_counter()
    offsets = weight_offsets(weights_file, config)
    shapes = {name: spec.shape for name, spec in weight_specs(config).items()}
    context = ir.Context()
    converter.prepare_mlir_context(context)
    # 'BTD,VD->BTV' becomes FULLY_CONNECTED, which XNNPACK runs faster than a batch matmul.
    lowering = Lowering(options.composites | (Composites.TABLE if table else Composites.NONE),
                        head=Head.TOKENS_LEFT)
    attributes, placed = _constants(context, config, shapes, weights_file, offsets,
                                    options.fused)
    entries = [EntryPoint(f"prefill_{t}", t, False) for t in options.buckets]
    entries.append(EntryPoint("decode", 1, True))
    modules = [convert_entry(config, entry, options, context, attributes, lowering)
               for entry in entries]
    path = directory / TFLITE
    with context:
        merged = converter.merge_modules(modules) if len(modules) > 1 else modules[0]
        converter.export_flatbuffer_to_file(merged.operation, os.fspath(path))
    del merged, modules, attributes, context
    converted = time.perf_counter() - started
    written = fill_weights(path, placed, weights_file, offsets, shapes)
    structure = describe(path)
    # The timings vary from run to run: the exporter keeps them apart from the description.
    timings = {"convert_seconds": round(converted, 2),
               "write_weights_seconds": written.pop("seconds")}
    return {"file": f"{DIRECTORY}/{TFLITE}", "fused": options.fused,
            "signatures": structure["signatures"], "weights_written_after_conversion": written,
            "timings": timings}


def write_litert(plan: ExportPlan, stored: StoredWeights, root: Path,
                 request: ExportRequest) -> FormatResult:
    """Writes root/litert/: the .tflite (quantized onto the recipe's grids for a quantized
    artifact), its .litertlm bundle and, with `request.task`, a MediaPipe .task."""
    directory = root / DIRECTORY
    directory.mkdir()
    if stored.quantization is None:
        section = write_tflite(plan.config, directory, plan.options, stored.file)
    else:
        section = _write_quantized_tflite(plan, directory, stored, root / FLOAT_FOR_LITERT)
    timings = section.pop("timings")
    tokenizer = plan.tokenizer
    section["bundle"] = write_litertlm(
        directory, plan.config, root / TOKENIZER, bos_id=tokenizer.bos_id,
        stop_ids=list(tokenizer.stop_ids), max_len=plan.options.max_len)
    if request.task:
        section["task"] = write_task(
            directory, root / TOKENIZER, vocab_size=plan.config.vocab_size,
            bos_id=tokenizer.bos_id, stop_ids=list(tokenizer.stop_ids))
    tools = ("litert-converter", "litert-lm-builder")
    if stored.quantization is not None:
        tools += ("ai-edge-quantizer",)
    return FormatResult(files_under(root, directory), tuple(section["signatures"]), tools,
                        section, timings)


def _write_quantized_tflite(plan: ExportPlan, directory: Path, stored: StoredWeights,
                            float_file: Path) -> dict:
    """The LiteRT model of a quantized artifact (see exporter.litert_quant): converted from the
    dequantized weights with float activations (`plan.config`: the dynamic-range kernels
    round them themselves), then quantized onto the recipe's grids."""
    config, tensors = plan.config, stored.quantization.tensors
    quantizes = litert_quant.check_recipe(tensors).scheme is not None
    try:
        write_safetensors(float_file, weight_specs(config),
                          ((name, dequantize(value)) for name, value in stored.quantized.items()))
        section = write_tflite(config, directory, plan.options, float_file, table=quantizes)
    finally:
        float_file.unlink(missing_ok=True)
    if quantizes:
        section["quantization"] = litert_quant.quantize_tflite(directory / TFLITE, tensors,
                                                                stored.quantized)
    else:
        section["quantization"] = litert_quant.FLOAT_HOLDER
    section["signatures"] = describe(directory / TFLITE)["signatures"]
    return section


def llm_metadata(config: ModelConfig, *, bos_id: int, stop_ids: list[int], max_len: int):
    """LiteRT-LM's LlmMetadata: start and stop tokens, the Gemma turn template, the context, the
    model type and greedy sampling (TOP_P with k=1, what the CPU sampler implements)."""
    from litert_lm_builder.runtime.proto import llm_metadata_pb2, sampler_params_pb2

    from model_zoo.config import Family

    metadata = llm_metadata_pb2.LlmMetadata()
    metadata.start_token.token_ids.ids.append(bos_id)
    for stop in stop_ids:
        metadata.stop_tokens.add().token_ids.ids.append(stop)
    for role in ("user", "model"):
        affixes = getattr(metadata.prompt_templates, role)
        affixes.prefix = turn_start(role)
        affixes.suffix = TURN_END
    metadata.sampler_params.type = sampler_params_pb2.SamplerParameters.TOP_P
    metadata.sampler_params.k = 1
    metadata.sampler_params.p = 1.0
    metadata.sampler_params.temperature = 1.0
    metadata.max_num_tokens = max_len
    if config.family is Family.GEMMA3:
        metadata.llm_model_type.gemma3.SetInParent()
    else:
        metadata.llm_model_type.generic_model.SetInParent()
    return metadata


# The .litertlm header's creation_timestamp: fixed (the .task entries' date), so that the same
# export writes the same bytes.
BUNDLE_TIMESTAMP = "2024-01-01T00:00:00+00:00"


def bundle_identity(name: str, *parts: Path):
    """litert-lm-builder's `populate_system_metadata`, which stamps every bundle with a random
    uuid and the time of writing, replaced by one that derives the uuid from the bundle's
    content (the model name and the files it packs) and writes BUNDLE_TIMESTAMP."""
    from litert_lm_builder import DType, Metadata

    digest = hashlib.sha256(name.encode())
    for part in parts:
        digest.update(bytes.fromhex(sha256_of(part)))
    stamp = {"uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"gemmaforge:{digest.hexdigest()}")),
             "creation_timestamp": BUNDLE_TIMESTAMP}

    def populate(system_metadata: list) -> list:
        kept = [entry for entry in system_metadata if entry.key not in stamp]
        return kept + [Metadata(key=key, value=value, dtype=DType.STRING)
                       for key, value in stamp.items()]

    return populate


def write_litertlm(directory: Path, config: ModelConfig, tokenizer_model: Path, *, bos_id: int,
                   stop_ids: list[int], max_len: int) -> dict:
    """Bundles directory/model.tflite, the SentencePiece model and LlmMetadata into
    directory/model.litertlm with litert-lm-builder."""
    import litert_lm_builder
    from litert_lm_builder import litertlm_builder

    metadata_path = directory / ".llm_metadata.pb"
    metadata_path.write_bytes(llm_metadata(config, bos_id=bos_id, stop_ids=stop_ids,
                                           max_len=max_len).SerializeToString())
    builder = litert_lm_builder.LitertLmFileBuilder()
    builder.add_system_metadata(litert_lm_builder.Metadata(
        key="model_name", value=config.name, dtype=litert_lm_builder.DType.STRING))
    builder.add_llm_metadata(os.fspath(metadata_path), supports_thinking=False,
                             supports_function_calling=False)
    builder.add_sentencepiece_tokenizer(os.fspath(tokenizer_model))
    # The engine's CPU default for text decoders is float16 activations; these are float32.
    with contextlib.redirect_stdout(io.StringIO()):  # the builder prints; keep stdout for us
        builder.add_tflite_model(os.fspath(directory / TFLITE),
                                 litert_lm_builder.TfLiteModelType.PREFILL_DECODE,
                                 prefer_activation_type="fp32")
    identity = bundle_identity(config.name, metadata_path, tokenizer_model, directory / TFLITE)
    with (mock.patch.object(litertlm_builder, "populate_system_metadata", identity),
          open(directory / BUNDLE, "wb") as stream):
        builder.build(stream)
    metadata_path.unlink()
    return {"file": f"{DIRECTORY}/{BUNDLE}", "max_num_tokens": max_len, "start_token": bos_id,
            "stop_tokens": stop_ids, "sampler": "TOP_P k=1 p=1 (greedy)"}


# MediaPipe's LLM Inference bundle (`.task`): an uncompressed zip of the .tflite, the SentencePiece
# model and an `odml.infra.proto.LlmParameters` message. The message is written here from its field
# numbers (the mediapipe wheels that carry its Python class pin numpy<2 and protobuf<5).
TASK = "model.task"
TASK_ALIGNMENT = 64  # entry data offsets, so that runtimes can map the model in place
_LLM_PARAMETERS = {"vocab_size": 2, "start_token_id": 4, "stop_tokens": 5, "start_token": 6,
                   "prompt_template": 8}
_PROMPT_TEMPLATE = {"prompt_prefix": 2, "prompt_suffix": 3}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def llm_parameters(*, vocab_size: int, start_id: int, start_token: str, stop_tokens: list[str],
                   prompt_prefix: str, prompt_suffix: str) -> bytes:
    """The serialized LlmParameters of a .task bundle."""
    fields = _LLM_PARAMETERS
    message = (_varint(fields["vocab_size"] << 3) + _varint(vocab_size)
               + _varint(fields["start_token_id"] << 3) + _varint(start_id)
               + _length_delimited(fields["start_token"], start_token.encode()))
    for stop in stop_tokens:
        message += _length_delimited(fields["stop_tokens"], stop.encode())
    template = (_length_delimited(_PROMPT_TEMPLATE["prompt_prefix"], prompt_prefix.encode())
                + _length_delimited(_PROMPT_TEMPLATE["prompt_suffix"], prompt_suffix.encode()))
    return message + _length_delimited(fields["prompt_template"], template)


def _write_aligned(archive, name: str, source: Path | bytes) -> None:
    """Adds one stored entry whose data starts at a multiple of TASK_ALIGNMENT, padding with an
    extra field (as zipalign does); large files are streamed."""
    import shutil
    import struct
    import zipfile

    size = source.stat().st_size if isinstance(source, Path) else len(source)
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = size
    zip64 = size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own rule for the local header
    offset = archive.fp.tell()
    info.extra = struct.pack("<HH", 0xD935, 0)
    info.CRC = info.compress_size = 0  # placeholders: the header's length does not depend on them
    header = len(info.FileHeader(zip64))
    padding = -(offset + header) % TASK_ALIGNMENT
    info.extra = struct.pack("<HH", 0xD935, padding) + b"\0" * padding
    with archive.open(info, "w", force_zip64=zip64) as entry:
        if isinstance(source, Path):
            with open(source, "rb") as stream:
                shutil.copyfileobj(stream, entry, 1 << 24)
        else:
            entry.write(source)


def write_task(directory: Path, tokenizer_model: Path, *, vocab_size: int, bos_id: int,
               stop_ids: list[int]) -> dict:
    """Writes directory/model.task (MediaPipe LLM Inference; LiteRT-LM loads it too)."""
    import zipfile

    import sentencepiece

    pieces = sentencepiece.SentencePieceProcessor(model_file=os.fspath(tokenizer_model))
    stop_tokens = [pieces.id_to_piece(i) for i in stop_ids]
    metadata = llm_parameters(
        vocab_size=vocab_size, start_id=bos_id, start_token=pieces.id_to_piece(bos_id),
        stop_tokens=stop_tokens, prompt_prefix=turn_start("user"),
        prompt_suffix=TURN_END + turn_start("model"))
    with zipfile.ZipFile(directory / TASK, "w", zipfile.ZIP_STORED) as archive:
        _write_aligned(archive, "TF_LITE_PREFILL_DECODE", directory / TFLITE)
        _write_aligned(archive, "TOKENIZER_MODEL", tokenizer_model)
        _write_aligned(archive, "METADATA", metadata)
    return {"file": f"{DIRECTORY}/{TASK}", "start_token": pieces.id_to_piece(bos_id),
            "stop_tokens": stop_tokens}
