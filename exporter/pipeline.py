"""`export`: a loaded model to an artifact directory, one writer per format."""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
from jax.sharding import Mesh

import quantize
from exporter import litert_quant
from exporter.artifact import (
    FORMAT_VERSION,
    TOKENIZER,
    WEIGHTS,
    atomic_directory,
    check_out,
    file_entries,
    tool_versions,
    write_manifest,
)
from exporter.litert import DIRECTORY as LITERT_DIRECTORY
from exporter.litert import TFLITE, write_litertlm, write_task, write_tflite
from exporter.onnx_export import write_onnx
from exporter.onnx_fused import PROFILES
from exporter.onnx_quant import ACCURACY_LEVELS
from exporter.stablehlo import write_stablehlo
from exporter.tflite_inspect import describe
from exporter.trace import resolve_options
from model_zoo.checkpoints.native import weight_specs, write_safetensors
from model_zoo.config import config_to_dict
from model_zoo.errors import GemmaforgeError
from model_zoo.loading import LoadedModel
from model_zoo.spm import GemmaTokenizer

FORMATS = ("stablehlo", "onnx", "litert")
FLOAT_FOR_LITERT = ".litert-float.safetensors"  # the dequantized weights the converter reads


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    for name in formats:
        if name not in FORMATS:
            raise GemmaforgeError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    if not formats:
        raise GemmaforgeError("--to needs at least one format")
    return formats


def tokenizer_entry(model: LoadedModel, root: Path) -> dict:
    """Writes the tokenizer beside the model as a SentencePiece model (the byte tokenizer of
    test models has an exact SentencePiece twin) and describes it for the manifest."""
    tokenizer = model.tokenizer
    if isinstance(tokenizer, GemmaTokenizer):
        kind, proto = "sentencepiece", tokenizer.model_proto
    else:
        kind, proto = "bytes", tokenizer.sentencepiece_model(model.config.vocab_size)
    (root / TOKENIZER).write_bytes(proto)
    return {"kind": kind, "file": TOKENIZER, "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id, "stop_ids": list(tokenizer.stop_ids),
            "vocab_size": tokenizer.vocab_size}


def export(model: LoadedModel, out: str | os.PathLike, *, formats: tuple[str, ...] = FORMATS,
           max_len: int | None = None, buckets: tuple[int, ...] | None = None,
           platforms: tuple[str, ...] = ("cpu",), mesh: Mesh | None = None,
           fused: bool = True, symbolic_prefill: bool = True, task: bool = False,
           onnx_profile: str = "ort", quant: str | None = None, onnx_accuracy_level: int = 0,
           force: bool = False) -> dict:
    """Writes `out` (atomically) and returns its manifest. Validation is a separate step:
    `runtimes.validate.validate_artifact(out)`. `task` adds a MediaPipe .task bundle to the
    LiteRT files; `onnx_profile` picks the ONNX ops ("ort": ONNX Runtime's fused contrib ops,
    "standard": standard opset-23 ops only). `quant` names a recipe (or a recipe file): the
    weights are quantized once and every program runs those numbers; `onnx_accuracy_level`
    (0 or 4) is MatMulNBits' for a quantized ONNX model (see exporter.onnx_quant).

    The manifest records `"validation": {"status": "not run"}` until validation rewrites it,
    and keeps everything that varies from run to run in its `timings` section: the same model,
    options and tool versions give the same bytes in every other file and field."""
    for name in formats:
        if name not in FORMATS:
            raise GemmaforgeError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    if task and "litert" not in formats:
        raise GemmaforgeError("--task bundles the LiteRT model: add litert to --to")
    if onnx_profile not in PROFILES:
        raise GemmaforgeError(f"unknown --onnx-profile {onnx_profile!r}; profiles: "
                              f"{', '.join(PROFILES)}")
    check_out(out, force=force)  # before any slow work; atomic_directory checks again
    recipe = quantize.get_recipe(quant) if quant is not None else None
    # The programs run under the recipe's activation rounding (ModelConfig.activation_quant).
    config = model.config if recipe is None else quantize.model_config(model.config, recipe)
    if onnx_accuracy_level not in ACCURACY_LEVELS:
        raise GemmaforgeError(f"--onnx-accuracy-level must be 0 (float32 activations) or 4 "
                              f"(int8 activations), got {onnx_accuracy_level}")
    if onnx_accuracy_level and (recipe is None or "onnx" not in formats):
        raise GemmaforgeError("--onnx-accuracy-level applies to quantized ONNX models: add "
                              "--quant and onnx to --to, or drop it")
    if recipe is not None and mesh is not None:
        raise GemmaforgeError("--quant exports unsharded weights: drop --mesh")
    sources = (quantize.read_sources(recipe, model.checkpoint, model.config)
               if recipe is not None else None)
    if recipe is not None and "litert" in formats:
        # Before anything is written: the recipe's grids must be ones LiteRT holds.
        litert_quant.check_recipe({name: recipe.spec_for(name, tuple(shape)).describe()
                                   for name, (shape, _) in weight_specs(model.config).items()})
    options = resolve_options(model.config, max_len, buckets, fused=fused,
                              symbolic_prefill=symbolic_prefill)
    started, timings = time.perf_counter(), {}
    with atomic_directory(out, force=force) as root:
        stored = None
        if recipe is None:
            write_safetensors(root / WEIGHTS, weight_specs(model.config), model.weights())
        else:
            hessians = quantize.calibrate(recipe, model.config, model.params, model.tokenizer)
            quantized = quantize.apply(model.weights(), recipe, hessians, sources)
            del hessians
            flat = quantize.flatten_params(quantize.to_params(quantized))
            write_safetensors(root / WEIGHTS, {n: (a.shape, a.dtype) for n, a in flat.items()},
                              flat.items())
            stored = {n: jax.ShapeDtypeStruct(a.shape, a.dtype) for n, a in flat.items()}
            del flat
        manifest = {
            "format_version": FORMAT_VERSION,
            "preset": model.config.name,
            "config": config_to_dict(config),
            "weights_source": model.source,
            "recipe": "f32" if recipe is None else recipe.name,
            "precision": "float32" if recipe is None else f"quantized {recipe.name}",
            "max_len": options.max_len,
            "buckets": list(options.buckets),
            "fused": options.fused,
            "tokenizer": tokenizer_entry(model, root),
            "formats": {},
        }
        if recipe is not None:
            manifest["quantization"] = {"recipe": recipe.name,
                                        "tensors": quantize.specs_of(quantized, sources)}
            del sources
        if "stablehlo" in formats:
            manifest["formats"]["stablehlo"] = write_stablehlo(
                config, root, options, platforms=platforms, mesh=mesh, weights=stored)
        if "onnx" in formats:
            manifest["formats"]["onnx"] = write_onnx(
                config, root, options, profile=onnx_profile, weights_file=root / WEIGHTS,
                tokenizer_file=root / TOKENIZER, tokenizer=manifest["tokenizer"],
                quantization=manifest.get("quantization"), accuracy_level=onnx_accuracy_level)
        if "litert" in formats:
            directory = root / LITERT_DIRECTORY
            directory.mkdir()
            if recipe is None:
                section = write_tflite(model.config, directory, options, root / WEIGHTS,
                                       fused=options.fused)
            else:
                section = _write_quantized_tflite(model, directory, options, quantized,
                                                  manifest["quantization"]["tensors"],
                                                  root / FLOAT_FOR_LITERT)
            timings["litert"] = section.pop("timings")
            tokenizer = manifest["tokenizer"]
            section["bundle"] = write_litertlm(
                directory, model.config, root / TOKENIZER, bos_id=tokenizer["bos_id"],
                stop_ids=tokenizer["stop_ids"], max_len=options.max_len)
            if task:
                section["task"] = write_task(
                    directory, root / TOKENIZER, vocab_size=model.config.vocab_size,
                    bos_id=tokenizer["bos_id"], stop_ids=tokenizer["stop_ids"])
            manifest["formats"]["litert"] = section
        if recipe is not None:
            del quantized
        tools = ["jax", "jaxlib", "flax", "numpy"]
        if "onnx" in formats:
            tools += ["onnx"]
        if "litert" in formats:
            tools += ["litert-converter", "litert-lm-builder"]
            if recipe is not None:
                tools += ["ai-edge-quantizer"]
        manifest["tools"] = tool_versions(*tools)
        manifest["files"] = file_entries(root)
        manifest["validation"] = {"status": "not run"}
        manifest["timings"] = {"export_seconds": round(time.perf_counter() - started, 2),
                               **timings}
        write_manifest(root, manifest)
    return manifest


def _write_quantized_tflite(model: LoadedModel, directory: Path, options, quantized: dict,
                            tensors: dict, float_file: Path) -> dict:
    """The LiteRT model of a quantized artifact (see exporter.litert_quant): converted from the
    dequantized weights with float activations (`model.config`: the dynamic-range kernels
    round them themselves), then quantized onto the recipe's grids."""
    config = model.config
    quantizes = litert_quant.check_recipe(tensors).scheme is not None
    try:
        write_safetensors(float_file, weight_specs(config),
                          ((name, quantize.dequantize(value)) for name, value in quantized.items()))
        section = write_tflite(config, directory, options, float_file, fused=options.fused,
                               fused_lookup=quantizes)
    finally:
        float_file.unlink(missing_ok=True)
    if quantizes:
        section["quantization"] = litert_quant.quantize_tflite(directory / TFLITE, tensors,
                                                                quantized)
    else:
        section["quantization"] = litert_quant.FLOAT_HOLDER
    section["signatures"] = describe(directory / TFLITE)["signatures"]
    return section
