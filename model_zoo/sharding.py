"""Sharding the parameters on a (data, model) mesh, as the source models are trained on TPUs.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, ...); `rules` map them to
mesh axes: tensor parallelism over `model` (heads, MLP width, vocab) and FSDP-style sharding of
the embedding width over `data`. An axis whose size the mesh axis does not divide (one KV head
on four devices) stays replicated, so every preset shards on every mesh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import Params, abstract_model, abstract_params, init_params
from model_zoo.tree import set_path

MESH_AXES = ("data", "model")
DEFAULT_RULES: Mapping[str, str | None] = {
    "vocab": "model",
    "embed": "data",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "head_dim": None,
    "norm": None,
}


def parse_mesh(text: str) -> tuple[int, int]:
    """'2x4' -> (2, 4): the data and model axis sizes."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise GemmaforgeError(f"mesh must look like DATAxMODEL, e.g. 2x4; got {text!r}")
    return int(parts[0]), int(parts[1])


def make_mesh(data: int, model: int) -> Mesh:
    """A (data, model) mesh over the first data * model local devices."""
    devices = jax.devices()
    if data * model > len(devices):
        raise GemmaforgeError(
            f"a {data}x{model} mesh needs {data * model} devices but {len(devices)} "
            f"{devices[0].platform} device(s) are present; on CPU set "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={data * model} before starting")
    # Auto axes: XLA propagates shardings through the model (no sharding-in-types annotations).
    return jax.make_mesh((data, model), MESH_AXES, devices=devices[: data * model],
                         axis_types=(AxisType.Auto, AxisType.Auto))


def logical_axes(config: ModelConfig) -> Params:
    """The logical axis names of every parameter, as a tree shaped like the parameters."""
    tree: Params = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract_model(config), nnx.Param)):
        set_path(tree, path, var.get_metadata()["logical_axes"])
    return tree


def partition_specs(config: ModelConfig, mesh: Mesh,
                    rules: Mapping[str, str | None] = DEFAULT_RULES) -> Params:
    """A PartitionSpec per parameter for `mesh`."""
    def spec(axes: tuple, shape_struct) -> PartitionSpec:
        used, entries = set(), []
        for name, size in zip(axes, shape_struct.shape, strict=True):
            mesh_axis = rules.get(name) if name is not None else None
            if (mesh_axis is None or mesh_axis in used
                    or size % mesh.shape[mesh_axis] != 0):
                entries.append(None)
            else:
                used.add(mesh_axis)
                entries.append(mesh_axis)
        return PartitionSpec(*entries)

    return jax.tree.map(spec, logical_axes(config), abstract_params(config),
                        is_leaf=lambda x: isinstance(x, tuple))


def shardings(config: ModelConfig, mesh: Mesh,
              rules: Mapping[str, str | None] = DEFAULT_RULES) -> Params:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), partition_specs(config, mesh, rules),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_params(config: ModelConfig, params: Params, mesh: Mesh,
                 rules: Mapping[str, str | None] = DEFAULT_RULES) -> Params:
    """Places existing parameters on `mesh`."""
    return jax.device_put(params, shardings(config, mesh, rules))


def init_sharded(config: ModelConfig, mesh: Mesh, seed: int = 0,
                 rules: Mapping[str, str | None] = DEFAULT_RULES) -> Params:
    """Seeded random parameters placed in their shards; the numbers of `init_params`."""
    return init_params(config, seed, shardings=shardings(config, mesh, rules))


def replicated_like(params: Params) -> jax.sharding.Sharding | None:
    """A fully replicated sharding on the mesh the parameters live on; None if unsharded."""
    sharding = getattr(jax.tree.leaves(params)[0], "sharding", None)
    if isinstance(sharding, NamedSharding) and math.prod(sharding.mesh.shape.values()) > 1:
        return NamedSharding(sharding.mesh, PartitionSpec())
    return None
