"""`export`: a loaded model to an artifact directory, as the pipeline it is: the request checked
once, the output reserved, the model planned, the weights quantized once and written, each
requested format's writer (`WRITERS`), and the manifest built from what they returned."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import jax

import quantize
from exporter import litert_quant
from exporter.artifact import (
    TOKENIZER,
    WEIGHTS,
    atomic_directory,
    check_out,
    file_entries,
    tool_versions,
    write_manifest,
)
from exporter.litert import write_litert
from exporter.manifest import FormatResult, Manifest, Quantization, TokenizerEntry
from exporter.onnx_export import write_onnx
from exporter.request import (
    FORMATS,
    ExportPlan,
    ExportRequest,
    Format,
    StoredWeights,
)
from exporter.stablehlo import write_stablehlo
from exporter.trace import resolve_options
from model_zoo.checkpoints.native import write_safetensors
from model_zoo.config import config_to_dict
from model_zoo.errors import GemmaforgeError
from model_zoo.loading import LoadedModel
from model_zoo.lowering import Composites
from model_zoo.spm import GemmaTokenizer, sentencepiece_twin
from model_zoo.transformer import weight_specs

Writer = Callable[[ExportPlan, StoredWeights, Path, ExportRequest], FormatResult]
# Each format's writer; they run, and the manifest lists them, in FORMATS order.
WRITERS: dict[Format, Writer] = {
    Format.STABLEHLO: write_stablehlo,
    Format.ONNX: write_onnx,
    Format.LITERT: write_litert,
}
# The tools every artifact records; each writer adds its own (FormatResult.tools).
TOOLS = ("jax", "jaxlib", "flax", "numpy")


def export(model: LoadedModel, request: ExportRequest | str | os.PathLike,
           **options) -> Manifest:
    """Writes the artifact directory (atomically) and returns its manifest. `request` is an
    `ExportRequest`, or the directory with the request's options as keywords
    (`ExportRequest.create`: formats, max_len, buckets, platforms, mesh, fused,
    symbolic_prefill, task, onnx_profile, quant, onnx_accuracy_level, force). A recipe
    (`quant`) quantizes the weights once and every program runs those numbers. Validation is
    a separate step: `runtimes.validate(out)`.

    The manifest records `"validation": {"status": "not run"}` until validation rewrites it,
    and keeps everything that varies from run to run in its `timings` section: the same model,
    options and tool versions give the same bytes in every other file and field."""
    if not isinstance(request, ExportRequest):
        request = ExportRequest.create(request, **options)
    elif options:
        raise GemmaforgeError(f"export takes an ExportRequest or options, not both "
                              f"({', '.join(options)})")
    check_out(request.out, force=request.force)  # before any slow work; checked again below
    plan = plan_export(model, request)
    started = time.perf_counter()
    with atomic_directory(request.out, force=request.force) as root:
        (root / TOKENIZER).write_bytes(tokenizer_model(model))
        stored = write_weights(model, request, root)
        results = {fmt: WRITERS[fmt](plan, stored, root, request)
                   for fmt in FORMATS if fmt in request.formats}
        manifest = build_manifest(model, request, plan, stored, results, root, started)
        write_manifest(root, manifest)
    return manifest


def plan_export(model: LoadedModel, request: ExportRequest) -> ExportPlan:
    """The trace options and configs every writer reads, and the checks that need the model,
    before anything is written."""
    recipe = request.recipe
    # The programs run under the recipe's activation rounding (ModelConfig.activation_quant).
    traced = model.config if recipe is None else quantize.model_config(model.config, recipe)
    if recipe is not None and Format.LITERT in request.formats:
        # The recipe's grids must be ones LiteRT holds.
        litert_quant.check_recipe({name: recipe.spec_for(name, spec.shape).describe()
                                   for name, spec in weight_specs(model.config).items()})
    options = resolve_options(model.config, request.max_len, request.buckets,
                              composites=Composites.CORE if request.fused else Composites.NONE,
                              symbolic_prefill=request.symbolic_prefill)
    return ExportPlan(model.config, traced, options, tokenizer_entry(model))


def tokenizer_entry(model: LoadedModel) -> TokenizerEntry:
    """The manifest's description of the bundled tokenizer (`tokenizer_model`)."""
    tokenizer = model.tokenizer
    kind = "sentencepiece" if isinstance(tokenizer, GemmaTokenizer) else "bytes"
    return TokenizerEntry(kind, TOKENIZER, tokenizer.bos_id, tokenizer.eos_id,
                          tuple(tokenizer.stop_ids), tokenizer.vocab_size)


def tokenizer_model(model: LoadedModel) -> bytes:
    """The tokenizer as a SentencePiece model (the byte tokenizer of test models has an exact
    SentencePiece twin)."""
    if isinstance(model.tokenizer, GemmaTokenizer):
        return model.tokenizer.model_proto
    return sentencepiece_twin(model.tokenizer, model.config.vocab_size)


def write_weights(model: LoadedModel, request: ExportRequest, root: Path) -> StoredWeights:
    """Writes root/weights.safetensors: the float32 parameters, streamed one at a time, or the
    recipe's quantized tree (integer values and scales under `<name>.values`, `.scales`)."""
    path = root / WEIGHTS
    if request.recipe is None:
        write_safetensors(path, weight_specs(model.config), model.weights())
        return StoredWeights(path)
    quantized, tensors = _quantize(model, request)
    flat = quantize.flatten_params(quantize.to_params(quantized))
    write_safetensors(path, flat, flat.items())
    return StoredWeights(path, {n: jax.ShapeDtypeStruct(a.shape, a.dtype) for n, a in flat.items()},
                         quantized, Quantization(request.recipe.name, tensors))


def _quantize(model: LoadedModel, request: ExportRequest) -> tuple[dict, dict[str, dict]]:
    """(name -> quantized value, name -> its grid for the manifest) under the request's
    recipe; the calibration statistics and the checkpoint's grids go once it returns."""
    recipe = request.recipe
    sources = quantize.read_sources(recipe, model.checkpoint, model.config)
    hessians = quantize.calibrate(recipe, model.config, model.params, model.tokenizer)
    quantized = quantize.apply(model.weights(), recipe, hessians, sources)
    return quantized, quantize.specs_of(quantized, sources)


def build_manifest(model: LoadedModel, request: ExportRequest, plan: ExportPlan,
                   stored: StoredWeights, results: dict[Format, FormatResult], root: Path,
                   started: float) -> Manifest:
    """The manifest of the written directory, from the writers' results; every file there is
    one that a writer says it wrote."""
    files = file_entries(root)
    claimed = {WEIGHTS, TOKENIZER}.union(*(result.files for result in results.values()))
    if {entry.path for entry in files} != claimed:
        raise GemmaforgeError(f"the writers wrote {sorted(e.path for e in files)} but returned "
                              f"{sorted(claimed)}; this is a gemmaforge bug")
    recipe = request.recipe
    tools = dict.fromkeys(TOOLS + sum((result.tools for result in results.values()), ()))
    timings = {str(fmt): dict(result.timings) for fmt, result in results.items()
               if result.timings}
    return Manifest(
        preset=model.config.name, config=config_to_dict(plan.traced),
        weights_source=model.source, recipe="f32" if recipe is None else recipe.name,
        precision="float32" if recipe is None else f"quantized {recipe.name}",
        max_len=plan.options.max_len, buckets=tuple(plan.options.buckets),
        fused=plan.options.fused, tokenizer=plan.tokenizer,
        formats={str(fmt): result.section for fmt, result in results.items()},
        quantization=stored.quantization, tools=tool_versions(*tools), files=files,
        timings={"export_seconds": round(time.perf_counter() - started, 2), **timings})
