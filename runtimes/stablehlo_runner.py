"""The `stablehlo` runner: the serialized jax.export artifacts, deserialized and called on the
local backend (CPU here; GPU or TPU where JAX has one). A sharded export runs on a mesh of the
recorded shape, its weights placed with the recorded shardings."""

from __future__ import annotations

import jax
import numpy as np
from jax import export as jax_export
from jax.sharding import NamedSharding, PartitionSpec

from exporter.trace import DECODE, empty_cache
from model_zoo.errors import GemmaforgeError
from model_zoo.sharding import make_mesh
from model_zoo.tree import parse_name, set_path
from runtimes.artifact import Artifact
from runtimes.entry_runner import EntryPointRunner


class StableHLORunner(EntryPointRunner):
    name = "stablehlo"

    def __init__(self, artifact: Artifact):
        super().__init__(artifact)
        section = artifact.format("stablehlo")
        self._replicated = None
        shardings = None
        if "mesh" in section:
            sizes = section["mesh"]
            mesh = make_mesh(sizes["data"], sizes["model"])
            shardings = {}
            for name, spec in section["shardings"].items():
                set_path(shardings, parse_name(name), NamedSharding(mesh, PartitionSpec(*spec)))
            self._replicated = NamedSharding(mesh, PartitionSpec())
        self._weights = artifact.flat_weights(shardings)
        platform = jax.devices()[0].platform
        self._calls = {}
        for entry, info in section["entry_points"].items():
            if info["symbolic"]:
                continue
            exported = jax_export.deserialize(bytearray(artifact.file(info["file"])
                                                        .read_bytes()))
            if platform not in exported.platforms:
                raise GemmaforgeError(f"{artifact.root} was lowered for "
                                      f"{', '.join(exported.platforms)}, not for this {platform}; "
                                      "re-export with --platforms including it")
            self._calls[entry] = jax.jit(exported.call, donate_argnums=(3,))
        self._cache = None

    def _reset(self) -> None:
        cache = empty_cache(self._config, self.max_len)
        self._cache = {k: jax.device_put(v, self._replicated) for k, v in cache.items()}

    def _call(self, entry: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray | None:
        tokens, input_pos = (jax.device_put(x, self._replicated) for x in (tokens, input_pos))
        out = self._calls[entry](self._weights, tokens, input_pos, self._cache)
        if entry == DECODE:
            logits, self._cache = out
            return np.asarray(logits[0, 0])
        self._cache = out
        return None
