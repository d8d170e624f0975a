"""GGUF checkpoints (llama.cpp's format) of Gemma, Gemma 2 and Gemma 3.

Every quantization type the `gguf` package knows is dequantized to float32, one tensor (and for
large ones one block of rows) at a time, read with `os.pread` so the file's pages never pile up
in memory. llama.cpp stores Gemma's norm weights with the +1 already added: we subtract it.
Linear weights are [out, in] as in HF, so the HF table converts them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterator

import gguf
import numpy as np

from model_zoo.checkpoints.collect import Collector, read_rows, unexpected
from model_zoo.checkpoints.gguf_file import TensorInfo, read_header
from model_zoo.checkpoints.hf_names import TensorMap, hf_tensor_map
from model_zoo.config import Family, ModelConfig, is_integer
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import is_matrix
from model_zoo.spm import GemmaTokenizer
from model_zoo.transformer import Params
from model_zoo.tree import path_name
from model_zoo.untrusted import (
    check_finite,
    open_regular,
    reading,
    regular_size,
    shown,
)

ARCHITECTURES = {"gemma": Family.GEMMA1, "gemma2": Family.GEMMA2, "gemma3": Family.GEMMA3}

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def hf_name(gguf_name: str, family: Family) -> str | None:
    """The HF name of a GGUF tensor, or None for one Gemma does not have."""
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    match = _BLOCK.fullmatch(gguf_name)
    if not match:
        return None
    index, kind = match.groups()
    if kind == "ffn_norm":  # the norm before the MLP; Gemma 1's HF name differs
        kind_hf = ("post_attention_layernorm" if family is Family.GEMMA1
                   else "pre_feedforward_layernorm")
    else:
        kind_hf = _LAYER_NAMES.get(kind)
        if kind_hf is None:
            return None
    return f"model.layers.{index}.{kind_hf}.weight"


_TOKENIZER_IDS = {"bos_id": "tokenizer.ggml.bos_token_id",
                  "eos_id": "tokenizer.ggml.eos_token_id",
                  "pad_id": "tokenizer.ggml.padding_token_id",
                  "unk_id": "tokenizer.ggml.unknown_token_id"}
_GGUF = "a GGUF"


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One GGUF tensor as the file holds it.

    Attributes:
      qtype: its ggml type.
      shape: the file's shape, rows (our outputs) first.
      raw: a matrix's bytes (uint8), blocks as the file stores them; None for a vector.
      value: a vector, float32 in our layout; None for a matrix.
      to_ours: a matrix's float array of the file's shape -> our layout; None for a vector.
    """

    qtype: gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    raw: np.ndarray | None
    value: np.ndarray | None
    to_ours: Callable[[np.ndarray], np.ndarray] | None


class GGUFCheckpoint:
    """An opened GGUF file: metadata, tensor directory and the tokenizer vocabulary."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with reading(self.path, _GGUF):
            self.metadata, self.tensors = read_header(self.path, regular_size(self.path))
        self.architecture = self.metadata.get("general.architecture")
        if not isinstance(self.architecture, str) or self.architecture not in ARCHITECTURES:
            raise GemmaforgeError(f"{self.path} holds a {shown(self.architecture)!r} model; "
                                  f"gemmaforge reads {', '.join(ARCHITECTURES)}")

    @property
    def family(self) -> Family:
        return ARCHITECTURES[self.architecture]

    def _integer(self, key: str) -> int | None:
        """An integer metadata field, None when absent."""
        value = self.metadata.get(key)
        if value is not None and not is_integer(value):
            raise GemmaforgeError(f"{self.path}: metadata {key} is {shown(value)}; expected an "
                                  "integer")
        return value

    def _array(self, key: str, kind: type) -> list | np.ndarray:
        """The tokenizer array `key`: strings (`kind` str) or numbers (`kind` float or int)."""
        value = self.metadata.get(key)
        if value is None:
            raise GemmaforgeError(f"{self.path} has tokenizer.ggml.tokens but lacks {key}; "
                                  "pass --tokenizer")
        numeric = {float: "iuf", int: "iu"}.get(kind)
        if (isinstance(value, list) if kind is str else
                isinstance(value, np.ndarray) and value.dtype.kind in numeric):
            return value
        raise GemmaforgeError(f"{self.path}: metadata {key} is {shown(value)}; expected an "
                              f"array of {kind.__name__}")

    def check_config(self, config: ModelConfig) -> None:
        """Refuses a file whose metadata contradicts the preset, naming the first differences."""
        arch = self.architecture
        problems = []
        if ARCHITECTURES[arch] is not config.family:
            problems.append(f"general.architecture is {arch} in the file, "
                            f"{config.family.value} in {config.name}")
        expected = {
            f"{arch}.block_count": config.num_layers,
            f"{arch}.embedding_length": config.embed_dim,
            f"{arch}.feed_forward_length": config.hidden_dim,
            f"{arch}.attention.head_count": config.num_heads,
            f"{arch}.attention.head_count_kv": config.num_kv_heads,
            f"{arch}.attention.key_length": config.head_dim,
            f"{arch}.attention.sliding_window": config.sliding_window,
        }
        for key, want in expected.items():
            got = self._integer(key)
            if got is not None and want is not None and got != want:
                problems.append(f"{key} is {got} in the file, {want} in {config.name}")
        vocab = (len(self._array("tokenizer.ggml.tokens", str))
                 if "tokenizer.ggml.tokens" in self.metadata else 0)
        if vocab and vocab != config.vocab_size:
            problems.append(f"the vocabulary has {vocab} tokens, {config.name} {config.vocab_size}")
        if problems:
            raise GemmaforgeError(f"{self.path} does not match preset {config.name}: "
                                  + "; ".join(problems[:3]))

    def params(self, config: ModelConfig, shardings: Params | None = None) -> Params:
        """The float32 parameters, checked against `config`."""
        self.check_config(config)
        table = hf_tensor_map(config)
        collector = Collector(config, self.path, shardings)
        extra = []
        with reading(self.path, _GGUF), open_regular(self.path) as file:
            for tensor in self.tensors:
                name = hf_name(tensor.name, config.family)
                if name not in table:
                    extra.append(tensor.name)
                    continue
                entry = table[name]
                collector.check_shape(tensor.name, tensor.shape, entry.hf_shape)
                collector.add(entry.path, self._read(file.fileno(), tensor, entry), tensor.name)
        if extra:
            raise unexpected(self.path, extra)
        return collector.finish()

    def stored_tensors(self, config: ModelConfig) -> Iterator[tuple[str, StoredTensor]]:
        """(dotted name, StoredTensor) for every parameter, checked against `config`: each
        matrix as the file stores it (its blocks undecoded: `quantize.source` reads the
        grids), each vector (norm scales) as float32 in our layout."""
        self.check_config(config)
        table = hf_tensor_map(config)
        extra = [t.name for t in self.tensors if hf_name(t.name, config.family) not in table]
        if extra:
            raise unexpected(self.path, extra)
        checker = Collector(config, self.path)
        with reading(self.path, _GGUF), open_regular(self.path) as file:
            for tensor in self.tensors:
                entry = table[hf_name(tensor.name, config.family)]
                name = path_name(entry.path)
                checker.check_shape(tensor.name, tensor.shape, entry.hf_shape)
                if not is_matrix(name):
                    value = self._read(file.fileno(), tensor, entry)
                    check_finite(self.path, tensor.name, value)
                    yield name, StoredTensor(tensor.qtype, tensor.shape, None, value, None)
                    continue
                raw = os.pread(file.fileno(), tensor.n_bytes, tensor.offset)
                if len(raw) != tensor.n_bytes:
                    raise GemmaforgeError(f"{self.path} is truncated inside tensor {tensor.name}")
                yield name, StoredTensor(tensor.qtype, tensor.shape,
                                         np.frombuffer(raw, np.uint8), None,
                                         lambda w, entry=entry: entry.to_ours(
                                             w.reshape(entry.hf_shape)))

    def _read(self, fd: int, tensor: TensorInfo, entry: TensorMap) -> np.ndarray:
        """One tensor in our layout, dequantized a block of rows at a time."""
        is_norm = entry.path[-1] == "scale"

        def dequantized(start: int, stop: int) -> np.ndarray:
            size = (stop - start) * tensor.row_bytes
            raw = os.pread(fd, size, tensor.offset + start * tensor.row_bytes)
            if len(raw) != size:
                raise GemmaforgeError(f"{self.path} is truncated inside tensor {tensor.name}")
            block = np.frombuffer(raw, np.uint8).reshape(stop - start, tensor.row_bytes)
            values = gguf.quants.dequantize(block, tensor.qtype).astype(np.float32, copy=False)
            # llama.cpp stores Gemma's RMSNorm multiplier (1 + w); we keep w.
            return values - 1.0 if is_norm else values

        return read_rows(entry, tensor.rows, dequantized)

    def tokenizer(self) -> GemmaTokenizer:
        """The SentencePiece tokenizer rebuilt from the file's vocabulary, every array and id
        checked against the vocabulary's length first."""
        if "tokenizer.ggml.tokens" not in self.metadata:
            raise GemmaforgeError(f"{self.path} carries no tokenizer vocabulary; pass --tokenizer")
        pieces = self._array("tokenizer.ggml.tokens", str)
        if not pieces:
            raise GemmaforgeError(f"{self.path}: tokenizer.ggml.tokens is empty; expected the "
                                  "vocabulary")
        scores = self._array("tokenizer.ggml.scores", float)
        types = self._array("tokenizer.ggml.token_type", int)
        if not len(pieces) == len(scores) == len(types):
            raise GemmaforgeError(f"{self.path}: the tokenizer has {len(pieces)} tokens, "
                                  f"{len(scores)} scores and {len(types)} token types; expected "
                                  "one of each per token")
        ids = {}
        for argument, key in _TOKENIZER_IDS.items():
            value = self._integer(key)
            if value is None or not 0 <= value < len(pieces):
                raise GemmaforgeError(f"{self.path}: metadata {key} is {shown(value)}; expected "
                                      f"a token id from 0 to {len(pieces) - 1}")
            ids[argument] = value
        with reading(self.path, _GGUF):
            try:
                return GemmaTokenizer.from_vocab(pieces, scores, types, **ids)
            except GemmaforgeError as error:
                raise GemmaforgeError(f"{self.path}: the tokenizer vocabulary: {error}") from None
