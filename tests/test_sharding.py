"""Sharding on a 2x4 (data, model) mesh of virtual CPU devices gives the single-device numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import model_zoo as mz
from model_zoo import inference, sharding
from runtimes import JaxRunner
from runtimes.base import generate
from runtimes.tolerances import SAME_MATH_FLOAT32
from tests.conftest import TINY_PRESETS


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(2, 4)


def test_logical_axes_map_to_the_mesh(mesh):
    config = mz.get_preset("tiny-gemma2")  # 4 heads, 2 kv heads: kv heads do not divide by 4
    specs = sharding.partition_specs(config, mesh)
    assert specs["embedder"]["embedding"] == PartitionSpec("model", "data")
    assert specs["layers"][0]["attn"]["q_proj"] == PartitionSpec("data", "model", None)
    assert specs["layers"][0]["attn"]["k_proj"] == PartitionSpec("data", None, None)
    assert specs["layers"][0]["mlp"]["down_proj"] == PartitionSpec("model", "data")
    assert specs["final_norm"]["scale"] == PartitionSpec(None)


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_sharded_init_and_forward_match_one_device(name, mesh, tiny_params):
    config = mz.get_preset(name)
    sharded = sharding.init_sharded(config, mesh, seed=0)
    q_proj = sharded["layers"][0]["attn"]["q_proj"]
    assert isinstance(q_proj.sharding, NamedSharding)
    assert len({shard.device for shard in q_proj.addressable_shards}) == 8
    assert q_proj.addressable_shards[0].data.shape == (32, 1, 16)  # [64/2, 4/4, 16]
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(tiny_params(name)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    ids = [2, 17, 99, 301, 45, 8, 77, 410, 5, 260, 61, 33]
    single, _, _ = inference.prefill(config, tiny_params(name), [ids],
                                     mz.KVCache.create(config, 1, 16))
    cache = mz.KVCache.create(config, 1, 16, sharding=NamedSharding(mesh, PartitionSpec()))
    logits, cache, _ = inference.prefill(config, sharded, [ids], cache)
    np.testing.assert_allclose(logits, single, atol=SAME_MATH_FLOAT32, rtol=0)


def test_runner_generates_the_same_tokens_sharded(mesh, tiny_params):
    config = mz.get_preset("tiny-gemma3")
    params = tiny_params("tiny-gemma3")
    prompt = [2, 40, 41, 42, 43]
    plain = generate(JaxRunner(config, params, max_len=32), prompt, 10)
    sharded_params = sharding.shard_params(config, params, mesh)
    sharded = generate(JaxRunner(config, sharded_params, max_len=32), prompt, 10)
    assert sharded.generated_ids == plain.generated_ids


def test_mesh_larger_than_the_devices_is_a_clear_error():
    with pytest.raises(mz.GemmaforgeError, match="xla_force_host_platform_device_count=64"):
        sharding.make_mesh(8, 8)
    with pytest.raises(mz.GemmaforgeError, match="DATAxMODEL"):
        sharding.parse_mesh("2by4")


def test_sharded_tensors_really_split_memory(mesh):
    config = mz.get_preset("tiny-gemma1")
    params = sharding.init_sharded(config, mesh)
    embedding = params["embedder"]["embedding"]
    assert embedding.addressable_shards[0].data.size == embedding.size // 8
    assert jnp.allclose(embedding, mz.init_params(config)["embedder"]["embedding"])


def test_checkpoints_load_into_shards(mesh, tmp_path, tiny_params):
    from model_zoo.loading import load
    from tests.writers import write_gguf, write_hf_folder

    config = mz.get_preset("tiny-gemma3")
    params = tiny_params("tiny-gemma3")
    write_hf_folder(tmp_path / "hf", config, params)
    write_gguf(tmp_path / "model.gguf", config, params)
    for checkpoint in (tmp_path / "hf", tmp_path / "model.gguf"):
        model = load("tiny-gemma3", checkpoint=checkpoint, mesh=mesh)
        q_proj = model.params["layers"][0]["attn"]["q_proj"]
        assert q_proj.sharding.spec == PartitionSpec("data", "model", None)
        assert len(q_proj.addressable_shards) == 8
    hf = load("tiny-gemma3", checkpoint=tmp_path / "hf", mesh=mesh)
    for a, b in zip(jax.tree.leaves(hf.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
