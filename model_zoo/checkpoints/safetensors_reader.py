"""Hugging Face folders: `config.json` plus one or many `*.safetensors` (with
`model.safetensors.index.json`), Gemma, Gemma 2 and Gemma 3 names.

The safetensors layout is an 8-byte little-endian header size, a JSON header (dtype, shape and
byte range of each tensor) and the raw data. Each tensor is read with `os.pread`, converted to
float32 (bfloat16 through ml_dtypes) and placed before the next is read; large tensors that keep
their layout are converted a block of rows at a time.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from model_zoo.checkpoints.collect import Collector, read_rows, unexpected
from model_zoo.checkpoints.hf_names import TensorMap, hf_tensor_map
from model_zoo.config import ModelConfig, is_integer
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import Params
from model_zoo.untrusted import (
    check_tiling,
    inside,
    open_regular,
    parse_json,
    read_small,
    reading,
    shown,
)

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
# Multimodal Gemma 3 checkpoints keep the language model under its own prefix.
TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Tensors of a multimodal checkpoint that the text model does not use.
VISION_PREFIXES = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.",
                   "model.multi_modal_projector.")
# The safetensors library's own bound on the JSON header.
MAX_HEADER_BYTES = 100 << 20
# More tensors than one file of a MAX_LAYERS Gemma holds, quantized artifacts' scales included;
# a header of millions of empty tensors would cost ~500 bytes of memory per header byte.
MAX_TENSORS = 1 << 16
# Gemma's weights have at most 4 dimensions (the gemma library's kv_einsum); past 8 a header is
# crafted.
MAX_RANK = 8
# A Gemma config.json is a few kB and an index a few hundred.
MAX_CONFIG_BYTES = 1 << 20
MAX_INDEX_BYTES = 16 << 20
# Every dtype of the safetensors format, with its item size: a tensor's byte range is checked
# against its shape in any of them, even those that are refused when read as weights.
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2,
              "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_SAFETENSORS = "a safetensors file"


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise GemmaforgeError(f"{folder} has no config.json; a Hugging Face folder needs one")
    config = parse_json(read_small(path, MAX_CONFIG_BYTES, "a config.json"), path)
    if not isinstance(config, dict):
        raise GemmaforgeError(f"{path} holds a JSON {type(config).__name__}; expected an object")
    return config


def _index_files(folder: Path, index: Path) -> list[Path]:
    """The files an index's weight_map names, each kept inside `folder`."""
    data = parse_json(read_small(index, MAX_INDEX_BYTES, "a safetensors index"), index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise GemmaforgeError(f"{index} has no weight_map object; expected tensor name -> file")
    return sorted({inside(folder, name, index) for name in weight_map.values()})


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder, from its index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = _index_files(folder, index)
        missing = [shown(f.name) for f in files if not f.exists()]
        if missing:
            raise GemmaforgeError(f"{index} lists missing file(s): {', '.join(missing)}")
        return files
    files = sorted(inside(folder, path.name, folder) for path in folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        hint = (f" ({', '.join(pickles)} are pickle files, which gemmaforge refuses to load: "
                "they can run arbitrary code; convert them to safetensors)" if pickles else "")
        raise GemmaforgeError(f"{folder} has no *.safetensors files{hint}")
    return files


def _entry(path: Path, name: str, entry: object) -> dict:
    """One header entry, its fields typed and its byte range the size its shape and dtype
    give."""
    if not name.isprintable():
        raise GemmaforgeError(f"{path}: tensor name {shown(name)} is not printable; the file is "
                              "damaged or not a safetensors file")
    fields = ("dtype", "shape", "data_offsets")
    if not isinstance(entry, dict) or not all(field in entry for field in fields):
        raise GemmaforgeError(f"{path}: tensor {name} is {shown(entry)}; expected an object with "
                              "dtype, shape and data_offsets")
    dtype, shape, offsets = (entry[field] for field in fields)
    if not isinstance(dtype, str) or dtype not in ITEM_BYTES:
        raise GemmaforgeError(f"{path}: tensor {name} has dtype {shown(dtype)}; expected one of "
                              f"{', '.join(ITEM_BYTES)}")
    if (not isinstance(shape, list) or len(shape) > MAX_RANK
            or not all(is_integer(d) and d >= 0 for d in shape)):
        raise GemmaforgeError(f"{path}: tensor {name} has shape {shown(shape)}; expected a list "
                              f"of at most {MAX_RANK} sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(is_integer(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
        raise GemmaforgeError(f"{path}: tensor {name} has data_offsets {shown(offsets)}; "
                              "expected [start, end] with 0 <= start <= end")
    size = math.prod(shape) * ITEM_BYTES[dtype]
    if offsets[1] - offsets[0] != size:
        raise GemmaforgeError(
            f"{path}: tensor {name} is {dtype} {shape}, {size} bytes, but its data_offsets "
            f"{offsets} span {offsets[1] - offsets[0]}; the header does not match the data")
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset of the data section), every entry checked against the file:
    dtype, shape and byte range agree, and the ranges tile the data without gaps or overlaps."""
    with reading(path, _SAFETENSORS):
        with open_regular(path) as file:
            file_bytes = os.fstat(file.fileno()).st_size
            head = file.read(8)
            if len(head) < 8:
                raise GemmaforgeError(f"{path} is truncated: no safetensors header")
            (size,) = struct.unpack("<Q", head)
            if size > min(MAX_HEADER_BYTES, file_bytes - 8):
                raise GemmaforgeError(f"{path} is not a safetensors file (a header of {size} "
                                      f"bytes in a file of {file_bytes})")
            header = parse_json(file.read(size), path)
        if not isinstance(header, dict):
            raise GemmaforgeError(f"{path}: the safetensors header is a JSON "
                                  f"{type(header).__name__}; expected an object")
        header.pop("__metadata__", None)
        if len(header) > MAX_TENSORS:
            raise GemmaforgeError(f"{path} lists {len(header)} tensors, over the {MAX_TENSORS} "
                                  "gemmaforge reads")
        entries = {name: _entry(path, name, entry) for name, entry in header.items()}
        start = 8 + size
        check_tiling(path, [(name, start + e["data_offsets"][0], start + e["data_offsets"][1])
                            for name, e in entries.items()], start, file_bytes)
    return entries, 8 + size


def text_name(name: str) -> str | None:
    """The `model.`-prefixed HF text-model name, or None for a vision tensor."""
    if name.startswith(VISION_PREFIXES):
        return None
    for prefix in TEXT_PREFIXES:
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    return name


def read_safetensors(paths: list[Path], config: ModelConfig, source: str,
                     shardings: Params | None = None, *,
                     table: dict[str, TensorMap] | None = None) -> Params:
    """Our parameters from safetensors files named as `table` says (default: HF names; see
    `native.native_tensor_map` for our own)."""
    native = table is not None
    table = table if native else hf_tensor_map(config)
    collector = Collector(config, source, shardings)
    extra = []
    for path in paths:
        header, data_start = read_header(path)
        with reading(path, _SAFETENSORS), open_regular(path) as file:
            for name, info in header.items():
                if name == "lm_head.weight":  # tied to the embedding: not a separate parameter
                    continue
                hf = name if native else text_name(name)
                if hf is None:
                    continue
                if hf not in table:
                    extra.append(name)
                    continue
                entry = table[hf]
                collector.check_shape(name, tuple(info["shape"]), entry.hf_shape)
                start = data_start + info["data_offsets"][0]
                collector.add(entry.path,
                              _read(file.fileno(), path, name, info["dtype"], start, entry), name)
    if extra:
        raise unexpected(source, extra)
    return collector.finish()


def _read(fd: int, path: Path, name: str, dtype_name: str, start: int,
          entry: TensorMap) -> np.ndarray:
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise GemmaforgeError(f"{path}: tensor {name} has dtype {dtype_name}; "
                              f"{', '.join(DTYPES)} are read")
    itemsize = np.dtype(dtype).itemsize
    shape = entry.hf_shape
    row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else int(shape[0])
    rows = shape[0] if len(shape) > 1 else 1

    def rows_as_float32(first: int, last: int) -> np.ndarray:
        raw = os.pread(fd, (last - first) * row * itemsize, start + first * row * itemsize)
        return np.frombuffer(raw, dtype).astype(np.float32).reshape(last - first, row)

    return read_rows(entry, rows, rows_as_float32)


_ARCHITECTURE_FIELDS = ("family", "vocab_size", "embed_dim", "num_layers", "num_heads",
                        "num_kv_heads", "head_dim", "hidden_dim", "attention_types",
                        "sliding_window", "attn_logit_softcap", "final_logit_softcap")


def check_same_architecture(preset: ModelConfig, from_file: ModelConfig, folder: Path) -> None:
    """Refuses an HF folder whose config.json describes another model than the preset."""
    for field in _ARCHITECTURE_FIELDS:
        want, got = getattr(preset, field), getattr(from_file, field)
        if want != got:
            if field == "attention_types":
                want, got = "".join(t.value[0] for t in want), "".join(t.value[0] for t in got)
            raise GemmaforgeError(f"{folder}/config.json does not match preset {preset.name}: "
                                  f"{field} is {got} there, {want} in the preset")
