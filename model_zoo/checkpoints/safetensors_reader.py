"""Hugging Face folders: `config.json` plus one or many `*.safetensors` (with
`model.safetensors.index.json`), Gemma, Gemma 2 and Gemma 3 names.

The safetensors layout is an 8-byte little-endian header size, a JSON header (dtype, shape and
byte range of each tensor) and the raw data. Each tensor is read with `os.pread`, converted to
float32 (bfloat16 through ml_dtypes) and placed before the next is read; large tensors that keep
their layout are converted a block of rows at a time.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from model_zoo.checkpoints.collect import Collector, aligned_empty, unexpected
from model_zoo.checkpoints.hf_names import TensorMap, hf_tensor_map
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import Params

DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
# Multimodal Gemma 3 checkpoints keep the language model under its own prefix.
TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
# Tensors of a multimodal checkpoint that the text model does not use.
VISION_PREFIXES = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.",
                   "model.multi_modal_projector.")
ROWS_PER_STEP = 16384
MAX_HEADER_BYTES = 100 << 20


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GemmaforgeError(f"{folder} has no config.json; a Hugging Face folder needs one") \
            from None
    except json.JSONDecodeError as error:
        raise GemmaforgeError(f"{path} is not valid JSON: {error}") from None


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a folder, from its index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise GemmaforgeError(f"{index} lists missing file(s): {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
        hint = (f" ({', '.join(pickles)} are pickle files, which gemmaforge refuses to load: "
                "they can run arbitrary code; convert them to safetensors)" if pickles else "")
        raise GemmaforgeError(f"{folder} has no *.safetensors files{hint}")
    return files


def read_header(path: Path) -> tuple[dict, int]:
    """(tensor entries, byte offset of the data section)."""
    with open(path, "rb") as file:
        head = file.read(8)
        if len(head) < 8:
            raise GemmaforgeError(f"{path} is truncated: no safetensors header")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise GemmaforgeError(f"{path} is not a safetensors file (header of {size} bytes)")
        try:
            header = json.loads(file.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise GemmaforgeError(f"{path} is not a safetensors file (bad header)") from None
    header.pop("__metadata__", None)
    return header, 8 + size


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
        file_bytes = os.path.getsize(path)
        with open(path, "rb") as file:
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
                start, stop = (data_start + o for o in info["data_offsets"])
                if stop > file_bytes:
                    raise GemmaforgeError(f"{path} is truncated inside tensor {name}")
                collector.add(entry.path,
                              _read(file.fileno(), path, name, info["dtype"], start, entry))
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

    if entry.layout.same and rows > ROWS_PER_STEP:
        out = aligned_empty(shape)
        for first in range(0, rows, ROWS_PER_STEP):
            last = min(rows, first + ROWS_PER_STEP)
            out[first:last] = rows_as_float32(first, last).reshape(last - first, *shape[1:])
        return out
    return entry.to_ours(rows_as_float32(0, rows).reshape(shape))


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
