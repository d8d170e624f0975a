"""The library API from Python, on tiny presets: `runtimes.generate`, `exporter.export`,
`runtimes.validate`, `runtimes.run` and `runtimes.open_artifact`, each checked against an
independent result (greedy tokens recomputed from scratch, the manifest on disk, the report's
figures); the export request and the manifest reader refuse bad input with one line."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

import exporter
import model_zoo as mz
import runtimes
from exporter import ExportRequest, Format, Manifest, export
from exporter.onnx_fused import PROFILES
from model_zoo.inference import prefill
from runtimes import generate, open_artifact, validate

PRESET = "tiny-gemma3"


def greedy_from_scratch(config, params, prompt_ids: list[int], steps: int) -> list[int]:
    """Greedy tokens, each from a fresh prefill of the whole sequence so far: no cache carried
    from step to step, no runner."""
    ids = list(prompt_ids)
    for _ in range(steps):
        cache = mz.KVCache.create(config, 1, len(ids) + 1)
        logits, _, _ = prefill(config, params, [ids], cache)
        ids.append(int(np.argmax(np.asarray(logits[0]))))
    return ids[len(prompt_ids):]


def test_package_roots_export_the_api():
    for name in ("generate", "validate", "open_artifact", "run", "verify_artifact"):
        assert name in runtimes.__all__ and callable(getattr(runtimes, name))
    for name in ("export", "ExportRequest", "Manifest", "WRITERS"):
        assert name in exporter.__all__
    assert set(exporter.WRITERS) == set(Format)
    assert tuple(exporter.OnnxProfile) == PROFILES  # the request's choices are the writer's


def test_generate_is_the_reference_greedy_continuation(tiny_params):
    config = mz.get_preset(PRESET)
    result = generate(PRESET, "Hello", max_new_tokens=6)
    expected = greedy_from_scratch(config, tiny_params(PRESET), result.prompt_ids, 6)
    assert result.prompt_ids == mz.ByteTokenizer().encode("Hello", add_bos=True)
    assert result.stop_reason == "max_new_tokens"
    assert result.generated_ids == expected
    assert result.text == mz.ByteTokenizer().decode(expected)
    assert result.random_weights and result.weights == "random weights (seed 0)"
    assert result.prefill_tokens_per_second > 0 and result.decode_tokens_per_second > 0


def test_generate_quantizes_once_before_running(tiny_params):
    """`quant` runs the recipe's numbers: the greedy tokens of the quantized tree."""
    import quantize

    config = quantize.model_config(mz.get_preset(PRESET), "int8")
    result = generate(PRESET, "Hello", max_new_tokens=5, quant="int8")
    params, _ = quantize.quantize_params(tiny_params(PRESET), "int8")
    params = quantize.dequantize_params(params)  # the model runs float parameters
    assert result.weights == "random weights (seed 0), quantized int8"
    assert result.generated_ids == greedy_from_scratch(config, params, result.prompt_ids, 5)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "art"
    model = mz.load(PRESET)
    manifest = export(model, out, formats=("stablehlo",), max_len=32, buckets=(8,))
    return out, manifest


def test_export_returns_the_manifest_it_wrote(artifact):
    out, manifest = artifact
    assert isinstance(manifest, Manifest)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert manifest.to_json() == on_disk
    assert exporter.read_manifest(out) == manifest
    assert manifest.buckets == (8,) and manifest.max_len == 32
    assert list(manifest.formats) == ["stablehlo"]
    assert set(manifest.formats["stablehlo"]["entry_points"]) == {"prefill_8", "decode",
                                                                 "prefill"}
    assert {entry.path for entry in manifest.files} >= {"weights.safetensors",
                                                        "stablehlo/decode.jax_exported"}
    assert manifest.validation == {"status": "not run"}


def test_validate_passes_with_figures_and_records_them(artifact, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(artifact[0], out)
    report = validate(out, ["stablehlo"], decode_steps=4)
    assert report["passed"]
    result = report["runtimes"]["stablehlo"]
    assert result["passed"] and set(result["prompts"]) == {"short", "chat", "long"}
    for metrics in result["prompts"].values():
        for part, steps in (("prefill", 1), ("decode", 4)):
            figures = metrics[part]
            assert figures["positions"] == steps and figures["top1_agreement"] == steps
            assert 0 <= figures["max_abs_error"] < 1e-3 * max(1.0, figures["max_abs_logit"])
            assert figures["kl_max"] < 1e-6
    recorded = open_artifact(out).manifest.validation
    assert recorded["status"] == "passed" and recorded["runtimes"]["stablehlo"]["passed"]


def test_run_continues_as_generate_does(artifact):
    """The artifact, exported from the same random weights, continues a prompt with the same
    tokens on StableHLO as `generate` does on the JAX reference."""
    out, _ = artifact
    on_artifact = runtimes.run(out, "Hello", runtime="stablehlo", max_new_tokens=6)
    reference = generate(PRESET, "Hello", max_new_tokens=6, max_len=32)
    assert on_artifact.runtime == "stablehlo"
    assert on_artifact.generated_ids == reference.generated_ids


@pytest.mark.parametrize(("options", "message"), [
    ({"formats": ("onnx", "tflite")}, "unknown format 'tflite'"),
    ({"formats": ()}, "at least one format"),
    ({"formats": ("onnx",), "task": True}, "add litert to --to"),
    ({"onnx_profile": "tflite"}, "unknown --onnx-profile"),
    ({"onnx_accuracy_level": 2, "quant": "int4"}, "must be 0"),
    ({"onnx_accuracy_level": 4}, "applies to quantized ONNX"),
    ({"platforms": ("cpu", "gpu")}, "--platforms takes"),
    ({"quant": "int5"}, "int5"),
])
def test_export_request_refuses_bad_options_in_one_line(tmp_path, options, message):
    with pytest.raises(mz.GemmaforgeError, match=message) as error:
        ExportRequest.create(tmp_path / "out", **options)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_export_request_is_frozen_and_decided_once(tmp_path):
    request = ExportRequest.create(tmp_path / "out", formats=("litert", "onnx", "litert"),
                                   onnx_profile="standard", quant="int4-cal")
    assert request.formats == (Format.LITERT, Format.ONNX)
    assert request.onnx_profile == "standard" and request.recipe.name == "int4-cal"
    assert request.calibrated and not ExportRequest.create(tmp_path, quant="int8").calibrated
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.force = True
    model = mz.load(PRESET)
    with pytest.raises(mz.GemmaforgeError, match="not both"):
        export(model, request, force=True)


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m.update(precision=3), "precision must be a string"),
    (lambda m: m.update(fused="yes"), "fused must be true or false"),
    (lambda m: m.pop("tools"), "'tools' is missing"),
    (lambda m: m["tokenizer"].update(stop_ids="1"), "stop_ids must be a list"),
    (lambda m: m["tokenizer"].update(bos_id=None), "bos_id must be an integer"),
    (lambda m: m.update(quantization={"recipe": "int8", "tensors": []}), "quantization"),
])
def test_manifest_reader_refuses_mistyped_fields(artifact, change, message):
    out, manifest = artifact
    data = json.loads(json.dumps(manifest.to_json()))
    assert Manifest.from_json(data, "m") == manifest
    change(data)
    with pytest.raises(mz.GemmaforgeError, match=message) as error:
        Manifest.from_json(data, "m")
    assert "\n" not in str(error.value)
