"""Checkpoints from strangers: crafted GGUF, safetensors, config.json, index and tokenizer files
end in a load or in one GemmaforgeError line naming the file and the field, never in a
traceback, a hang, unbounded memory or silently wrong weights.

The crafted files start from small valid ones these tests write (tests/writers.py); the GGUF
ones are re-encoded from parts (`GgufParts`), so that one field at a time can be broken. The
helpers here also drive `tests/fuzz_readers.py`, the long-running fuzzer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
import tempfile
from pathlib import Path

import gguf
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import model_zoo as mz
from model_zoo.checkpoints.gguf_file import read_header
from model_zoo.checkpoints.hf_config import config_from_hf, config_to_hf
from model_zoo.checkpoints.orbax_reader import read_orbax
from model_zoo.checkpoints.safetensors_reader import read_config, safetensors_files
from model_zoo.config import config_from_dict, config_to_dict
from model_zoo.loading import load
from model_zoo.spm import GemmaTokenizer
from tests.writers import tiny_tokenizer_model, write_gguf, write_hf_folder

PRESET = "tiny-gemma3"
CONFIG = mz.get_preset(PRESET)

# --- a GGUF re-encoder, to break one field at a time ------------------------------------------

_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}
_NUMPY_KINDS = {np.dtype(np.float32): 6, np.dtype(np.int32): 5, np.dtype(np.uint32): 4,
                np.dtype(np.uint8): 0, np.dtype(np.int64): 11}
STRING, ARRAY = 8, 9


def encode_value(kind: int, value) -> bytes:
    """One GGUF value; an array is (item kind, items)."""
    if kind in _SCALAR_FORMATS:
        return struct.pack(_SCALAR_FORMATS[kind], value)
    if kind == STRING:
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
        return struct.pack("<Q", len(data)) + data
    item, items = value
    return struct.pack("<IQ", item, len(items)) + b"".join(encode_value(item, v) for v in items)


def kind_of(value) -> tuple[int, object]:
    """(GGUF kind, encodable value) of a value our reader returned."""
    if isinstance(value, bool):
        return 7, value
    if isinstance(value, int):
        return 4, value
    if isinstance(value, float):
        return 6, value
    if isinstance(value, str):
        return STRING, value
    if isinstance(value, list):
        return ARRAY, (STRING, value)
    return ARRAY, (_NUMPY_KINDS[value.dtype], value.tolist())


@dataclasses.dataclass
class GgufTensor:
    name: str
    dims: list[int]  # innermost first, as the file stores them
    type_id: int
    offset: int  # in the data section
    data: bytes


@dataclasses.dataclass
class GgufParts:
    """A GGUF as editable parts. `encode` lays the data out at each tensor's own offset."""

    metadata: list[tuple[str, int, object]]  # (key, kind, value): repeats allowed
    tensors: list[GgufTensor]
    version: int = 3
    n_tensors: int | None = None  # the counts written; None: the true ones
    n_metadata: int | None = None
    padding: int = 32  # where the data section starts: the header padded to this

    @classmethod
    def of(cls, path: Path) -> GgufParts:
        metadata, infos = read_header(str(path), path.stat().st_size)
        data = path.read_bytes()
        start = min(info.offset for info in infos)
        tensors = [GgufTensor(t.name, list(reversed(t.shape)), int(t.qtype), t.offset - start,
                              data[t.offset : t.offset + t.n_bytes]) for t in infos]
        return cls([(key, *kind_of(value)) for key, value in metadata.items()], tensors)

    def set(self, key: str, kind: int, value) -> GgufParts:
        self.metadata = [m for m in self.metadata if m[0] != key] + [(key, kind, value)]
        return self

    def drop(self, key: str) -> GgufParts:
        self.metadata = [m for m in self.metadata if m[0] != key]
        return self

    def tensor(self, name: str) -> GgufTensor:
        return next(t for t in self.tensors if t.name == name)

    def relayout(self, alignment: int = 32) -> GgufParts:
        """Offsets recomputed so that the tensors tile the data section again."""
        offset = 0
        for tensor in self.tensors:
            tensor.offset = offset
            offset += -(-len(tensor.data) // alignment) * alignment
        return self

    def encode(self) -> bytes:
        head = b"GGUF" + struct.pack(
            "<IQQ", self.version,
            len(self.tensors) if self.n_tensors is None else self.n_tensors,
            len(self.metadata) if self.n_metadata is None else self.n_metadata)
        for key, kind, value in self.metadata:
            head += encode_value(STRING, key) + struct.pack("<I", kind) + encode_value(kind, value)
        for t in self.tensors:
            head += (encode_value(STRING, t.name) + struct.pack("<I", len(t.dims))
                     + struct.pack(f"<{len(t.dims)}Q", *t.dims) + struct.pack("<IQ", t.type_id,
                                                                              t.offset))
        head += b"\0" * (-len(head) % self.padding)
        # Data placed at a crafted offset far past the rest is left out: the file ends first.
        size = min(max((t.offset + len(t.data) for t in self.tensors), default=0),
                   sum(len(t.data) + self.padding for t in self.tensors))
        body = bytearray(size)
        for t in self.tensors:
            body[t.offset : t.offset + len(t.data)] = t.data[: max(0, size - t.offset)]
        return head + bytes(body)


# --- valid files, written once ----------------------------------------------------------------

@pytest.fixture(scope="module")
def params():
    return mz.init_params(CONFIG, seed=0)


@pytest.fixture(scope="module")
def valid_gguf(tmp_path_factory, params) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    write_gguf(path, CONFIG, params)
    return path.read_bytes()


@pytest.fixture(scope="module")
def valid_safetensors(tmp_path_factory, params) -> bytes:
    folder = tmp_path_factory.mktemp("st") / "hf"
    write_hf_folder(folder, CONFIG, params, files=1)
    return next(folder.glob("*.safetensors")).read_bytes()


def parts(valid_gguf: bytes, tmp_path: Path) -> GgufParts:
    path = tmp_path / "valid.gguf"
    path.write_bytes(valid_gguf)
    return GgufParts.of(path)


def load_gguf(data: bytes, folder: Path):
    path = folder / "model.gguf"
    path.write_bytes(data)
    return load(PRESET, checkpoint=path)


def safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def encode_safetensors(header: object, payload: bytes) -> bytes:
    raw = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(raw)) + raw + payload


@functools.cache
def tokenizer_model() -> bytes:
    return tiny_tokenizer_model(CONFIG.vocab_size)


def load_safetensors(data: bytes, folder: Path):
    """A single .safetensors file carries no tokenizer: the tiny one goes with it."""
    path = folder / "model.safetensors"
    path.write_bytes(data)
    (folder / "tokenizer.model").write_bytes(tokenizer_model())
    return load(PRESET, checkpoint=path, tokenizer=folder / "tokenizer.model")


def refused(match: str):
    return pytest.raises(mz.GemmaforgeError, match=match)


def test_the_valid_files_load(valid_gguf, valid_safetensors, tmp_path):
    assert parts(valid_gguf, tmp_path).encode() == valid_gguf
    assert not load_gguf(valid_gguf, tmp_path).random_weights
    assert not load_safetensors(valid_safetensors, tmp_path).random_weights


# --- GGUF: tracebacks that were ---------------------------------------------------------------

@pytest.mark.parametrize("kind, value", [(4, 0), (5, -32), (4, 48), (ARRAY, (4, [32])),
                                         (STRING, "32"), (6, 32.0)])
def test_gguf_alignment_must_be_a_positive_power_of_two(valid_gguf, tmp_path, kind, value):
    data = parts(valid_gguf, tmp_path).set("general.alignment", kind, value).encode()
    with refused(r"model\.gguf: general\.alignment is .*; expected a positive power of two"):
        load_gguf(data, tmp_path)


def test_gguf_nested_array_is_refused(valid_gguf, tmp_path):
    data = parts(valid_gguf, tmp_path).set("x.nested", ARRAY, (ARRAY, [(4, [1])])).encode()
    with refused(r"metadata x\.nested is an array of GGUF type 9; arrays of numbers or strings"):
        load_gguf(data, tmp_path)


@pytest.mark.parametrize("qtype", ["I8", "Q8_1", "I32", "F64"])
def test_gguf_tensor_types_that_are_not_weights_are_refused(valid_gguf, tmp_path, qtype):
    p = parts(valid_gguf, tmp_path)
    p.tensor("output_norm.weight").type_id = gguf.GGMLQuantizationType[qtype]
    with refused(f"tensor output_norm.weight has ggml type {qtype}, which gemmaforge does not"):
        load_gguf(p.encode(), tmp_path)


@pytest.mark.parametrize("key", ["tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                                 "tokenizer.ggml.bos_token_id", "tokenizer.ggml.padding_token_id"])
def test_gguf_missing_tokenizer_keys_are_named(valid_gguf, tmp_path, key):
    with refused(f"model.gguf.*{key}"):
        load_gguf(parts(valid_gguf, tmp_path).drop(key).encode(), tmp_path)


def test_gguf_tokenizer_ids_and_lengths_are_checked(valid_gguf, tmp_path):
    data = parts(valid_gguf, tmp_path).set("tokenizer.ggml.eos_token_id", 4, 512).encode()
    with refused(r"tokenizer\.ggml\.eos_token_id is 512; expected a token id from 0 to 511"):
        load_gguf(data, tmp_path)
    data = parts(valid_gguf, tmp_path).set("tokenizer.ggml.scores", ARRAY,
                                           (6, [0.0] * 7)).encode()
    with refused("512 tokens, 7 scores and 512 token types"):
        load_gguf(data, tmp_path)
    data = parts(valid_gguf, tmp_path).set("tokenizer.ggml.tokens", ARRAY, (4, [1, 2])).encode()
    with refused(r"tokenizer\.ggml\.tokens is .*; expected an array of str"):
        load_gguf(data, tmp_path)


@pytest.mark.parametrize("key, kind, value", [
    ("gemma3.block_count", ARRAY, (4, [4])), ("gemma3.block_count", STRING, "4"),
    ("gemma3.attention.head_count", 6, 4.0)])
def test_gguf_config_fields_must_be_integers(valid_gguf, tmp_path, key, kind, value):
    data = parts(valid_gguf, tmp_path).set(key, kind, value).encode()
    with refused(f"metadata {key} is .*; expected an integer"):
        load_gguf(data, tmp_path)


def test_gguf_architecture_of_another_type_is_refused(valid_gguf, tmp_path):
    data = parts(valid_gguf, tmp_path).set("general.architecture", ARRAY,
                                           (STRING, ["gemma3"])).encode()
    with refused("holds a .* model; gemmaforge reads"):
        load_gguf(data, tmp_path)


# --- GGUF: counts and lengths bounded by the file -----------------------------------------------

def test_gguf_millions_of_empty_arrays_are_refused_before_reading_them(valid_gguf, tmp_path):
    p = parts(valid_gguf, tmp_path)
    p.metadata += [(f"x.{i}", ARRAY, (4, [])) for i in range(5000)]
    with refused("the metadata counts 5.*, over the 4096 gemmaforge reads"):
        load_gguf(p.encode(), tmp_path)
    p = parts(valid_gguf, tmp_path)
    p.n_metadata = 5_000_000
    with refused("the metadata counts 5000000, over the 4096"):
        load_gguf(p.encode(), tmp_path)


@pytest.mark.parametrize("count", [1 << 20, (1 << 64) - 1])
def test_gguf_array_lengths_are_bounded_by_the_file(valid_gguf, tmp_path, count):
    # The scores array claims `count` floats: there are not that many bytes left.
    key = encode_value(STRING, "tokenizer.ggml.scores")
    data = valid_gguf.replace(key + struct.pack("<IIQ", ARRAY, 6, 512),
                              key + struct.pack("<IIQ", ARRAY, 6, count))
    assert data != valid_gguf
    with refused("model.gguf.*(is truncated inside its GGUF header|counts .* over the)"):
        load_gguf(data, tmp_path)


def test_gguf_tensor_count_is_bounded(valid_gguf, tmp_path):
    p = parts(valid_gguf, tmp_path)
    p.n_tensors = 1 << 40
    with refused("the tensor directory counts 1099511627776, over the"):
        load_gguf(p.encode(), tmp_path)


@pytest.mark.parametrize("dims, message", [([], "has 0 dimensions"), ([1] * 5, "5 dimensions"),
                                           ([64, 0], "empty dimension"),
                                           ([1 << 62, 1 << 62], "truncated")])
def test_gguf_tensor_dimensions_are_checked(valid_gguf, tmp_path, dims, message):
    p = parts(valid_gguf, tmp_path)
    p.tensor("output_norm.weight").dims = dims
    with refused(message):
        load_gguf(p.encode(), tmp_path)


# --- GGUF: silently wrong weights that were -----------------------------------------------------

def test_gguf_misaligned_offset_is_refused(valid_gguf, tmp_path):
    p = parts(valid_gguf, tmp_path)
    p.tensor("output_norm.weight").offset += 12
    name = "output_norm.weight"
    offset = p.tensor(name).offset
    with refused(f"model.gguf: tensor {name}: data offset {offset} is not a multiple of the "
                 "alignment 32; the file is damaged or not a GGUF"):
        load_gguf(p.encode(), tmp_path)


def test_gguf_f16_declared_over_f32_data_is_refused(valid_gguf, tmp_path):
    p = parts(valid_gguf, tmp_path)
    p.tensor("output_norm.weight").type_id = int(gguf.GGMLQuantizationType.F16)
    with refused("after the end of output_norm.weight; a tensor's dtype or shape does not match"):
        load_gguf(p.encode(), tmp_path)


def test_gguf_overlapping_tensors_are_refused(valid_gguf, tmp_path):
    p = parts(valid_gguf, tmp_path)
    p.tensor("blk.0.attn_norm.weight").offset = p.tensor("blk.0.ffn_norm.weight").offset
    with refused("overlaps tensor"):
        load_gguf(p.encode(), tmp_path)


def test_gguf_duplicate_names_are_refused(valid_gguf, tmp_path):
    p = parts(valid_gguf, tmp_path)
    p.tensor("blk.0.attn_norm.weight").name = "blk.0.ffn_norm.weight"
    with refused("tensor blk.0.ffn_norm.weight appears twice"):
        load_gguf(p.encode(), tmp_path)
    p = parts(valid_gguf, tmp_path)
    p.metadata.append(p.metadata[0])
    with refused(f"metadata {p.metadata[0][0]} appears twice"):
        load_gguf(p.encode(), tmp_path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_gguf_non_finite_weights_name_the_tensor(valid_gguf, tmp_path, value):
    p = parts(valid_gguf, tmp_path)
    norm = p.tensor("output_norm.weight")
    norm.data = np.full(len(norm.data) // 4, value, np.float32).tobytes()
    with refused("model.gguf: tensor output_norm.weight holds NaN or infinite values"):
        load_gguf(p.encode(), tmp_path)


def test_gguf_bytes_after_the_last_tensor_are_refused(valid_gguf, tmp_path):
    with refused("bytes follow the last tensor"):
        load_gguf(valid_gguf + b"\0" * 64, tmp_path)


# --- special files ------------------------------------------------------------------------------

def test_fifo_and_device_checkpoints_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with refused("model.gguf is a FIFO, not a regular file"):
        load(PRESET, checkpoint=fifo)
    with refused("/dev/zero is a device, not a regular file"):
        load(PRESET, checkpoint="/dev/zero")
    os.symlink("/dev/zero", tmp_path / "zero.safetensors")
    with refused("zero.safetensors is a device"):
        load(PRESET, checkpoint=tmp_path / "zero.safetensors")


def test_fifo_device_and_folder_tokenizers_are_refused(tmp_path):
    with refused("/dev/zero is a device"):
        GemmaTokenizer.from_file("/dev/zero")
    with refused("is a directory"):
        GemmaTokenizer.from_file(tmp_path)
    os.mkfifo(tmp_path / "tokenizer.model")
    with refused("tokenizer.model is a FIFO"):
        load(PRESET, tokenizer=tmp_path / "tokenizer.model")


def test_special_files_in_an_hf_folder_are_refused(tmp_path, params):
    folder = tmp_path / "hf"
    write_hf_folder(folder, CONFIG, params, files=1)
    (folder / "tokenizer.model").unlink()
    os.mkfifo(folder / "tokenizer.model")
    with refused("tokenizer.model is a FIFO"):
        load(checkpoint=folder)
    (folder / "config.json").unlink()
    os.symlink("/dev/zero", folder / "config.json")
    with refused("config.json is a device"):
        load(checkpoint=folder)


def test_special_files_in_an_orbax_folder_are_refused(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    os.mkfifo(folder / "_METADATA")
    with refused("_METADATA is a FIFO"):
        read_orbax(folder, CONFIG)


# --- safetensors ------------------------------------------------------------------------------

NORM = "model.norm.weight"


@pytest.mark.parametrize("mutate, message", [
    (lambda h: list(h), r"the safetensors header is a JSON list; expected an object"),
    (lambda h: {**h, NORM: {"dtype": "F32", "shape": [64]}},
     "tensor model.norm.weight is .*; expected an object with dtype, shape and data_offsets"),
    (lambda h: {**h, NORM: {**h[NORM], "data_offsets": h[NORM]["data_offsets"][::-1]}},
     r"data_offsets \[\d+, \d+\]; expected \[start, end\] with 0 <= start <= end"),
    (lambda h: {**h, NORM: {**h[NORM], "data_offsets": [-256, 0]}},
     "expected .start, end. with 0 <= start <= end"),
    (lambda h: {**h, NORM: {**h[NORM], "data_offsets": [h[NORM]["data_offsets"][0],
                                                         h[NORM]["data_offsets"][0] + 8]}},
     r"is F32 \[64\], 256 bytes, but its data_offsets .* span 8"),
    (lambda h: {**h, NORM: {**h[NORM], "dtype": "F16"}},
     r"is F16 \[64\], 128 bytes, but its data_offsets .* span 256"),
    (lambda h: {**h, NORM: {**h[NORM], "dtype": "Q4"}}, "has dtype Q4; expected one of"),
    (lambda h: {**h, NORM: {**h[NORM], "shape": [64.0]}}, "has shape .*; expected a list"),
    (lambda h: {**h, "model.layers.0.input_layernorm.weight": h[NORM]}, "overlaps tensor"),
])
def test_safetensors_header_lies_are_refused(valid_safetensors, tmp_path, mutate, message):
    header, payload = safetensors_parts(valid_safetensors)
    with refused("model.safetensors.*" + message):
        load_safetensors(encode_safetensors(mutate(header), payload), tmp_path)


def test_safetensors_repeated_keys_and_trailing_bytes_are_refused(valid_safetensors, tmp_path):
    header, payload = safetensors_parts(valid_safetensors)
    raw = json.dumps(header).encode()
    twice = raw[:-1] + b', "' + NORM.encode() + b'": ' + json.dumps(header[NORM]).encode() + b"}"
    with refused(f"not valid JSON: the key {NORM} appears twice"):
        load_safetensors(encode_safetensors(twice, payload), tmp_path)
    with refused("8 bytes follow the last tensor"):
        load_safetensors(valid_safetensors + b"\0" * 8, tmp_path)
    with refused("a header of 1000000 bytes in a file of"):
        load_safetensors(struct.pack("<Q", 1_000_000) + b"{}", tmp_path)


def test_safetensors_truncated_data_is_refused(valid_safetensors, tmp_path):
    with refused(f"model.safetensors is truncated: tensor {NORM} ends at byte"):
        load_safetensors(valid_safetensors[:-1], tmp_path)


def test_safetensors_non_finite_weights_name_the_tensor(valid_safetensors, tmp_path):
    header, payload = safetensors_parts(valid_safetensors)
    start, end = header[NORM]["data_offsets"]
    payload = payload[:start] + np.full(64, np.nan, np.float32).tobytes() + payload[end:]
    with refused(f"tensor {NORM} holds NaN or infinite values"):
        load_safetensors(encode_safetensors(header, payload), tmp_path)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "a/../../x"])
def test_index_entries_outside_the_folder_are_refused(tmp_path, params, name):
    folder = tmp_path / "hf"
    write_hf_folder(folder, CONFIG, params, files=2)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"][NORM] = name
    index.write_text(json.dumps(data))
    with refused(f"model.safetensors.index.json names the file {name}, outside"):
        load(checkpoint=folder)


def test_index_symlinks_out_of_the_folder_are_refused(tmp_path, params):
    folder = tmp_path / "hf"
    write_hf_folder(folder, CONFIG, params, files=1)
    shard = next(folder.glob("*.safetensors"))
    outside = tmp_path / "elsewhere.safetensors"
    shard.rename(outside)
    shard.symlink_to(outside)
    with refused("leads to .*elsewhere.safetensors, outside"):
        load(checkpoint=folder)


def test_hugging_face_cache_links_are_followed(tmp_path, params):
    """`snapshots/<revision>/<file>` -> `../../blobs/<hash>`, as huggingface_hub lays out."""
    folder = tmp_path / "models--x" / "snapshots" / "abc"
    write_hf_folder(folder, CONFIG, params, files=1)
    blobs = tmp_path / "models--x" / "blobs"
    blobs.mkdir()
    for file in list(folder.iterdir()):
        file.rename(blobs / file.name)
        file.symlink_to(Path("../../blobs") / file.name)
    assert len(safetensors_files(folder)) == 1
    assert not load(checkpoint=folder).random_weights


def test_a_tensor_in_two_shards_is_refused(tmp_path, params, valid_safetensors):
    folder = tmp_path / "hf"
    write_hf_folder(folder, CONFIG, params, files=1)
    header, payload = safetensors_parts(valid_safetensors)
    start, end = header[NORM]["data_offsets"]
    (folder / "again.safetensors").write_bytes(encode_safetensors(
        {NORM: {**header[NORM], "data_offsets": [0, end - start]}}, payload[start:end]))
    (folder / "model.safetensors.index.json").unlink()
    with refused(f"tensor {NORM} fills final_norm.scale, which another tensor already filled"):
        load(checkpoint=folder)


# --- HF config.json ---------------------------------------------------------------------------

def hf_folder_config(tmp_path: Path, params, config_json: object) -> Path:
    folder = tmp_path / "hf"
    write_hf_folder(folder, CONFIG, params, files=1)
    (folder / "config.json").write_text(json.dumps(config_json))
    return folder


@pytest.mark.parametrize("change, message", [
    ({"num_hidden_layers": 1e7}, "num_hidden_layers is 10000000.0; expected an integer from 1 "
                                 "to 1024"),
    ({"num_hidden_layers": 10**7}, "num_hidden_layers is 10000000; expected an integer"),
    ({"num_attention_heads": 0}, "num_attention_heads is 0; expected an integer from 1"),
    ({"num_key_value_heads": 3}, "num_heads .4. must be a multiple of num_kv_heads .3."),
    ({"hidden_size": -64}, "hidden_size is -64"),
    ({"vocab_size": 1 << 40}, "vocab_size is 1099511627776"),
    ({"layer_types": ["sliding_attention", "weird_attention"] * 2},
     "layer type weird_attention is not one of sliding_attention, full_attention"),
    ({"layer_types": ["full_attention"]}, "expected a list of 4 .num_hidden_layers. layer types"),
    ({"rope_parameters": [1]}, "rope_parameters is .1.; expected an object"),
    ({"rms_norm_eps": "small"}, "rms_norm_eps is small; expected a positive number"),
    ({"eos_token_id": [9999]}, "eos_token_id is 9999; expected a token id from 0 to 511"),
    ({"model_type": ["gemma3_text"]}, r"model_type \['gemma3_text'\]; gemmaforge reads"),
])
def test_hf_config_fields_are_checked(tmp_path, params, change, message):
    folder = hf_folder_config(tmp_path, params, {**config_to_hf(CONFIG), **change})
    with refused("hf/config.json.*" + message):
        load(checkpoint=folder)


def test_hf_config_without_a_field_names_it(tmp_path, params):
    hf = config_to_hf(CONFIG)
    del hf["num_attention_heads"]
    with refused("hf/config.json lacks num_attention_heads"):
        load(checkpoint=hf_folder_config(tmp_path, params, hf))


@pytest.mark.parametrize("content, message", [
    ([1, 2], "config.json holds a JSON list; expected an object"),
    ("[" * 100_000, "config.json is not valid JSON"),
    ({"pad": "x" * (2 << 20)}, "config.json is over 1 MiB"),
])
def test_hf_config_file_is_checked(tmp_path, params, content, message):
    folder = tmp_path / "hf"
    write_hf_folder(folder, CONFIG, params, files=1)
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / "config.json").write_text(text)
    with refused(message):
        read_config(folder)


def test_artifact_config_dict_is_bounded():
    data = {**config_to_dict(CONFIG), "num_layers": 10**7}
    with refused("num_layers is 10000000; expected an integer from 1 to 1024"):
        config_from_dict(data)
    with refused("invalid model config: a list"):
        config_from_dict([1])


# --- hypothesis: any mutation loads or is one clean error ---------------------------------------

def outcome(attempt) -> str:
    """'loaded' or 'refused'; any other exception fails the test."""
    try:
        attempt()
    except mz.GemmaforgeError as error:
        assert "\n" not in str(error), str(error)
        return "refused"
    return "loaded"


# Values a field may be replaced by: those near the limits, of the wrong sign or type.
INTERESTING_INTS = [0, 1, 2, 3, 7, 31, 32, 33, 64, 255, 256, 4096, 1 << 20, 1 << 31, (1 << 32) - 1,
                    1 << 32, 1 << 62, (1 << 64) - 1]
json_values = st.recursive(
    st.none() | st.booleans() | st.sampled_from(INTERESTING_INTS + [-1, -(1 << 40)])
    | st.integers(-1000, 1000) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=8)


class HypothesisDraw:
    """The choices a mutation makes, drawn by hypothesis (`fuzz_readers.RandomDraw` draws the
    same from a seeded random generator)."""

    def __init__(self, data: st.DataObject):
        self.data = data

    def choice(self, options):
        return self.data.draw(st.sampled_from(list(options)))

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def json(self):
        return self.data.draw(json_values)


GGUF_FIELDS = ["u64", "bytes", "truncate", "tensor_type", "tensor_dims", "tensor_offset",
               "tensor_name", "tensor_data", "metadata_kind", "metadata_array", "drop_key"]


def _mutate_gguf_tensor(draw, field: str, p: GgufParts) -> None:
    tensor = draw.choice(p.tensors)
    if field == "tensor_type":
        tensor.type_id = draw.choice([int(t) for t in gguf.GGMLQuantizationType] + [99, 1 << 31])
    elif field == "tensor_dims":
        tensor.dims = [draw.choice(INTERESTING_INTS) for _ in range(draw.integer(0, 5))]
    elif field == "tensor_offset":
        offsets = INTERESTING_INTS + [tensor.offset + 32, max(0, tensor.offset - 32)]
        tensor.offset = draw.choice(offsets)
    elif field == "tensor_name":
        tensor.name = draw.choice([t.name for t in p.tensors] + ["", "x\n", "blk.99.attn_q.weight"])
    else:
        size = draw.choice([0, 1, len(tensor.data) // 2, len(tensor.data) * 2])
        tensor.data = (tensor.data * 2)[:size]
        if draw.choice([False, True]):
            p.relayout()


def mutate_gguf(draw, valid: bytes, scratch: Path) -> bytes:
    """One random break of the valid GGUF: raw bytes of its header, or one field of its
    parts."""
    field = draw.choice(GGUF_FIELDS)
    p = parts(valid, scratch)
    header_end = len(valid) - max(t.offset + len(t.data) for t in p.tensors)
    raw = bytearray(valid)
    if field == "u64":
        at = draw.integer(4, header_end - 8)
        raw[at : at + 8] = struct.pack("<Q", draw.choice(INTERESTING_INTS))
        return bytes(raw)
    if field == "bytes":
        for _ in range(draw.integer(1, 8)):
            raw[draw.integer(0, header_end - 1)] = draw.integer(0, 255)
        return bytes(raw)
    if field == "truncate":
        return valid[: draw.integer(0, len(valid) - 1)]
    if field.startswith("tensor"):
        _mutate_gguf_tensor(draw, field, p)
        return p.encode()
    index = draw.integer(0, len(p.metadata) - 1)
    key = p.metadata[index][0]
    if field == "drop_key":
        del p.metadata[index]
    elif field == "metadata_kind":
        kind = draw.choice([4, 5, 6, 7, 10, 11, 12, STRING])
        p.metadata[index] = (key, kind, {STRING: "x", 6: 1.5, 12: 1.5, 7: True}.get(kind, 1))
    else:
        item = draw.choice([0, 4, 5, 6, STRING])
        p.metadata[index] = (key, ARRAY, (item, [] if draw.choice([False, True]) else
                                          ["x"] if item == STRING else [1]))
    return p.encode()


SAFETENSORS_FIELDS = ["bytes", "u64", "truncate", "entry_field", "drop_field", "entry",
                      "rename"]


def mutate_safetensors(draw, valid: bytes) -> bytes:
    """One random break of the valid safetensors file: its size field, its JSON bytes, or one
    field of one entry."""
    field = draw.choice(SAFETENSORS_FIELDS)
    header, payload = safetensors_parts(valid)
    raw = bytearray(valid)
    if field == "bytes":
        for _ in range(draw.integer(1, 8)):
            raw[draw.integer(8, len(valid) - len(payload) - 1)] = draw.integer(32, 126)
        return bytes(raw)
    if field == "u64":
        raw[:8] = struct.pack("<Q", draw.choice(INTERESTING_INTS))
        return bytes(raw)
    if field == "truncate":
        return valid[: draw.integer(0, len(valid) - 1)]
    name = draw.choice(sorted(header))
    key = draw.choice(["dtype", "shape", "data_offsets"])
    if field == "entry_field":
        header[name] = {**header[name], key: draw.json()}
    elif field == "drop_field":
        header[name] = {k: v for k, v in header[name].items() if k != key}
    elif field == "entry":
        header[name] = draw.json()
    else:
        header[draw.choice(sorted(header))] = header.pop(name)
    return encode_safetensors(header, payload)


HF_KEYS = sorted(config_to_hf(CONFIG)) + ["text_config", "rope_scaling"]


def mutate_hf_config(draw) -> dict:
    """One to three fields of the tiny config.json replaced by any JSON value, or dropped."""
    hf = config_to_hf(CONFIG)
    for _ in range(draw.integer(1, 3)):
        key = draw.choice(HF_KEYS)
        if draw.choice([False, True]):
            hf.pop(key, None)
        else:
            hf[key] = draw.json()
    return hf


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(data=st.data())
def test_any_broken_gguf_loads_or_is_refused_cleanly(valid_gguf, data):
    with tempfile.TemporaryDirectory() as scratch:
        crafted = mutate_gguf(HypothesisDraw(data), valid_gguf, Path(scratch))
        outcome(lambda: load_gguf(crafted, Path(scratch)))


@FUZZ
@given(data=st.data())
def test_any_broken_safetensors_loads_or_is_refused_cleanly(valid_safetensors, data):
    crafted = mutate_safetensors(HypothesisDraw(data), valid_safetensors)
    with tempfile.TemporaryDirectory() as scratch:
        outcome(lambda: load_safetensors(crafted, Path(scratch)))


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_broken_hf_config_gives_a_config_or_a_clean_error(data):
    hf = mutate_hf_config(HypothesisDraw(data))
    if outcome(lambda: config_from_hf(hf)) == "loaded":
        config = config_from_hf(hf)
        assert 1 <= config.num_layers <= 1024 and config.vocab_size <= 1 << 20
        assert all(math.isfinite(v) and v > 0 for v in (config.rope_base_global,
                                                       config.norm_eps))
