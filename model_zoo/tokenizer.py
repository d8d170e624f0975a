"""Tokenizers and the Gemma chat template.

`GemmaTokenizer` (in `model_zoo.spm`) is the real SentencePiece tokenizer. `ByteTokenizer` is for
models without one — the tiny test presets and random-weight runs of the large presets: the four
Gemma special ids, the two turn markers, then one id per byte.
"""

from __future__ import annotations

import re
from typing import Protocol

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"


class Tokenizer(Protocol):
    """Text <-> ids. `stop_ids` end a generated turn (`<end_of_turn>` and `<eos>`)."""

    bos_id: int
    eos_id: int
    vocab_size: int

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    @property
    def stop_ids(self) -> tuple[int, ...]: ...


def chat_prompt(user_text: str) -> str:
    """One user turn in the Gemma chat format, ending where the model's turn begins.

    Gemma 1, 2 and 3 share it (the model ends its turn with `<end_of_turn>`).
    """
    return f"{START_OF_TURN}user\n{user_text}{END_OF_TURN}\n{START_OF_TURN}model\n"


class ByteTokenizer:
    """UTF-8 bytes as ids. pad 0, eos 1, bos 2, unk 3 (Gemma's), turn markers 4 and 5."""

    SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, START_OF_TURN: 4, END_OF_TURN: 5}
    BYTE_OFFSET = 6
    bos_id = 2
    eos_id = 1
    vocab_size = BYTE_OFFSET + 256

    # As in Gemma's SentencePiece model, only the turn markers are matched inside text; "<eos>"
    # written in a prompt is five bytes.
    _turn_markers = {4: START_OF_TURN, 5: END_OF_TURN}
    _marker_pattern = re.compile(f"({re.escape(START_OF_TURN)}|{re.escape(END_OF_TURN)})")

    def encode(self, text: str, *, add_bos: bool = True) -> list[int]:
        ids = [self.bos_id] if add_bos else []
        for piece in self._marker_pattern.split(text):
            if piece in (START_OF_TURN, END_OF_TURN):
                ids.append(self.SPECIALS[piece])
            else:
                ids.extend(self.BYTE_OFFSET + b for b in piece.encode("utf-8"))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Bytes back to text; turn markers as their names, pad/eos/bos/unk dropped."""
        out, pending = [], bytearray()
        for i in ids:
            if self.BYTE_OFFSET <= i < self.vocab_size:
                pending.append(i - self.BYTE_OFFSET)
                continue
            out.append(pending.decode("utf-8", errors="replace"))
            pending = bytearray()
            if i in self._turn_markers:
                out.append(self._turn_markers[i])
            elif i >= self.vocab_size:
                out.append("\N{REPLACEMENT CHARACTER}")
        out.append(pending.decode("utf-8", errors="replace"))
        return "".join(out)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.SPECIALS[END_OF_TURN], self.eos_id)

    def sentencepiece_model(self, vocab_size: int | None = None) -> bytes:
        """The same tokenizer as a SentencePiece model (turn markers user-defined, every byte a
        byte-fallback piece), for runtimes that read only tokenizer.model files. `vocab_size`
        pads it with `<unusedN>` pieces, as Gemma's vocabulary is padded, so that every id a
        model can produce decodes."""
        from model_zoo.spm import GemmaTokenizer

        pieces = [*self.SPECIALS, *(f"<0x{b:02X}>" for b in range(256))]
        types = [3, 3, 3, 2, 4, 4] + [6] * 256  # GGUF token types: control, unknown, user, byte
        extra = max(0, (vocab_size or 0) - len(pieces))
        pieces += [f"<unused{i}>" for i in range(extra)]
        types += [4] * extra
        return GemmaTokenizer.from_vocab(pieces, [0.0] * len(pieces), types, bos_id=self.bos_id,
                                         eos_id=self.eos_id, pad_id=0, unk_id=3,
                                         escape_whitespace=False).model_proto
