"""ONNX artifacts: our jaxpr -> ONNX writer, both profiles, on every tiny family, run by
onnxruntime and onnxruntime-genai against the JAX reference; the fused ops, the
onnxruntime-genai folder, external weights, and the errors of the writer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
from jax import lax

import model_zoo as mz
from exporter import export
from exporter.genai import write_tokenizer_files
from exporter.onnx_export import (
    DATA,
    lower_decoder,
    op_counts,
    save_decoder,
    weight_constants,
)
from exporter.onnx_graph import Context
from exporter.onnx_lower import lower_jaxpr
from exporter.trace import resolve_options
from model_zoo.checkpoints.native import save_params
from model_zoo.errors import GemmaforgeError
from runtimes.artifact import open_artifact
from runtimes.base import generate
from runtimes.registry import make_runner
from runtimes.tolerances import ONNX_FLOAT32
from runtimes.validation import validate_artifact
from tests.conftest import TINY_PRESETS

PROFILES = ("ort", "standard")
MAX_LEN = 64


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory, tiny_params):
    made = {}

    def get(name: str, profile: str):
        if (name, profile) not in made:
            model = mz.LoadedModel(mz.get_preset(name), tiny_params(name), mz.ByteTokenizer(),
                                   "random weights (seed 0)", True)
            out = tmp_path_factory.mktemp("onnx") / f"{name}-{profile}"
            export(model, out, formats=("onnx",), max_len=MAX_LEN, onnx_profile=profile)
            made[name, profile] = out
        return made[name, profile]

    return get


def _nodes(root, op_type: str) -> list[onnx.NodeProto]:
    model = onnx.load(str(root / "onnx" / "model.onnx"), load_external_data=False)
    return [node for node in model.graph.node if node.op_type == op_type]


def _attribute(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _ops(root) -> dict[str, int]:
    """The op counts of the saved model, read back from disk."""
    model = onnx.load(str(root / "onnx" / "model.onnx"), load_external_data=False)
    return op_counts(list(model.graph.node))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", TINY_PRESETS)
def test_both_runtimes_match_the_reference(name, profile, onnx_artifact):
    """Prefill and 16 decode steps (past the tiny sliding windows of 8), every prompt."""
    report = validate_artifact(onnx_artifact(name, profile), ["onnxruntime", "ort-genai"])
    assert report["passed"], json.dumps(report["runtimes"], indent=1)[:3000]
    for runtime in report["runtimes"].values():
        for prompt in runtime["prompts"].values():
            for part in ("prefill", "decode"):
                assert prompt[part]["max_abs_error"] <= ONNX_FLOAT32
                assert prompt[part]["top1_agreement"] == prompt[part]["positions"]
    window = mz.get_preset(name).sliding_window
    long = report["runtimes"]["onnxruntime"]["prompts"]["long"]["prompt_tokens"]
    assert window is None or long > window


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_the_ort_profile_carries_the_fused_contrib_ops(name, onnx_artifact):
    config = mz.get_preset(name)
    ops = _ops(onnx_artifact(name, "ort"))
    assert ops["com.microsoft.GroupQueryAttention"] == config.num_layers
    norms = (ops.get("SimplifiedLayerNormalization", 0)
             + ops.get("com.microsoft.SkipSimplifiedLayerNormalization", 0))
    per_layer = 2 + config.use_post_attn_norm + config.use_post_ffw_norm
    qk = 2 if config.use_qk_norm else 0
    assert norms == config.num_layers * (per_layer + qk) + 1
    assert ops["com.microsoft.SkipSimplifiedLayerNormalization"] >= config.num_layers
    for plain in ("Softmax", "ScatterND", "RMSNormalization", "Attention", "Sin", "Cos",
                  "RotaryEmbedding", "com.microsoft.RotaryEmbedding"):
        assert plain not in ops
    # Rotary fused into attention; each layer's window and soft-cap carried over.
    for layer, node in enumerate(_nodes(onnx_artifact(name, "ort"), "GroupQueryAttention")):
        assert _attribute(node, "do_rotary") == 1
        window = config.layer(layer).window
        assert _attribute(node, "local_window_size") == (window if window else -1)
        if config.attn_logit_softcap:
            assert _attribute(node, "softcap") == pytest.approx(config.attn_logit_softcap)
    manifest = open_artifact(onnx_artifact(name, "ort")).manifest
    assert manifest["formats"]["onnx"]["ops"] == dict(sorted(ops.items()))


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_the_standard_profile_uses_standard_ops_only(name, onnx_artifact):
    root = onnx_artifact(name, "standard")
    config = mz.get_preset(name)
    ops = _ops(root)
    assert ops["Attention"] == config.num_layers
    assert ops["RotaryEmbedding"] == 2 * config.num_layers
    assert ops["RMSNormalization"] >= 2 * config.num_layers + 1
    assert not [op for op in ops if "." in op], ops
    assert not {"Softmax", "ScatterND", "Sin", "Cos"} & set(ops)
    onnx.checker.check_model(str(root / "onnx" / "model.onnx"), full_check=True)


@pytest.mark.parametrize("profile", PROFILES)
def test_genai_config_names_the_graph_io(profile, onnx_artifact):
    root = onnx_artifact("tiny-gemma2", profile)
    genai = json.loads((root / "onnx" / "genai_config.json").read_text())
    model = onnx.load(str(root / "onnx" / "model.onnx"), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    decoder = genai["model"]["decoder"]
    assert genai["model"]["type"] == "gemma2"
    assert genai["model"]["context_length"] == genai["search"]["max_length"] == MAX_LEN
    assert genai["search"]["past_present_share_buffer"] == (profile == "ort")
    for key in ("input_ids", "attention_mask", "position_ids"):
        assert decoder["inputs"][key] in inputs
    assert decoder["outputs"]["logits"] == outputs[0] == "logits"
    layers = decoder["num_hidden_layers"]
    assert inputs[3:] == [decoder["inputs"][f"past_{kind}_names"] % i for i in range(layers)
                          for kind in ("key", "value")]
    assert outputs[1:] == [decoder["outputs"][f"present_{kind}_names"] % i
                           for i in range(layers) for kind in ("key", "value")]
    cache = model.graph.input[3].type.tensor_type.shape.dim
    assert (cache[2].dim_value == MAX_LEN) == (profile == "ort")
    config = mz.get_preset("tiny-gemma2")
    assert (decoder["head_size"], decoder["num_key_value_heads"]) == (config.head_dim,
                                                                      config.num_kv_heads)
    assert genai["model"]["eos_token_id"] == list(mz.ByteTokenizer().stop_ids)


def test_genai_generator_picks_the_reference_greedy_tokens(onnx_artifact):
    artifact = open_artifact(onnx_artifact("tiny-gemma3", "ort"))
    prompt = [2, *range(40, 52)]
    reference = generate(make_runner("jax", artifact), prompt, 20).generated_ids
    assert make_runner("ort-genai", artifact).greedy(prompt, 20) == reference


def test_large_weights_point_into_the_weights_file(tmp_path, tiny_params):
    """Above the size limit the initializers point at their bytes in weights.safetensors,
    linked into the folder, not written a second time; the logits do not change."""
    import onnxruntime as ort

    config = mz.get_preset("tiny-gemma3")
    weights = tmp_path / "weights.safetensors"
    save_params(weights, tiny_params("tiny-gemma3"))
    graph = lower_decoder(config, resolve_options(config, MAX_LEN),
                          weight_constants(weights, config), "ort")
    outputs = {}
    for label, limit in (("inline", 2**40), ("external", 0)):
        folder = tmp_path / label
        folder.mkdir()
        section = save_decoder(graph, folder, weights, external_bytes=limit)
        assert ("external_data" in section) == (label == "external")
        session = ort.InferenceSession(str(folder / "model.onnx"))
        feeds = {"input_ids": np.array([[2, 70, 71, 72]], np.int64),
                 "attention_mask": np.ones((1, 4), np.int64),
                 "position_ids": np.arange(4, dtype=np.int64)[None]}
        for value in session.get_inputs()[3:]:
            feeds[value.name] = np.zeros((1, config.num_kv_heads, MAX_LEN, config.head_dim),
                                         np.float32)
        outputs[label] = session.run(["logits"], feeds)[0]
    assert os.stat(tmp_path / "external" / DATA).st_ino == os.stat(weights).st_ino
    assert (tmp_path / "external" / "model.onnx").stat().st_size < weights.stat().st_size / 4
    np.testing.assert_array_equal(outputs["inline"], outputs["external"])


def test_genai_tokenizer_gives_sentencepiece_ids(tmp_path, onnx_artifact):
    """The real Gemma 3 vocabulary in a genai folder: onnxruntime-genai's tokenizer (with
    special tokens on, i.e. BOS) gives our ids and decodes them back, whitespace runs,
    markup and byte fallback included. Hugging Face `tokenizers` reads the same file; it
    numbers added tokens by content, so the whitespace-run pieces (written as the spaces they
    stand for, which onnxruntime-genai needs) are compared on text without such runs."""
    import shutil

    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    from model_zoo.loading import load

    tokenizer = load("gemma3-270m", materialize=False).tokenizer
    folder = tmp_path / "onnx"
    shutil.copytree(onnx_artifact("tiny-gemma3", "ort") / "onnx", folder)
    write_tokenizer_files(folder, tokenizer.model_proto, max_len=1024)
    genai = og.Tokenizer(og.Model(str(folder)))
    genai.update_options(add_special_tokens="true")
    texts = ["The capital of France is", "  two  spaces,\n\nnewlines\tand a tab 12345",
             "<start_of_turn>user\nhi<end_of_turn>\n", "naïve café 日本語 🙂", "x" * 40]
    for text in texts:
        ids = tokenizer.encode(text)
        assert genai.encode(text).tolist() == ids, text
        assert genai.decode(np.asarray(ids[1:], np.int32)) == text
    converted = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in texts[0], texts[2], texts[3], texts[4]:
        assert converted.encode(text).ids == tokenizer.encode(text), text
        assert converted.decode(tokenizer.encode(text)[1:]) == text


def _lower(fn, *args):
    closed = jax.make_jaxpr(fn)(*args)
    ctx = Context("ort", {}, "positions")
    return lower_jaxpr(closed, [f"in{i}" for i in range(len(args))], ctx)


def test_an_unsupported_primitive_is_named_with_its_source():
    with pytest.raises(GemmaforgeError, match=r"primitive 'cumsum' \(from .*test_onnx.py"):
        _lower(lambda x: jnp.cumsum(x), jnp.ones(4))


def test_an_unknown_composite_is_named_with_its_source():
    unknown = lax.composite(lambda x: x * 2, name="acme.double")

    def model(x):
        return unknown(x + 1)

    with pytest.raises(GemmaforgeError, match=r"composite 'acme.double' \(from .*test_onnx"):
        _lower(model, jnp.ones(4))


def test_bad_profile_and_existing_directory_are_refused(tmp_path, tiny_params):
    model = mz.LoadedModel(mz.get_preset("tiny-gemma1"), tiny_params("tiny-gemma1"),
                           mz.ByteTokenizer(), "random weights (seed 0)", True)
    with pytest.raises(GemmaforgeError, match="unknown --onnx-profile 'tflite'; profiles: ort"):
        export(model, tmp_path / "out", formats=("onnx",), onnx_profile="tflite")
    assert not list(tmp_path.iterdir())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text('{"format_version": 1}')
    with pytest.raises(GemmaforgeError, match="already exists.*--force"):
        export(model, tmp_path / "out", formats=("onnx",), max_len=MAX_LEN)
    export(model, tmp_path / "out", formats=("onnx",), max_len=MAX_LEN, force=True)
    assert (tmp_path / "out" / "onnx" / "model.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_same_model_exports_the_same_bytes(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma2")
    weights = tmp_path / "weights.safetensors"
    save_params(weights, tiny_params("tiny-gemma2"))
    written = []
    for run in range(2):
        folder = tmp_path / str(run)
        folder.mkdir()
        graph = lower_decoder(config, resolve_options(config, MAX_LEN),
                              weight_constants(weights, config), "ort")
        save_decoder(graph, folder, weights)
        written.append((folder / "model.onnx").read_bytes())
    assert written[0] == written[1]
