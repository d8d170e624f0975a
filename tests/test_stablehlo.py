"""StableHLO artifacts: the manifest, every entry point against the trace, the stablehlo and
iree runtimes against the JAX reference, multi-platform and sharded exports, atomic writes, and
quantized weights carried as integers and dequantized in the programs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export

import model_zoo as mz
import quantize
from exporter import export, read_manifest
from exporter.trace import EntryPoint, empty_cache, entry_function, flat_weights
from model_zoo.checkpoints.default import sha256_of
from model_zoo.checkpoints.native import read_tensors
from model_zoo.lowering import PLAIN
from model_zoo.sharding import make_mesh
from runtimes.artifact import open_artifact
from runtimes.jax_runner import JaxRunner
from runtimes.registry import make_runner
from runtimes.tolerances import SAME_MATH_FLOAT32
from runtimes.validation import validate_artifact
from tests.conftest import TINY_PRESETS, expected_composites


def _model(name, params):
    return mz.LoadedModel(mz.get_preset(name), params, mz.ByteTokenizer(), "test weights", True)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_manifest_describes_the_artifact(name, tiny_artifact):
    root = tiny_artifact(name)
    manifest = read_manifest(root)
    config = mz.get_preset(name)
    section = manifest["formats"]["stablehlo"]
    assert list(section["entry_points"]) == ["prefill_8", "prefill_32", "decode", "prefill"]
    decode = section["entry_points"]["decode"]
    kv_shape = [1, config.num_kv_heads, 128, config.head_dim]
    assert decode["inputs"][:3] == [
        {"name": "tokens", "shape": [1, 1], "dtype": "int32"},
        {"name": "input_pos", "shape": [1], "dtype": "int32"},
        {"name": "kv_cache_k_0", "shape": kv_shape, "dtype": "float32"}]
    assert decode["outputs"][0] == {"name": "logits", "shape": [1, 1, config.vocab_size],
                                    "dtype": "float32"}
    assert len(decode["outputs"]) == 1 + 2 * config.num_layers
    assert section["entry_points"]["prefill"]["inputs"][0]["shape"] == [1, "T"]
    for entry in manifest["files"]:
        assert sha256_of(root / entry["path"]) == entry["sha256"]
    assert {"jax", "jaxlib", "flax", "gemmaforge"} <= set(manifest["tools"])
    assert manifest["config"]["num_layers"] == config.num_layers


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_fixed_shape_entry_points_carry_the_fused_ops(name, tiny_artifact):
    entries = read_manifest(tiny_artifact(name))["formats"]["stablehlo"]["entry_points"]
    config = mz.get_preset(name)
    layers = config.num_layers
    for entry in ("prefill_8", "prefill_32", "decode"):
        fused = entries[entry]["fused_ops"]
        expected = expected_composites(config, logits=entry == "decode")
        assert fused == expected
        text = (tiny_artifact(name) / entries[entry]["mlir"]).read_text()
        # prefill stops at the last layer's cache write: one attention fewer
        attention = layers if entry == "decode" else layers - 1
        assert expected["odml.scaled_dot_product_attention"] == attention
        assert text.count('stablehlo.composite "odml.scaled_dot_product_attention"') == attention
    assert entries["prefill"]["fused_ops"] == {}  # symbolic: composites off


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_every_entry_point_equals_the_trace(name, tiny_artifact, tiny_params):
    root = tiny_artifact(name)
    config, params = mz.get_preset(name), tiny_params(name)
    weights = flat_weights(params)
    rng = np.random.default_rng(0)
    cache = {k: rng.normal(size=v.shape).astype(np.float32)
             for k, v in empty_cache(config, 128).items()}
    entries = read_manifest(root)["formats"]["stablehlo"]["entry_points"]
    cases = [("prefill_8", 8), ("prefill_32", 32), ("decode", 1), ("prefill", 1),
             ("prefill", 5), ("prefill", 17)]
    for entry_name, length in cases:
        info = entries[entry_name]
        exported = jax_export.deserialize(bytearray((root / info["file"]).read_bytes()))
        tokens = jnp.asarray(rng.integers(0, config.vocab_size, (1, length)), jnp.int32)
        start = int(rng.integers(0, 128 - length))
        positions = jnp.arange(start, start + length, dtype=jnp.int32)
        entry = EntryPoint(entry_name, None if info["symbolic"] else length,
                           info["returns_logits"])
        want = jax.jit(entry_function(config, entry, PLAIN))(weights, tokens, positions,
                                                                   cache)
        got = exported.call(weights, tokens, positions, cache)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, atol=SAME_MATH_FLOAT32, rtol=0)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_stablehlo_and_iree_match_the_reference(name, tiny_artifact):
    report = validate_artifact(tiny_artifact(name), ["stablehlo", "iree"])
    assert report["passed"]
    for runtime in ("stablehlo", "iree"):
        for prompt in report["runtimes"][runtime]["prompts"].values():
            for part in ("prefill", "decode"):
                metrics = prompt[part]
                assert metrics["max_abs_error"] <= SAME_MATH_FLOAT32
                assert metrics["top1_agreement"] == metrics["positions"]
    prompts = report["runtimes"]["iree"]["prompts"]
    window = mz.get_preset(name).sliding_window or 8
    assert prompts["long"]["prompt_tokens"] > 32 + 8 > window  # several buckets, past the window
    manifest = read_manifest(tiny_artifact(name))
    assert manifest["validation"]["runtimes"]["iree"]["passed"]
    assert json.loads((tiny_artifact(name) / "report" / "validation.json").read_text())["passed"]


def test_greedy_generation_is_identical_across_runtimes(tiny_artifact):
    from runtimes.base import generate

    artifact = open_artifact(tiny_artifact("tiny-gemma2"))
    prompt = artifact.tokenizer().encode("Tiny models repeat themselves, but identically.")
    outputs = {name: generate(make_runner(name, artifact), prompt, 60).generated_ids
               for name in ("jax", "stablehlo", "iree")}
    assert outputs["stablehlo"] == outputs["jax"] == outputs["iree"]


def test_multi_platform_export_lowers_serializes_and_runs(tmp_path, tiny_params):
    name = "tiny-gemma3"
    out = tmp_path / "multi"
    manifest = export(_model(name, tiny_params(name)), out, platforms=("cpu", "cuda", "tpu"),
                      buckets=(8,), symbolic_prefill=False)
    section = manifest["formats"]["stablehlo"]
    assert section["platforms"] == ["cpu", "cuda", "tpu"]
    exported = jax_export.deserialize(bytearray(
        (out / section["entry_points"]["decode"]["file"]).read_bytes()))
    assert exported.platforms == ("cpu", "cuda", "tpu")
    assert section["entry_points"]["decode"]["fused_ops"] == {}  # composites break multi-platform
    report = validate_artifact(out, ["stablehlo", "iree"], decode_steps=4)
    assert report["passed"]


def test_sharded_export_records_its_shardings_and_runs(tmp_path, tiny_params):
    name = "tiny-gemma1"
    mesh = make_mesh(2, 4)
    out = tmp_path / "sharded"
    manifest = export(_model(name, tiny_params(name)), out, mesh=mesh, buckets=(8,),
                      symbolic_prefill=False)
    section = manifest["formats"]["stablehlo"]
    assert section["mesh"] == {"data": 2, "model": 4}
    assert section["shardings"]["layers.0.attn.q_proj"] == ["data", "model", None]
    assert section["shardings"]["embedder.embedding"] == ["model", "data"]
    assert section["entry_points"]["decode"]["nr_devices"] == 8
    report = validate_artifact(out, ["stablehlo"], decode_steps=4)
    assert report["passed"]
    with pytest.raises(mz.GemmaforgeError, match="sharded export over 8 devices"):
        make_runner("iree", open_artifact(out))


def test_existing_output_is_refused_and_failures_leave_nothing(tmp_path, tiny_params,
                                                               monkeypatch):
    name = "tiny-gemma1"
    model = _model(name, tiny_params(name))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(mz.GemmaforgeError, match="already exists.*--force"):
        export(model, out)
    with pytest.raises(mz.GemmaforgeError, match="replaces only a gemmaforge artifact"):
        export(model, out, force=True)
    (out / "manifest.json").write_text('{"format_version": 1}')  # an (old) artifact: replaceable

    from exporter import WRITERS, Format

    def broken(*args, **kwargs):
        raise RuntimeError("writer failed half way")

    monkeypatch.setitem(WRITERS, Format.STABLEHLO, broken)
    with pytest.raises(RuntimeError, match="half way"):
        export(model, out, force=True)
    assert (out / "keep.txt").read_text() == "mine"  # the old directory is untouched
    assert sorted(os.listdir(tmp_path)) == ["out"]  # and no partial directory is left
    monkeypatch.undo()
    export(model, out, force=True, buckets=(8,), symbolic_prefill=False)
    assert (out / "manifest.json").exists() and not (out / "keep.txt").exists()


def test_changed_files_are_detected(tmp_path, tiny_params):
    name = "tiny-gemma1"
    out = tmp_path / "art"
    export(_model(name, tiny_params(name)), out, buckets=(8,), symbolic_prefill=False)
    with open(out / "weights.safetensors", "ab") as file:
        file.write(b"junk")
    with pytest.raises(mz.GemmaforgeError, match="changed since export"):
        open_artifact(out)


@pytest.mark.parametrize("recipe", ["int8", "int4"])
def test_stablehlo_export_carries_and_runs_the_quantized_numbers(recipe, tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma3")
    params = tiny_params("tiny-gemma3")
    model = mz.LoadedModel(config, params, mz.ByteTokenizer(), "test weights", True)
    out = tmp_path / recipe
    manifest = export(model, out, formats=("stablehlo",), buckets=(8,), quant=recipe)
    assert manifest["recipe"] == recipe and manifest["precision"] == f"quantized {recipe}"
    assert manifest["quantization"]["tensors"]["layers.0.mlp.up_proj"]["bits"] == int(recipe[3])

    # The artifact stores the quantizer's own integers and scales, bit for bit.
    qparams, quantized = quantize.quantize_params(params, recipe)
    stored = read_tensors(out / "weights.safetensors")
    for name, value in quantized.items():
        if isinstance(value, quantize.QuantizedTensor):
            np.testing.assert_array_equal(stored[f"{name}.values"], value.values)
            np.testing.assert_array_equal(stored[f"{name}.scales"], value.scales)
        else:
            np.testing.assert_array_equal(stored[name], value)
    assert (out / "weights.safetensors").stat().st_size < 0.5 * 4 * sum(mz.count_params(config))
    # The programs take the integer tensors and dequantize them.
    decode = (out / "stablehlo" / "decode.mlir").read_text()
    assert "xi8>" in decode and "xf32>" in decode

    # The reference validation holds them to is the quantized model...
    artifact = open_artifact(out)
    tokens = [2, 40, 41, 42]
    reference = make_runner("jax", artifact).prefill(tokens)
    np.testing.assert_array_equal(reference,
                                  JaxRunner(config, qparams, max_len=artifact.max_len)
                                  .prefill(tokens))
    assert not np.allclose(reference, JaxRunner(config, params, max_len=artifact.max_len)
                           .prefill(tokens), atol=1e-4)
    # ...and StableHLO on XLA and on IREE match it.
    report = validate_artifact(out, ["stablehlo", "iree"], decode_steps=4)
    assert report["passed"], report
