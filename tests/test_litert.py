"""LiteRT artifacts: the .tflite signatures and tensor names LiteRT-LM reads, the fused ops, the
.litertlm bundle, and the litert and litert-lm runtimes against the JAX reference."""

import json
import os

import jax
import numpy as np
import pytest

import model_zoo as mz
from exporter import export, read_manifest
from exporter.tflite_inspect import describe
from runtimes.artifact import open_artifact
from runtimes.base import generate
from runtimes.registry import make_runner
from runtimes.tolerances import XNNPACK_FLOAT32
from runtimes.validation import validate_artifact
from tests.conftest import TINY_PRESETS, expected_composites


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tflite_signatures_names_and_shapes(name, tiny_artifact):
    root = tiny_artifact(name)
    config = mz.get_preset(name)
    structure = describe(root / "litert" / "model.tflite")
    signatures = structure["signatures"]
    assert set(signatures) == {"prefill_8", "prefill_32", "decode"}
    kv = {"shape": [1, config.num_kv_heads, 128, config.head_dim], "dtype": "float32"}
    cache_names = {f"kv_cache_{c}_{i}" for i in range(config.num_layers) for c in "kv"}
    for signature, tokens in (("prefill_8", 8), ("prefill_32", 32), ("decode", 1)):
        inputs, outputs = signatures[signature]["inputs"], signatures[signature]["outputs"]
        assert set(inputs) == {"tokens", "input_pos", *cache_names}
        assert inputs["tokens"] == {"shape": [1, tokens], "dtype": "int32"}
        assert inputs["input_pos"] == {"shape": [tokens], "dtype": "int32"}
        assert all(inputs[n] == kv and outputs[n] == kv for n in cache_names)
    assert signatures["decode"]["outputs"]["logits"] == {"shape": [1, 1, config.vocab_size],
                                                         "dtype": "float32"}
    assert "logits" not in signatures["prefill_8"]["outputs"]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_tflite_carries_the_fused_ops_and_one_copy_of_the_weights(name, tiny_artifact):
    root = tiny_artifact(name)
    config = mz.get_preset(name)
    signatures = describe(root / "litert" / "model.tflite")["signatures"]
    decode = signatures["decode"]
    assert decode["composites"] == expected_composites(config, logits=True)
    assert signatures["prefill_8"]["composites"] == expected_composites(config, logits=False)
    assert decode["ops"]["STABLEHLO_COMPOSITE"] == sum(decode["composites"].values())
    assert "FULLY_CONNECTED" in decode["ops"]
    weight_bytes = 4 * sum(mz.count_params(config))
    constants = describe(root / "litert" / "model.tflite")["buffer_bytes"]
    assert weight_bytes <= constants < 1.1 * weight_bytes  # three signatures, weights once


def test_plain_ops_switch_leaves_no_composites(tmp_path, tiny_params):
    model = mz.LoadedModel(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"),
                           mz.ByteTokenizer(), "test weights", True)
    export(model, tmp_path / "plain", formats=("litert",), buckets=(8,), fused=False)
    structure = describe(tmp_path / "plain" / "litert" / "model.tflite")
    for signature in structure["signatures"].values():
        assert signature["composites"] == {} and "STABLEHLO_COMPOSITE" not in signature["ops"]
    assert validate_artifact(tmp_path / "plain", ["litert"], decode_steps=4)["passed"]


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_litert_and_litert_lm_match_the_reference(name, tiny_artifact):
    root = tiny_artifact(name)
    report = validate_artifact(root, ["litert", "litert-lm"])
    assert report["passed"], json.dumps(report["runtimes"], indent=1)[:3000]
    for prompt in report["runtimes"]["litert"]["prompts"].values():
        for part in ("prefill", "decode"):
            assert prompt[part]["max_abs_error"] <= XNNPACK_FLOAT32
            assert prompt[part]["top1_agreement"] == prompt[part]["positions"]
    prompts = report["runtimes"]["litert-lm"]["prompts"]
    assert all(p["generation"]["text_identical"] for p in prompts.values())
    assert prompts["long"]["prompt_tokens"] > 32 + 8  # several prefill signatures, past windows
    # the engine's weight cache goes to the gemmaforge cache, not into the artifact
    listed = {entry["path"] for entry in read_manifest(root)["files"]}
    assert {str(p.relative_to(root)) for p in (root / "litert").iterdir()} <= listed


def test_bundle_holds_model_tokenizer_and_metadata(tiny_artifact, tmp_path):
    import io

    import litert_lm_builder

    root = tiny_artifact("tiny-gemma3")
    section = read_manifest(root)["formats"]["litert"]
    assert section["bundle"] == {"file": "litert/model.litertlm", "max_num_tokens": 128,
                                 "start_token": 2, "stop_tokens": [5, 1],
                                 "sampler": "TOP_P k=1 p=1 (greedy)"}
    listing = io.StringIO()
    litert_lm_builder.peek_litertlm_file(str(root / section["bundle"]["file"]), str(tmp_path),
                                         listing)
    files = sorted(os.listdir(tmp_path))
    tflite = next(f for f in files if f.endswith("tf_lite_prefill_decode.tflite"))
    assert (tmp_path / tflite).read_bytes() == (root / "litert" / "model.tflite").read_bytes()
    spiece = next(f for f in files if f.endswith(".spiece"))
    assert (tmp_path / spiece).read_bytes() == (root / "tokenizer.model").read_bytes()
    metadata = (tmp_path / "LlmMetadataProto.pbtext").read_text()
    for fragment in ("max_num_tokens: 128", "ids: 5", "ids: 1", "type: TOP_P", "k: 1",
                     'prefix: "<start_of_turn>user\\n"', "gemma3"):
        assert fragment in metadata, fragment


def _llm_parameters_class():
    """odml.infra.proto.LlmParameters (the fields a .task uses), built with protobuf itself so
    the hand-written encoding is read by a real decoder."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="llm_params_test.proto",
                                               package="odml.infra.proto")
    template = proto.message_type.add(name="PromptTemplate")
    for number, name in ((1, "session_prefix"), (2, "prompt_prefix"), (3, "prompt_suffix")):
        template.field.add(name=name, number=number, type=9, label=1)
    params = proto.message_type.add(name="LlmParameters")
    for number, name, kind, label in ((2, "vocab_size", 5, 1), (4, "start_token_id", 5, 1),
                                      (6, "start_token", 9, 1), (5, "stop_tokens", 9, 3)):
        params.field.add(name=name, number=number, type=kind, label=label)
    params.field.add(name="prompt_template", number=8, type=11, label=1,
                     type_name=".odml.infra.proto.PromptTemplate")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("odml.infra.proto.LlmParameters"))


def test_task_bundle_is_aligned_complete_and_runs_on_the_engine(tmp_path, tiny_params):
    import struct
    import zipfile

    from exporter.litert import TASK_ALIGNMENT

    model = mz.LoadedModel(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"),
                           mz.ByteTokenizer(), "test weights", True)
    root = tmp_path / "art"
    export(model, root, formats=("litert",), buckets=(8, 32), max_len=64, task=True)
    section = read_manifest(root)["formats"]["litert"]
    assert section["task"] == {"file": "litert/model.task", "start_token": "<bos>",
                               "stop_tokens": ["<end_of_turn>", "<eos>"]}
    path = root / section["task"]["file"]
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        assert [i.compress_type for i in archive.infolist()] == [zipfile.ZIP_STORED] * 3
        for info in archive.infolist():
            raw.seek(info.header_offset + 26)
            name_length, extra_length = struct.unpack("<HH", raw.read(4))
            assert (info.header_offset + 30 + name_length + extra_length) % TASK_ALIGNMENT == 0
        assert archive.read("TF_LITE_PREFILL_DECODE") == (root / "litert/model.tflite").read_bytes()
        assert archive.read("TOKENIZER_MODEL") == (root / "tokenizer.model").read_bytes()
        params = _llm_parameters_class().FromString(archive.read("METADATA"))
    assert (params.vocab_size, params.start_token_id, params.start_token) == (512, 2, "<bos>")
    assert list(params.stop_tokens) == ["<end_of_turn>", "<eos>"]
    assert params.prompt_template.prompt_prefix == "<start_of_turn>user\n"
    assert params.prompt_template.prompt_suffix == "<end_of_turn>\n<start_of_turn>model\n"

    report = validate_artifact(root, ["litert-lm-task"], decode_steps=4)
    assert report["passed"], json.dumps(report["runtimes"], indent=1)[:2000]
    prompts = report["runtimes"]["litert-lm-task"]["prompts"]
    assert all(p["generation"]["text_identical"] for p in prompts.values())


def test_the_task_runtime_needs_a_task_bundle(tiny_artifact):
    from runtimes.registry import runtimes_for

    artifact = open_artifact(tiny_artifact("tiny-gemma1"))
    assert "litert-lm-task" not in runtimes_for(artifact)
    with pytest.raises(mz.GemmaforgeError, match="export with --task"):
        make_runner("litert-lm-task", artifact)
    with pytest.raises(mz.GemmaforgeError, match="add litert to --to"):
        export(mz.load_random(mz.get_preset("tiny-gemma1"), materialize=False),
               tiny_artifact("tiny-gemma1").parent / "never", formats=("stablehlo",), task=True)
    assert not (tiny_artifact("tiny-gemma1").parent / "never").exists()


def test_greedy_generation_on_every_runtime_of_a_tiny_model(tiny_artifact):
    from runtimes.text import generate_text

    artifact = open_artifact(tiny_artifact("tiny-gemma2"))
    tokenizer = artifact.tokenizer()
    prompt = tokenizer.encode("LiteRT runs this on phones.")
    expected = generate(make_runner("jax", artifact), prompt, 40).generated_ids
    assert generate(make_runner("litert", artifact, threads=2), prompt, 40).generated_ids \
        == expected
    text = generate_text(make_runner("litert-lm", artifact), tokenizer,
                         "LiteRT runs this on phones.", preset="tiny-gemma2", weights="test",
                         max_new_tokens=40)
    assert text.text == tokenizer.decode(expected).rstrip("\ufffd")


def test_converter_rejection_is_a_clear_error_and_leaves_nothing(tmp_path, tiny_params,
                                                                monkeypatch):
    from litert_converter.mlir._mlir_libs import converter_api_ext

    def reject(*args, **kwargs):
        raise RuntimeError("failed to legalize operation 'stablehlo.weird'")

    monkeypatch.setattr(converter_api_ext, "run_convert_to_tfl_passes", reject)
    model = mz.LoadedModel(mz.get_preset("tiny-gemma1"), tiny_params("tiny-gemma1"),
                           mz.ByteTokenizer(), "test weights", True)
    with pytest.raises(mz.GemmaforgeError,
                       match="litert-converter rejected tiny-gemma1's prefill_8: failed to "
                             "legalize operation 'stablehlo.weird'"):
        export(model, tmp_path / "out", formats=("litert",), buckets=(8,))
    assert os.listdir(tmp_path) == []


def test_lazy_random_weights_export_the_same_model(tmp_path):
    lazy = mz.load("tiny-gemma1", seed=4, materialize=False)
    assert lazy.params is None
    export(lazy, tmp_path / "lazy", formats=("litert",), buckets=(8,))
    eager = mz.load("tiny-gemma1", seed=4)
    weights = open_artifact(tmp_path / "lazy").weights()
    for a, b in zip(jax.tree.leaves(weights), jax.tree.leaves(eager.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert validate_artifact(tmp_path / "lazy", ["litert"], decode_steps=4)["passed"]


def test_the_default_runtime_is_the_engine_of_the_formats_held(tiny_artifact):
    from runtimes.registry import default_runtime

    assert default_runtime(open_artifact(tiny_artifact("tiny-gemma1"))) == "litert-lm"
