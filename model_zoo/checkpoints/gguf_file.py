"""A lean GGUF header parser: metadata and tensor directory, nothing memory-mapped.

`gguf.GGUFReader` builds a numpy view per vocabulary string and takes ~19 s on a 262144-token
vocabulary here; reading the header straight takes a fraction of a second. Tensor payloads are
left in the file for the reader to `pread` row block by row block. Layout (GGUF v2/v3):
magic, version, tensor count, metadata count; metadata as (key, type, value); tensor infos as
(name, dims innermost first, ggml type, offset); then the data section, aligned.
"""

from __future__ import annotations

import dataclasses
import os
import struct

import gguf
import numpy as np

from model_zoo.errors import GemmaforgeError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file.

    Attributes:
      name: GGUF tensor name, e.g. "blk.0.attn_q.weight".
      shape: dimensions outermost first (numpy order), e.g. (out, in).
      qtype: the ggml type (F32, Q8_0, Q4_K...).
      offset: absolute byte offset of the payload.
      n_bytes: payload size.
    """

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    offset: int
    n_bytes: int

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64)) if len(self.shape) > 1 else 1

    @property
    def row_bytes(self) -> int:
        return self.n_bytes // self.rows


class _Cursor:
    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = data, 0, source

    def take(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise GemmaforgeError(f"{self.source} is truncated inside its GGUF header")
        view = memoryview(self.data)[self.pos : self.pos + size]
        self.pos += size
        return view

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item == _STRING:
                return [self.string() for _ in range(count)]
            if item in _NUMPY:
                dtype = np.dtype(_NUMPY[item])
                return np.frombuffer(self.take(count * dtype.itemsize), dtype).copy()
            return [self.value(item) for _ in range(count)]
        raise GemmaforgeError(f"{self.source} has an unknown GGUF value type {kind}: corrupt?")


def read_header(path: str, size: int) -> tuple[dict, list[TensorInfo]]:
    """Metadata and tensor directory of the GGUF at `path` (of `size` bytes)."""
    with open(path, "rb") as file:
        head = file.read(24)
        if len(head) < 4 or head[:4] != MAGIC:
            raise GemmaforgeError(f"{path} is not a GGUF file (it does not start with GGUF)")
        if len(head) < 24:
            raise GemmaforgeError(f"{path} is truncated inside its GGUF header")
        version, n_tensors, n_metadata = struct.unpack("<IQQ", head[4:24])
        if version not in (2, 3):
            raise GemmaforgeError(f"{path} is GGUF version {version}; versions 2 and 3 are read")
        # Headers are small next to the tensors; 64 MB holds any vocabulary we know of.
        cursor = _Cursor(head + file.read(min(size, 64 << 20) - 24), path)
    cursor.pos = 24
    metadata = {}
    for _ in range(n_metadata):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<I"))
    raw_infos = []
    for _ in range(n_tensors):
        name = cursor.string()
        dims = [cursor.scalar("<Q") for _ in range(cursor.scalar("<I"))]
        raw_infos.append((name, tuple(reversed(dims)), cursor.scalar("<I"), cursor.scalar("<Q")))
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = []
    for name, shape, type_id, offset in raw_infos:
        try:
            qtype = gguf.GGMLQuantizationType(type_id)
        except ValueError:
            raise GemmaforgeError(
                f"{path}: tensor {name} has unknown ggml type {type_id}") from None
        block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
        n_bytes = int(np.prod(shape, dtype=np.int64)) // block * block_bytes
        info = TensorInfo(name, shape, qtype, data_start + offset, n_bytes)
        if info.offset + n_bytes > size:
            raise GemmaforgeError(f"{path} is truncated: tensor {name} ends at byte "
                                  f"{info.offset + n_bytes}, the file at {size}")
        tensors.append(info)
    return metadata, tensors


def file_size(path: str | os.PathLike) -> int:
    try:
        return os.path.getsize(path)
    except OSError as error:
        raise GemmaforgeError(f"cannot open {path}: {error.strerror}") from None
