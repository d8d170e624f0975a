"""The embedded default, Gemma 3 270M from the package index, end to end in JAX (slow)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
from cli.app import main
from model_zoo.checkpoints.default import DEFAULT_CHECKPOINTS, default_checkpoint, sha256_of
from model_zoo.loading import load
from runtimes import JaxRunner
from runtimes.base import generate
from runtimes.tolerances import REAL_MODEL_FLOAT32
from tests.hf_reference import hf_logits, hf_model, long_prompt_ids, ours_stepwise
from tests.reference_data import REF_PROMPTS, REFS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return load("gemma3-270m")


def test_default_checkpoint_is_the_packaged_file():
    path = default_checkpoint("gemma3-270m")
    assert sha256_of(path) == DEFAULT_CHECKPOINTS["gemma3-270m"].sha256


@pytest.mark.parametrize("name", sorted(REF_PROMPTS))
def test_logits_and_greedy_match_the_reference(model, name):
    ref = np.load(REFS / f"{name}.npz")
    ids = model.tokenizer.encode(REF_PROMPTS[name])
    assert ids == ref["ids"].tolist()

    cache = mz.KVCache.create(model.config, 1, len(ids))
    positions = jnp.arange(len(ids), dtype=jnp.int32)[None]
    logits, _ = mz.apply(model.config, model.params, jnp.asarray([ids]), positions, cache)
    logits = np.asarray(logits[0])
    assert np.abs(logits[-1] - ref["last_logits"]).max() <= REAL_MODEL_FLOAT32
    np.testing.assert_array_equal(logits.argmax(-1), ref["top8"][:, 0])

    result = generate(JaxRunner(model.config, model.params, max_len=128), ids, 32)
    assert result.generated_ids == ref["greedy"].tolist()


def test_a_prompt_past_the_window_agrees_with_hf_transformers(model):
    """~640 tokens: every local layer slides. HF runs the same dequantized weights, full
    sequence in one forward; we prefill in chunks and decode the last tokens one by one."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    ids = long_prompt_ids(model.tokenizer)
    assert len(ids) > model.config.sliding_window + 100
    reference = hf_logits(hf_model(model.config, model.params), ids)[-9:]
    ours = ours_stepwise(model.config, model.params, ids, 8, max_len=1024, chunk_size=128)
    assert np.abs(ours - reference).max() <= REAL_MODEL_FLOAT32
    np.testing.assert_array_equal(ours.argmax(-1), reference.argmax(-1))


def test_cli_generate_prints_the_reference_continuation(model, capsys):
    ref = np.load(REFS / "france.npz")
    with pytest.raises(SystemExit) as stop:
        main(["generate", "gemma3-270m", "--prompt", REF_PROMPTS["france"], "-n", "12",
              "--json"])
    assert stop.value.code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompt_ids"] == ref["ids"].tolist()
    assert result["generated_ids"] == ref["greedy"][:12].tolist()
    assert "gguf" in result["weights"]

    with pytest.raises(SystemExit) as stop:
        main(["generate", "gemma3-270m", "--prompt", "Write a haiku about the sea.", "--chat",
              "-n", "6"])
    out, err = capsys.readouterr()
    assert stop.value.code == 0
    haiku = np.load(REFS / "haiku.npz")
    assert out.strip() == model.tokenizer.decode(haiku["greedy"][:6].tolist()).strip()
    assert "tok/s" in err


def test_stablehlo_artifact_reproduces_the_references(tmp_path_factory, model):
    from exporter import export
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner
    from runtimes.validation import validate_artifact

    out = tmp_path_factory.mktemp("export") / "gemma3-270m"
    export(model, out)
    report = validate_artifact(out, ["stablehlo", "iree"])
    assert report["passed"], report
    artifact = open_artifact(out)
    for runtime in ("stablehlo", "iree"):
        runner = make_runner(runtime, artifact)
        for name, prompt in REF_PROMPTS.items():
            ref = np.load(REFS / f"{name}.npz")
            result = generate(runner, model.tokenizer.encode(prompt), 32)
            assert result.generated_ids == ref["greedy"].tolist(), (runtime, name)
        del runner


def test_litert_artifact_reproduces_the_references(tmp_path_factory, model):
    from exporter import export
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner
    from runtimes.validation import validate_artifact

    out = tmp_path_factory.mktemp("export") / "gemma3-270m-litert"
    export(model, out, formats=("litert",), task=True)
    report = validate_artifact(out, ["litert", "litert-lm", "litert-lm-task"])
    assert report["passed"], report
    artifact = open_artifact(out)
    tflite = make_runner("litert", artifact)
    engines = [make_runner("litert-lm", artifact), make_runner("litert-lm-task", artifact)]
    for name, prompt in REF_PROMPTS.items():
        ref = np.load(REFS / f"{name}.npz")
        ids = model.tokenizer.encode(prompt)
        assert generate(tflite, ids, 32).generated_ids == ref["greedy"].tolist(), name
        # The engine adds BOS itself and stops at <end_of_turn>; compare the text it printed.
        greedy = ref["greedy"].tolist()
        stop = next((i for i, t in enumerate(greedy) if t in model.tokenizer.stop_ids),
                    len(greedy))
        for engine in engines:
            assert engine.generate_text(prompt, 32).text == model.tokenizer.decode(greedy[:stop]), \
                (engine.name, name)


def test_onnx_artifact_reproduces_the_references(tmp_path_factory, model):
    """gemma3-270m with the ort profile: both runtimes match the reference's logits and its
    greedy continuations; onnxruntime-genai's own greedy search and its tokenizer agree."""
    from exporter import export
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner
    from runtimes.validation import validate_artifact

    out = tmp_path_factory.mktemp("export") / "gemma3-270m-onnx"
    export(model, out, formats=("onnx",))
    report = validate_artifact(out, ["onnxruntime", "ort-genai"])
    assert report["passed"], report
    artifact = open_artifact(out)
    runners = [make_runner("onnxruntime", artifact), make_runner("ort-genai", artifact)]
    for name, prompt in REF_PROMPTS.items():
        ref = np.load(REFS / f"{name}.npz")
        ids = model.tokenizer.encode(prompt)
        for runner in runners:
            assert generate(runner, ids, 32).generated_ids == ref["greedy"].tolist(), \
                (runner.name, name)
        # The generator's own search stops after the first stop token.
        greedy = ref["greedy"].tolist()
        stop = next((i + 1 for i, t in enumerate(greedy) if t in model.tokenizer.stop_ids),
                    len(greedy))
        assert runners[1].greedy(ids, 32) == greedy[:stop], name

    import onnxruntime_genai as og

    tokenizer = og.Tokenizer(og.Model(str(out / "onnx")))
    tokenizer.update_options(add_special_tokens="true")
    for prompt in REF_PROMPTS.values():
        assert tokenizer.encode(prompt).tolist() == model.tokenizer.encode(prompt)


# int8-dyn's LiteRT model is dynamic range, as int4's is (and tested on the tiny presets):
# ONNX alone keeps the CI run inside its time.
@pytest.mark.parametrize("recipe, formats", [("int8", ("onnx", "litert")),
                                             ("int8-dyn", ("onnx",)),
                                             ("int4", ("onnx", "litert"))])
def test_quantized_artifacts_match_the_quantized_reference(tmp_path_factory, model, recipe,
                                                           formats):
    """One quantization of gemma3-270m lowered to ONNX (MatMulNBits and GatherBlockQuantized;
    int8-dyn: MatMulInteger) and LiteRT (int8: weight-only; int4: dynamic range):
    every runtime against the quantized JAX reference, logits within the recipe's tolerance
    and every top-1 equal, or, where activations are rounded, within the activation-rounding
    tolerance (a text runner then follows the same file's logits runner)."""
    from exporter import export
    from runtimes.validation import validate_artifact

    out = tmp_path_factory.mktemp("export") / f"gemma3-270m-{recipe}"
    export(model, out, formats=formats, quant=recipe)
    runtimes = ["onnxruntime", "ort-genai"] + (["litert", "litert-lm"] if "litert" in formats
                                               else [])
    report = validate_artifact(out, runtimes)
    assert report["passed"], report


def test_source_recipe_carries_the_files_grids_and_is_the_float32_model(tmp_path_factory,
                                                                        model):
    """`source` on the real Q4_K_M file: every ONNX weight read back is the file's own
    dequantization (the float32 model), and the artifact reproduces the float32 references'
    logits and greedy continuations with weight-only execution (accuracy level 0)."""
    from exporter import export
    from model_zoo.layers import IN_AXES
    from model_zoo.tree import flatten, path_name
    from quantize.spec import to_matrix
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner
    from runtimes.validation import validate_artifact
    from tests.quantized_data import onnx_initializers
    from tests.test_source import ZERO_POINT_ULPS, _onnx_weight

    out = tmp_path_factory.mktemp("export") / "gemma3-270m-source"
    manifest = export(model, out, formats=("onnx",), quant="source")
    tensors = manifest["quantization"]["tensors"]
    assert all(spec["exact"] for spec in tensors.values())
    assert {spec["source"] for spec in tensors.values()} == {"F32", "Q8_0", "Q5_0", "Q4_K",
                                                             "Q6_K"}
    stored, _ = onnx_initializers(out)
    for path, value in flatten(model.params):
        name = path_name(path)
        if "bits" not in tensors[name]:
            continue
        matrix = to_matrix(np.asarray(value), IN_AXES[path[-1]])
        bound = (ZERO_POINT_ULPS * np.spacing(np.abs(matrix).max())
                 if tensors[name].get("zero_point") == "float" else 0)
        np.testing.assert_allclose(_onnx_weight(stored, name, *matrix.shape), matrix, rtol=0,
                                   atol=bound, err_msg=name)
    report = validate_artifact(out, ["onnxruntime"])
    assert report["passed"], report
    runner = make_runner("onnxruntime", open_artifact(out))
    for name, prompt in REF_PROMPTS.items():
        ref = np.load(REFS / f"{name}.npz")
        ids = model.tokenizer.encode(prompt)
        assert np.abs(runner.prefill(ids) - ref["last_logits"]).max() <= REAL_MODEL_FLOAT32
        assert generate(runner, ids, 32).generated_ids == ref["greedy"].tolist(), name
