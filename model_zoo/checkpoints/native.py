"""Our own parameter files: safetensors with our dotted parameter names ("layers.0.attn.q_proj")
and layouts, written tensor by tensor (never a second copy of the weights in memory) and read
back with the streaming safetensors reader."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from model_zoo.checkpoints.hf_names import SAME, TensorMap
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import Params, abstract_params, weight_specs
from model_zoo.tree import flatten, path_name
from model_zoo.untrusted import reading

_DTYPE_NAMES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.int32): "I32"}
_ALIGN = 8


def native_tensor_map(config: ModelConfig) -> dict[str, TensorMap]:
    """Our dotted names -> our paths, layouts unchanged."""
    return {path_name(path): TensorMap(path, tuple(leaf.shape), SAME)
            for path, leaf in flatten(abstract_params(config))}


def write_safetensors(path: str | os.PathLike, specs: Mapping[str, Any],
                      arrays: Iterable[tuple[str, np.ndarray]]) -> None:
    """Writes a safetensors file whose header comes from `specs` (name -> anything with a
    `shape` and a `dtype`: `weight_specs`, or the arrays themselves) and whose data comes from
    `arrays`, one array at a time, in the same order: a model that never exists whole in memory
    can be written."""
    entries, offset = {}, 0
    for name, spec in specs.items():
        shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
        if dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot store {name} of dtype {dtype}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        entries[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % _ALIGN)
    expected = ((name, (tuple(spec.shape), np.dtype(spec.dtype))) for name, spec in specs.items())
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(header)))
        file.write(header)
        for name, value in arrays:
            want_name, (shape, dtype) = next(expected)
            value = np.ascontiguousarray(np.asarray(value))
            if name != want_name or value.shape != tuple(shape) or value.dtype != dtype:
                raise ValueError(f"expected {want_name} {tuple(shape)} {np.dtype(dtype)}, got "
                                 f"{name} {value.shape} {value.dtype}")
            file.write(memoryview(value).cast("B"))
    if next(expected, None) is not None:
        raise ValueError(f"{path}: the arrays ended before the header's last tensor")


def weight_offsets(path: Path, config: ModelConfig) -> dict[str, int]:
    """Each weight's byte offset in `path`, our float32 safetensors for `config`, checked
    against the config's names and shapes: readers map or read the tensors from there."""
    from model_zoo.checkpoints.safetensors_reader import read_header

    header, data_start = read_header(path)
    offsets = {}
    for name, spec in weight_specs(config).items():
        shape = tuple(spec.shape)
        entry = header.get(name)
        if entry is None or entry["dtype"] != "F32" or tuple(entry["shape"]) != shape:
            found = "missing" if entry is None else f"{entry['dtype']} {entry['shape']}"
            raise GemmaforgeError(f"{path}: {name} is {found}, expected F32 {list(shape)}")
        offsets[name] = data_start + entry["data_offsets"][0]
    return offsets


_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


def read_tensors(path: Path, *, mapped: bool = False) -> dict[str, np.ndarray]:
    """Every tensor of one of our safetensors files, in its stored dtype: in memory, or
    memory-mapped (read when touched) with `mapped`."""
    from model_zoo.checkpoints.safetensors_reader import read_header

    header, data_start = read_header(path)
    tensors = {}
    with reading(path, "a safetensors file"):
        for name, entry in header.items():
            if entry["dtype"] not in _DTYPES:
                raise GemmaforgeError(f"{path}: {name} has dtype {entry['dtype']}, which "
                                      "gemmaforge does not write")
            start, end = entry["data_offsets"]
            dtype = _DTYPES[entry["dtype"]]
            count = (end - start) // dtype.itemsize
            if mapped:
                tensors[name] = np.memmap(path, dtype, "r", data_start + start,
                                          tuple(entry["shape"]))
            else:
                tensors[name] = np.fromfile(path, dtype, count,
                                            offset=data_start + start).reshape(entry["shape"])
    return tensors


def save_params(path: str | Path, params: Params) -> None:
    """Our parameters, float32, under our dotted names."""
    pairs = [(path_name(p), leaf) for p, leaf in flatten(params)]
    write_safetensors(path, dict(pairs), pairs)
