"""Tokenizers and the Gemma chat template.

`GemmaTokenizer` (in `model_zoo.spm`) is the real SentencePiece tokenizer. `ByteTokenizer` is for
models without one — the tiny test presets and random-weight runs of the large presets: the four
Gemma special ids, the two turn markers, then one id per byte.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from model_zoo.errors import GemmaforgeError

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
TURN_END = f"{END_OF_TURN}\n"  # what closes every turn of the Gemma chat format


def turn_start(role: str) -> str:
    """What opens a turn of `role` ("user" or "model") in the Gemma chat format."""
    return f"{START_OF_TURN}{role}\n"


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
    return conversation_prompt([("user", user_text)])


CHAT_ROLES = ("user", "model")


def conversation_prompt(turns: Sequence[tuple[str, str]]) -> str:
    """Turns `(role, text)` (role "user" or "model", the last one the user's) in the Gemma chat
    format, ending where the model's next turn begins. Gemma has no system role: callers put a
    system message at the start of the first user turn, as Gemma's own template does."""
    for role, _ in turns:
        if role not in CHAT_ROLES:
            raise GemmaforgeError(f"unknown chat role {role!r}; roles: {', '.join(CHAT_ROLES)}")
    if not turns or turns[-1][0] != "user":
        raise GemmaforgeError("a conversation must end with a user turn for the model to answer")
    body = "".join(f"{turn_start(role)}{text}{TURN_END}" for role, text in turns)
    return f"{body}{turn_start('model')}"


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
