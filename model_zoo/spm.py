"""The Gemma SentencePiece tokenizer, loaded from a `tokenizer.model` or rebuilt from the
vocabulary a GGUF file carries.

A GGUF keeps the pieces (with ' ' where SentencePiece writes '▁'), their scores and types, but no
ModelProto. The proto rebuilt here follows Gemma's: BPE with byte fallback and split digits, an
identity normaliser without a dummy prefix, pad/eos/bos as CONTROL, unk as UNKNOWN, and every
other GGUF "control" piece (`<start_of_turn>`, `<mask>`, `<unusedN>`...) as USER_DEFINED so that
it matches inside raw text. Tests check the ids against the real `tokenizer.model`.
"""

from __future__ import annotations

import os

import numpy as np
import sentencepiece
from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from model_zoo.errors import GemmaforgeError
from model_zoo.tokenizer import END_OF_TURN, ByteTokenizer
from model_zoo.untrusted import one_line, read_small

# Gemma 3's 262144-piece tokenizer.model is 4.5 MiB.
MAX_TOKENIZER_BYTES = 64 << 20

# GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*) that the proto keeps apart; the others
# (unknown 2, control 3, user-defined 4, unused 5) are told apart by id.
GGUF_NORMAL = 1
GGUF_BYTE = 6
_Piece = spm_pb2.ModelProto.SentencePiece


class GemmaTokenizer:
    """Text <-> ids with Gemma's SentencePiece model."""

    def __init__(self, model_proto: bytes):
        self._processor = sentencepiece.SentencePieceProcessor()
        try:
            self._processor.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError) as error:
            raise GemmaforgeError(f"not a SentencePiece model: {one_line(str(error))}") from None
        except UnicodeDecodeError:  # SentencePiece quoted bytes of the file in its message
            raise GemmaforgeError("not a SentencePiece model (it does not parse)") from None
        self.model_proto = model_proto
        self.bos_id = self._processor.bos_id()
        self.eos_id = self._processor.eos_id()
        self.pad_id = self._processor.pad_id()
        self.vocab_size = self._processor.get_piece_size()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> GemmaTokenizer:
        """A `tokenizer.model`: a regular file of bounded size (it may come with a download)."""
        if not os.path.lexists(path):
            raise GemmaforgeError(f"cannot read tokenizer {path}: no such file")
        data = read_small(path, MAX_TOKENIZER_BYTES, "a tokenizer.model")
        try:
            return cls(data)
        except GemmaforgeError as error:
            raise GemmaforgeError(f"{path}: {error}") from None

    @classmethod
    def from_vocab(cls, pieces: list[str], scores: np.ndarray, types: np.ndarray, *,
                   bos_id: int, eos_id: int, pad_id: int, unk_id: int,
                   escape_whitespace: bool = True) -> GemmaTokenizer:
        """Rebuilds the ModelProto from a GGUF-style vocabulary (`escape_whitespace` False keeps
        spaces as spaces instead of '▁', for byte-level vocabularies)."""
        ids = (bos_id, eos_id, pad_id, unk_id)
        if not pieces or not all(0 <= i < len(pieces) for i in ids):
            raise GemmaforgeError(f"special token ids {list(ids)} do not fit a vocabulary of "
                                  f"{len(pieces)} pieces")
        proto = spm_pb2.ModelProto()
        special = {bos_id, eos_id, pad_id}
        for index, (piece, score, kind) in enumerate(zip(pieces, scores, types, strict=True)):
            entry = proto.pieces.add()
            entry.piece = piece.replace(" ", "\u2581")
            # GGUF gives non-normal pieces a score of -1000; SentencePiece ignores it and
            # Gemma's model stores 0. NORMAL is the proto's default type, left unset as Gemma's.
            entry.score = float(score) if kind == GGUF_NORMAL else 0.0
            if index == unk_id:
                entry.type = _Piece.UNKNOWN
            elif kind == GGUF_BYTE:
                entry.type = _Piece.BYTE
            elif kind != GGUF_NORMAL:
                entry.type = _Piece.CONTROL if index in special else _Piece.USER_DEFINED
        trainer = proto.trainer_spec
        trainer.model_type = spm_pb2.TrainerSpec.BPE
        trainer.vocab_size = len(pieces)
        trainer.byte_fallback = True
        trainer.split_digits = True
        trainer.split_by_unicode_script = True
        trainer.split_by_number = True
        trainer.split_by_whitespace = False
        trainer.allow_whitespace_only_pieces = True
        trainer.unk_id, trainer.bos_id, trainer.eos_id, trainer.pad_id = (unk_id, bos_id, eos_id,
                                                                          pad_id)
        trainer.bos_piece, trainer.eos_piece = pieces[bos_id], pieces[eos_id]
        normalizer = proto.normalizer_spec
        normalizer.name = "identity"
        normalizer.precompiled_charsmap = b""
        normalizer.add_dummy_prefix = False
        normalizer.remove_extra_whitespaces = False
        if not escape_whitespace:
            normalizer.escape_whitespaces = False
        return cls(proto.SerializeToString())

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = self._processor.encode(text)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    def piece_to_id(self, piece: str) -> int:
        index = self._processor.piece_to_id(piece)
        if index == self._processor.unk_id() and piece != "<unk>":
            raise GemmaforgeError(f"the tokenizer has no piece {piece!r}")
        return index

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.piece_to_id(END_OF_TURN), self.eos_id)


def sentencepiece_twin(tokenizer: ByteTokenizer, vocab_size: int | None = None) -> bytes:
    """`tokenizer` as a SentencePiece model (turn markers user-defined, every byte a
    byte-fallback piece), for runtimes that read only tokenizer.model files. `vocab_size` pads
    it with `<unusedN>` pieces, as Gemma's vocabulary is padded, so that every id a model can
    produce decodes."""
    pieces = [*tokenizer.SPECIALS, *(f"<0x{b:02X}>" for b in range(256))]
    types = [3, 3, 3, 2, 4, 4] + [6] * 256  # GGUF token types: control, unknown, user, byte
    extra = max(0, (vocab_size or 0) - len(pieces))
    pieces += [f"<unused{i}>" for i in range(extra)]
    types += [4] * extra
    return GemmaTokenizer.from_vocab(pieces, [0.0] * len(pieces), types,
                                     bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=0,
                                     unk_id=3, escape_whitespace=False).model_proto
