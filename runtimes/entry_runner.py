"""Runners over exported entry points (prefill_<T>, decode): the chunking every such runtime
shares, written once.

A prompt is fed as: all tokens but the last through prefill entry points, then the last token
through `decode`, whose logits are the prompt's (see exporter.trace). Chunks take the largest
bucket that the remaining tokens fill; a remainder shorter than every bucket is padded into the
smallest one while that fits in the cache, and otherwise fed through `decode` token by token.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from exporter.trace import DECODE
from runtimes.base import check_decode, checked_prompt

if TYPE_CHECKING:
    from runtimes.artifact import Artifact


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Feed tokens[start : start + length] through `entry`, padded to `width`."""

    entry: str
    start: int
    length: int
    width: int


def plan_chunks(count: int, buckets: Sequence[int], max_len: int, start: int = 0) -> list[Chunk]:
    """How to prefill `count` tokens from position `start` with the given buckets."""
    chunks, position, end = [], start, start + count
    buckets = sorted(buckets)
    while position < end:
        remaining = end - position
        fitting = [b for b in buckets if b <= remaining]
        if fitting:
            width = fitting[-1]
            chunks.append(Chunk(f"prefill_{width}", position, width, width))
        elif position + buckets[0] <= max_len:
            chunks.append(Chunk(f"prefill_{buckets[0]}", position, remaining, buckets[0]))
        else:
            chunks.extend(Chunk(DECODE, p, 1, 1) for p in range(position, end))
            break
        position += chunks[-1].length
    return chunks


class EntryPointRunner(abc.ABC):
    """The Runner protocol on top of `_reset` and `_call` (one entry point, cache held inside).

    Subclasses set `name`; the cache length, buckets, pad id and config come from the artifact.
    """

    name: str

    def __init__(self, artifact: Artifact) -> None:
        self.max_len: int = artifact.max_len
        self.buckets: tuple[int, ...] = artifact.buckets
        self.pad_id: int = artifact.config.pad_id
        self.vocab_size: int = artifact.config.vocab_size
        self._config = artifact.config
        self._position: int | None = None

    @abc.abstractmethod
    def _reset(self) -> None:
        """Empties the cache."""

    @abc.abstractmethod
    def _call(self, entry: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray | None:
        """Runs one entry point on int32 tokens [1, T] at int32 input_pos [T], updating the
        cache; returns float32 logits [V] for decode, None for prefill."""

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        ids = checked_prompt(self, prompt_ids)
        self._reset()
        for chunk in plan_chunks(len(ids) - 1, self.buckets, self.max_len):
            tokens = np.full((1, chunk.width), self.pad_id, np.int32)
            tokens[0, : chunk.length] = ids[chunk.start : chunk.start + chunk.length]
            positions = np.arange(chunk.start, chunk.start + chunk.width, dtype=np.int32)
            self._call(chunk.entry, tokens, positions)
        self._position = len(ids) - 1
        return self.decode(ids[-1])

    def decode(self, token: int) -> np.ndarray:
        token = check_decode(self, self._position, token)
        logits = self._call(DECODE, np.array([[token]], np.int32),
                            np.array([self._position], np.int32))
        self._position += 1
        return logits
