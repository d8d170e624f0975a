"""A lean GGUF header parser: metadata and tensor directory, nothing memory-mapped.

`gguf.GGUFReader` builds a numpy view per vocabulary string and takes ~19 s on a 262144-token
vocabulary here; reading the header straight takes a fraction of a second. Tensor payloads are
left in the file for the reader to `pread` row block by row block. Layout (GGUF v2/v3):
magic, version, tensor count, metadata count; metadata as (key, type, value); tensor infos as
(name, dims innermost first, ggml type, offset); then the data section, aligned.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import gguf
import numpy as np

from model_zoo.config import MAX_LAYERS, MAX_VOCAB
from model_zoo.errors import GemmaforgeError
from model_zoo.untrusted import check_tiling, open_regular, shown

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Headers are small next to the tensors; 64 MiB holds any vocabulary we know of.
MAX_HEADER_BYTES = 64 << 20
# A Gemma GGUF has ~40 keys; a crafted file of millions of tiny ones would cost ~200 bytes of
# memory per header byte.
MAX_METADATA_KEYS = 4096
# The longest array a Gemma file holds is its vocabulary (tokens, scores, types).
MAX_ARRAY_LENGTH = MAX_VOCAB
# ggml's own limit on a tensor's dimensions.
MAX_DIMS = 4
# A Gemma of MAX_LAYERS layers has 13 tensors per layer, and two more.
MAX_TENSORS = 16 * MAX_LAYERS
# Smallest encodings, to bound a count by the bytes left before looping on it.
_MIN_STRING_BYTES = 8  # the length alone
_MIN_KV_BYTES = _MIN_STRING_BYTES + 4 + 1  # key, value type, a one-byte value
_MIN_TENSOR_INFO_BYTES = _MIN_STRING_BYTES + 4 + 8 + 4 + 8  # name, rank, one dim, type, offset

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9
# The ggml types `gguf.quants.dequantize` turns into float32; the others (integers, and Q8_1
# and Q8_K, which hold activations) are not weights we can read.
READABLE_TYPES = frozenset(
    gguf.GGMLQuantizationType[name] for name in (
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
        "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4")
    if name in gguf.GGMLQuantizationType.__members__)


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
        return math.prod(self.shape[:-1])

    @property
    def row_bytes(self) -> int:
        return self.n_bytes // self.rows


class _Cursor:
    """Reads the header from memory; every length is checked against the bytes left first."""

    def __init__(self, data: bytes, source: str, whole_file: bool):
        self.data, self.pos, self.source, self.whole_file = data, 0, source, whole_file

    def short(self) -> GemmaforgeError:
        if self.whole_file:
            return GemmaforgeError(f"{self.source} is truncated inside its GGUF header")
        return GemmaforgeError(f"{self.source}: its GGUF header runs past the "
                               f"{MAX_HEADER_BYTES >> 20} MiB gemmaforge reads; the file is "
                               "damaged or not a GGUF")

    def take(self, size: int) -> memoryview:
        if size > len(self.data) - self.pos:
            raise self.short()
        view = memoryview(self.data)[self.pos : self.pos + size]
        self.pos += size
        return view

    def scalar(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def bounded(self, count: int, limit: int, item_bytes: int, what: str) -> int:
        """`count` items of `what`, each at least `item_bytes` long, checked against `limit`
        and the bytes left before anything loops on it or allocates for it."""
        if count > limit:
            raise GemmaforgeError(f"{self.source}: {what} counts {count}, over the {limit} "
                                  "gemmaforge reads; the file is damaged or not a GGUF")
        if count * item_bytes > len(self.data) - self.pos:
            raise self.short()
        return count

    def string(self) -> str:
        return bytes(self.take(self.scalar("<Q"))).decode("utf-8", errors="replace")

    def value(self, kind: int, key: str):
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            what = f"the array {key}"
            if item == _STRING:
                count = self.bounded(count, MAX_ARRAY_LENGTH, _MIN_STRING_BYTES, what)
                return [self.string() for _ in range(count)]
            if item in _NUMPY:
                dtype = np.dtype(_NUMPY[item])
                count = self.bounded(count, MAX_ARRAY_LENGTH, dtype.itemsize, what)
                return np.frombuffer(self.take(count * dtype.itemsize), dtype).copy()
            # Nested arrays included: no Gemma file has one, and llama.cpp does not read them.
            raise GemmaforgeError(f"{self.source}: metadata {key} is an array of GGUF type "
                                  f"{item}; arrays of numbers or strings are read")
        raise GemmaforgeError(f"{self.source}: metadata {key} has an unknown GGUF value type "
                              f"{kind}; the file is damaged or not a GGUF")


def _metadata(cursor: _Cursor, count: int) -> dict:
    cursor.bounded(count, MAX_METADATA_KEYS, _MIN_KV_BYTES, "the metadata")
    metadata = {}
    for _ in range(count):
        key = shown(cursor.string())
        if key in metadata:
            raise GemmaforgeError(f"{cursor.source}: metadata {key} appears twice; the file is "
                                  "damaged or not a GGUF")
        metadata[key] = cursor.value(cursor.scalar("<I"), key)
    return metadata


def _directory(cursor: _Cursor, count: int) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape outermost first, ggml type id, offset in the data section) of each tensor;
    names unique, ranks and sizes positive."""
    cursor.bounded(count, MAX_TENSORS, _MIN_TENSOR_INFO_BYTES, "the tensor directory")
    entries, names = [], set()
    for _ in range(count):
        name = cursor.string()
        if name in names or not name.isprintable():
            problem = "appears twice" if name in names else "is not a printable name"
            raise GemmaforgeError(f"{cursor.source}: tensor {shown(name)} {problem}; the file "
                                  "is damaged or not a GGUF")
        names.add(name)
        rank = cursor.scalar("<I")
        if not 1 <= rank <= MAX_DIMS:
            raise GemmaforgeError(f"{cursor.source}: tensor {name} has {rank} dimensions; "
                                  f"expected 1 to {MAX_DIMS}")
        dims = [cursor.scalar("<Q") for _ in range(rank)]
        if 0 in dims:
            raise GemmaforgeError(f"{cursor.source}: tensor {name} has an empty dimension "
                                  f"({dims}); expected positive sizes")
        entries.append((name, tuple(reversed(dims)), cursor.scalar("<I"), cursor.scalar("<Q")))
    return entries


def _alignment(metadata: dict, path: str) -> int:
    """`general.alignment`: a positive power of two (the data offsets are multiples of it)."""
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if (not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0
            or alignment & (alignment - 1)):
        raise GemmaforgeError(f"{path}: general.alignment is {shown(alignment)}; expected a "
                              "positive power of two; the file is damaged or not a GGUF")
    return alignment


def _tensor(path: str, entry: tuple[str, tuple[int, ...], int, int], data_start: int,
            alignment: int) -> TensorInfo:
    """One directory entry: its type readable, its rows whole blocks, its offset aligned."""
    name, shape, type_id, offset = entry
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
    except ValueError:
        raise GemmaforgeError(f"{path}: tensor {name} has unknown ggml type {type_id}") from None
    if qtype not in READABLE_TYPES:
        raise GemmaforgeError(f"{path}: tensor {name} has ggml type {qtype.name}, which "
                              "gemmaforge does not read as weights (float and quantized types "
                              "are read)")
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        raise GemmaforgeError(f"{path}: tensor {name} has rows of {shape[-1]} values, not whole "
                              f"{qtype.name} blocks of {block}; the file is damaged")
    if offset % alignment:
        raise GemmaforgeError(f"{path}: tensor {name}: data offset {offset} is not a multiple "
                              f"of the alignment {alignment}; the file is damaged or not a GGUF")
    n_bytes = math.prod(shape[:-1]) * (shape[-1] // block) * block_bytes
    return TensorInfo(name, shape, qtype, data_start + offset, n_bytes)


def read_header(path: str, size: int) -> tuple[dict, list[TensorInfo]]:
    """Metadata and tensor directory of the GGUF at `path` (of `size` bytes), every count,
    offset and size checked against the file. Low-level errors are left to the caller's
    `untrusted.reading`."""
    with open_regular(path) as file:
        head = file.read(24)
        if len(head) < 4 or head[:4] != MAGIC:
            raise GemmaforgeError(f"{path} is not a GGUF file (it does not start with GGUF)")
        if len(head) < 24:
            raise GemmaforgeError(f"{path} is truncated inside its GGUF header")
        version, n_tensors, n_metadata = struct.unpack("<IQQ", head[4:24])
        if version not in (2, 3):
            raise GemmaforgeError(f"{path} is GGUF version {version}; versions 2 and 3 are read")
        data = head + file.read(min(size, MAX_HEADER_BYTES) - 24)
    cursor = _Cursor(data, path, whole_file=len(data) >= size)
    cursor.pos = 24
    metadata = _metadata(cursor, n_metadata)
    directory = _directory(cursor, n_tensors)
    alignment = _alignment(metadata, path)
    data_start = -(-cursor.pos // alignment) * alignment
    tensors = [_tensor(path, entry, data_start, alignment) for entry in directory]
    check_tiling(path, [(t.name, t.offset, t.offset + t.n_bytes) for t in tensors], data_start,
                 size, alignment)
    return metadata, tensors
