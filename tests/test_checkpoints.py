"""Checkpoint readers on files the tests write: GGUF, HF safetensors folders, gemma-library
Orbax trees. Round trips, then every way a file can be wrong."""

import dataclasses

import gguf
import jax
import ml_dtypes
import numpy as np
import pytest

import model_zoo as mz
from model_zoo.checkpoints.formats import CheckpointFormat, detect_format
from model_zoo.checkpoints.gguf_reader import GGUFCheckpoint
from model_zoo.checkpoints.orbax_reader import read_orbax
from model_zoo.checkpoints.safetensors_reader import read_safetensors, safetensors_files
from model_zoo.loading import load
from tests.conftest import TINY_PRESETS
from tests.writers import (
    gemma_lib_tree,
    numpy_params,
    write_gguf,
    write_hf_folder,
    write_orbax,
)


def assert_trees_equal(got, want):
    got, want = numpy_params(got), numpy_params(want)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)


# --- GGUF -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY_PRESETS)
@pytest.mark.parametrize("qtype_name", ["Q8_0", "Q5_0", "F16"])
def test_gguf_round_trip(tmp_path, name, qtype_name, tiny_params):
    config = mz.get_preset(name)
    path = tmp_path / "model.gguf"
    expected = write_gguf(path, config, tiny_params(name),
                          qtype=gguf.GGMLQuantizationType[qtype_name])
    assert_trees_equal(GGUFCheckpoint(path).params(config), expected)


def test_gguf_model_generates_through_load(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma3")
    path = tmp_path / "model.gguf"
    write_gguf(path, config, tiny_params("tiny-gemma3"))
    model = load("tiny-gemma3", checkpoint=path)
    assert not model.random_weights
    assert model.tokenizer.encode("ab ba")[0] == 2
    assert model.tokenizer.decode(model.tokenizer.encode("hello world", add_bos=False)) == \
        "hello world"


def test_gguf_for_another_model_is_refused(tmp_path, tiny_params):
    path = tmp_path / "model.gguf"
    write_gguf(path, mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"))
    with pytest.raises(mz.GemmaforgeError, match="does not match preset tiny-gemma3"):
        GGUFCheckpoint(path).params(mz.get_preset("tiny-gemma3"))
    wide = dataclasses.replace(mz.get_preset("tiny-gemma2"), embed_dim=128, name="wide")
    with pytest.raises(mz.GemmaforgeError, match="embedding_length is 64 in the file, 128"):
        GGUFCheckpoint(path).params(wide)


def test_gguf_missing_and_extra_tensors_are_named(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma1")
    path = tmp_path / "missing.gguf"
    write_gguf(path, config, tiny_params("tiny-gemma1"), skip=("blk.1.ffn_up.weight",))
    with pytest.raises(mz.GemmaforgeError, match=r"lacks 1 tensor.*layers\.1\.mlp\.up_proj"):
        GGUFCheckpoint(path).params(config)
    path = tmp_path / "extra.gguf"
    write_gguf(path, config, tiny_params("tiny-gemma1"),
               extra={"blk.0.attn_sinks.weight": np.ones((4, 32), np.float32)})
    with pytest.raises(mz.GemmaforgeError, match="blk.0.attn_sinks.weight"):
        GGUFCheckpoint(path).params(config)


def test_gguf_misshaped_tensor_names_both_shapes(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma1")
    params = numpy_params(tiny_params("tiny-gemma1"))
    path = tmp_path / "bad.gguf"
    write_gguf(path, config, params, skip=("blk.0.ffn_down.weight",),
               extra={"blk.0.ffn_down.weight": np.ones((64, 96), np.float32)})
    with pytest.raises(mz.GemmaforgeError,
                       match=r"blk.0.ffn_down.weight has shape \[64, 96\].*expects \[64, 128\]"):
        GGUFCheckpoint(path).params(config)


def test_truncated_and_foreign_files_are_refused(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma2")
    path = tmp_path / "model.gguf"
    write_gguf(path, config, tiny_params("tiny-gemma2"))
    data = path.read_bytes()
    for cut in (10, 200, len(data) // 2, len(data) - 1):
        truncated = tmp_path / f"cut{cut}.gguf"
        truncated.write_bytes(data[:cut])
        with pytest.raises(mz.GemmaforgeError, match="truncated"):
            GGUFCheckpoint(truncated).params(config)
    other = tmp_path / "llama.gguf"
    write_gguf(other, config, tiny_params("tiny-gemma2"), arch="llama")
    with pytest.raises(mz.GemmaforgeError, match="holds a 'llama' model"):
        GGUFCheckpoint(other)


# --- Hugging Face safetensors ----------------------------------------------------------------

@pytest.mark.parametrize("name", TINY_PRESETS)
def test_hf_folder_round_trip_without_a_preset(tmp_path, name, tiny_params):
    write_hf_folder(tmp_path / "hf", mz.get_preset(name), tiny_params(name), files=3)
    model = load(checkpoint=tmp_path / "hf")  # the config comes from config.json
    assert dataclasses.replace(model.config, name=name) == mz.get_preset(name)
    assert_trees_equal(model.params, tiny_params(name))
    assert model.tokenizer.vocab_size == 512


def test_hf_bfloat16_and_multimodal_prefix(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma3")
    vision = {"vision_tower.vision_model.embeddings.patch_embedding.weight":
              np.ones((8, 3, 2, 2), np.float32)}
    write_hf_folder(tmp_path / "mm", config, tiny_params("tiny-gemma3"), files=1,
                    dtype=ml_dtypes.bfloat16, prefix="language_model.model.", extra=vision)
    params = read_safetensors(safetensors_files(tmp_path / "mm"), config, "mm")
    rounded = jax.tree.map(
        lambda x: np.asarray(x).astype(ml_dtypes.bfloat16).astype(np.float32),
        numpy_params(tiny_params("tiny-gemma3")))
    assert_trees_equal(params, rounded)


def test_hf_folder_errors(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma2")
    params = tiny_params("tiny-gemma2")
    write_hf_folder(tmp_path / "missing", config, params,
                    skip=("model.layers.3.mlp.down_proj.weight",))
    with pytest.raises(mz.GemmaforgeError, match=r"lacks 1 tensor.*layers\.3\.mlp\.down_proj"):
        load("tiny-gemma2", checkpoint=tmp_path / "missing")
    write_hf_folder(tmp_path / "extra", config, params,
                    extra={"model.layers.0.self_attn.rotary.weight": np.ones(4, np.float32)})
    with pytest.raises(mz.GemmaforgeError, match="rotary"):
        read_safetensors(safetensors_files(tmp_path / "extra"), config, "x")
    bad = {"model.layers.0.mlp.gate_proj.weight": np.ones((100, 64), np.float32)}
    write_hf_folder(tmp_path / "shape", config, params, extra=bad)
    with pytest.raises(mz.GemmaforgeError, match=r"gate_proj.weight has shape \[100, 64\].*"
                                                 r"expects \[128, 64\]"):
        read_safetensors(safetensors_files(tmp_path / "shape"), config, "x")
    write_hf_folder(tmp_path / "other", config, params)
    with pytest.raises(mz.GemmaforgeError, match="does not match preset tiny-gemma3"):
        load("tiny-gemma3", checkpoint=tmp_path / "other")


def test_pickle_checkpoints_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "pt").mkdir()
    torch.save({"w": torch.ones(2)}, tmp_path / "pt" / "pytorch_model.bin")
    (tmp_path / "pt" / "config.json").write_text("{}")
    with pytest.raises(mz.GemmaforgeError, match="pickle"):
        safetensors_files(tmp_path / "pt")
    with pytest.raises(mz.GemmaforgeError, match="pickle"):
        detect_format(tmp_path / "pt" / "pytorch_model.bin")
    renamed = tmp_path / "weights.safetensors"
    renamed.write_bytes((tmp_path / "pt" / "pytorch_model.bin").read_bytes())
    with pytest.raises(mz.GemmaforgeError, match="pickle"):
        detect_format(renamed)


def test_format_detection(tmp_path):
    with pytest.raises(mz.GemmaforgeError, match="does not exist"):
        detect_format(tmp_path / "nothing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(mz.GemmaforgeError, match="neither a Hugging Face folder"):
        detect_format(tmp_path / "empty")
    (tmp_path / "a.gguf").write_bytes(b"GGUF")
    assert detect_format(tmp_path / "a.gguf") is CheckpointFormat.GGUF


# --- gemma library / Orbax ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3"])
@pytest.mark.parametrize("transpose_gating", [True, False])
def test_orbax_round_trip(tmp_path, name, transpose_gating, tiny_params):
    config = mz.get_preset(name)
    tree = gemma_lib_tree(config, tiny_params(name), transpose_gating=transpose_gating)
    write_orbax(tmp_path / "ckpt", tree)
    assert detect_format(tmp_path / "ckpt") is CheckpointFormat.ORBAX
    assert_trees_equal(read_orbax(tmp_path / "ckpt", config), tiny_params(name))


def test_orbax_nested_layout_multi_head_and_vision_params(tmp_path):
    config = dataclasses.replace(mz.get_preset("tiny-gemma3"), num_kv_heads=4, name="mha")
    params = mz.init_params(config, seed=3)
    flat = gemma_lib_tree(config, params)
    assert any("qkv_einsum" in key for key in flat)
    nested: dict = {}
    for key, leaf in flat.items():
        node = nested
        parts = key.removeprefix("transformer/").split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = leaf["w"] if key.endswith("einsum") and "w" in leaf else leaf
    nested["SigLiPFromPatches_0"] = {"patch": {"w": np.ones((2, 2), np.float32)}}
    write_orbax(tmp_path / "nested", nested)
    assert_trees_equal(read_orbax(tmp_path / "nested", config), params)


def test_orbax_misshaped_tensor(tmp_path, tiny_params):
    config = mz.get_preset("tiny-gemma2")
    tree = gemma_lib_tree(config, tiny_params("tiny-gemma2"))
    tree["transformer/layer_1/attn/attn_vec_einsum"] = {"w": np.ones((4, 16, 32), np.float32)}
    write_orbax(tmp_path / "bad", tree)
    message = r"layer_1/attn/attn_vec_einsum has shape \[4, 16, 32\].*\[4, 16, 64\]"
    with pytest.raises(mz.GemmaforgeError, match=message):
        read_orbax(tmp_path / "bad", config)
