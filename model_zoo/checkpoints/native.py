"""Our own parameter files: safetensors with our dotted parameter names ("layers.0.attn.q_proj")
and layouts, written tensor by tensor (never a second copy of the weights in memory) and read
back with the streaming safetensors reader."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import jax
import numpy as np

from model_zoo.checkpoints.hf_names import SAME, TensorMap
from model_zoo.config import ModelConfig
from model_zoo.transformer import Params, abstract_params
from model_zoo.tree import flatten, path_name

_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32"}
_ALIGN = 8


def native_tensor_map(config: ModelConfig) -> dict[str, TensorMap]:
    """Our dotted names -> our paths, layouts unchanged."""
    return {path_name(path): TensorMap(path, tuple(leaf.shape), SAME)
            for path, leaf in flatten(abstract_params(config))}


def save_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray | jax.Array],
                 metadata: dict[str, str] | None = None) -> None:
    """Writes a safetensors file one tensor at a time (host arrays are not copied)."""
    entries, offset = {}, 0
    for name, value in tensors.items():
        dtype = np.dtype(value.dtype)
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot store {name} of dtype {dtype}")
        size = int(np.prod(value.shape, dtype=np.int64)) * dtype.itemsize
        entries[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(value.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        entries["__metadata__"] = metadata
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % _ALIGN)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header)))
        file.write(header)
        for value in tensors.values():
            file.write(memoryview(np.ascontiguousarray(np.asarray(value))).cast("B"))


def save_params(path: str | Path, params: Params) -> None:
    """Our parameters, float32, under our dotted names."""
    save_tensors(path, {path_name(p): leaf for p, leaf in flatten(params)})
