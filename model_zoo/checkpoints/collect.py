"""What every reader shares: checking a checkpoint's tensors against the config, and placing them
on the device without holding two copies.

A reader walks the file's tensors one at a time, converts each to our layout in a fresh 64-byte
aligned buffer, and hands it over: JAX's CPU client then adopts the buffer without copying it
(`device_put(..., may_alias=True)`), so peak memory stays near the parameters' own size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import jax
import numpy as np

from model_zoo.checkpoints.hf_names import TensorMap
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import Params, abstract_params
from model_zoo.tree import ParamPath, flatten, get_path, path_name, set_path
from model_zoo.untrusted import check_finite, shown

ALIGNMENT = 64
# Rows converted per step for large tensors (the 262144-row embedding): ~40 MB of float32.
ROWS_PER_STEP = 16384


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """An uninitialised array whose data starts on a 64-byte boundary."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset : offset + size].view(dtype).reshape(shape)


def read_rows(entry: TensorMap, rows: int,
              read: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """One checkpoint tensor of `rows` rows (its shape `entry.hf_shape`) in our layout, from
    `read(first, last)`: rows first..last as float32 [last - first, ...]. A tensor that keeps
    its layout goes into one aligned buffer ROWS_PER_STEP rows at a time, so the whole float32
    copy of a large table is never held twice."""
    shape = entry.hf_shape
    if entry.layout.same and rows > ROWS_PER_STEP:
        out = aligned_empty(shape)
        for first in range(0, rows, ROWS_PER_STEP):
            last = min(rows, first + ROWS_PER_STEP)
            out[first:last] = read(first, last).reshape(last - first, *shape[1:])
        return out
    return entry.to_ours(read(0, rows).reshape(shape))


def adopt(array: np.ndarray, sharding: jax.sharding.Sharding | None = None) -> jax.Array:
    """`array` as a float32 device array; on one CPU device without a copy when it is aligned."""
    if sharding is not None:
        return jax.device_put(array, sharding)
    if (array.dtype != np.float32 or not array.flags.c_contiguous
            or array.ctypes.data % ALIGNMENT):
        buffer = aligned_empty(array.shape)
        buffer[...] = array
        array = buffer
    return jax.device_put(array, may_alias=True)


class Collector:
    """Gathers converted tensors into our tree, refusing unknown, mis-shaped or missing ones.

    Args:
      config: the architecture the checkpoint must match.
      source: the checkpoint, as named in error messages.
      shardings: optional tree of shardings shaped like the parameters.
    """

    def __init__(self, config: ModelConfig, source: str, shardings: Params | None = None):
        self.config = config
        self.source = source
        self.shardings = shardings
        self.expected = {path: leaf.shape for path, leaf in flatten(abstract_params(config))}
        self.params: Params = {}
        self.filled: set[ParamPath] = set()

    def check_shape(self, name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        """Refuses checkpoint tensor `name` when its shape is not the one the config implies."""
        if tuple(got) != tuple(want):
            raise GemmaforgeError(
                f"{self.source}: tensor {shown(name)} has shape {list(got)} but {self.config.name} "
                f"expects {list(want)}; is this checkpoint for another model?")

    def add(self, path: ParamPath, array: np.ndarray, name: str) -> None:
        """Places our parameter `path`, already in our layout, read from the checkpoint's tensor
        `name`: refused when it holds NaN or infinity, or when another tensor filled it."""
        if path not in self.expected:
            raise GemmaforgeError(f"{self.source}: no parameter {path_name(path)} in "
                                  f"{self.config.name}")
        if path in self.filled:
            raise GemmaforgeError(f"{self.source}: tensor {shown(name)} fills {path_name(path)}, "
                                  "which another tensor already filled; a checkpoint holds "
                                  "each parameter once")
        self.check_shape(path_name(path), array.shape, self.expected[path])
        check_finite(self.source, shown(name), array)
        sharding = get_path(self.shardings, path) if self.shardings is not None else None
        set_path(self.params, path, adopt(array, sharding))
        self.filled.add(path)

    def finish(self, missing_names: Callable[[ParamPath], str] = path_name) -> Params:
        """The parameters, or an error naming what the checkpoint lacked."""
        missing = [path for path in self.expected if path not in self.filled]
        if missing:
            listed = ", ".join(missing_names(p) for p in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise GemmaforgeError(f"{self.source} lacks {len(missing)} tensor(s) "
                                  f"{self.config.name} needs: {listed}{more}")
        return self.params


def unexpected(source: str, names: Iterable[str]) -> GemmaforgeError:
    names = sorted(shown(name) for name in names)
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return GemmaforgeError(f"{source} has tensor(s) the model does not use: {listed}; is this "
                           "checkpoint for another architecture?")

