"""The Runner protocol every runtime implements, and generation written once on top of it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from model_zoo.errors import GemmaforgeError
from runtimes.sampling import GREEDY, Sampler, SamplerConfig


@dataclasses.dataclass(frozen=True)
class TextRun:
    """A text runner's continuation and the seconds its prefill and decode took
    (`first_token_seconds`: from the start to the first new text)."""

    text: str
    prefill_seconds: float
    decode_seconds: float
    first_token_seconds: float = 0.0


class Runner(Protocol):
    """One sequence at a time on one runtime.

    `prefill` starts a new sequence from the prompt ids (BOS included) and returns the float32
    logits [V] after its last token; `decode` appends one token and returns the next logits [V].
    `max_len` is the cache length: prompt plus generated tokens must fit in it; every id is in
    [0, vocab_size).
    """

    name: str
    max_len: int
    vocab_size: int

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray: ...

    def decode(self, token: int) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class Generation:
    """What `generate` produced and how long it took.

    Attributes:
      prompt_ids: the prompt as fed (BOS included).
      generated_ids: new tokens, the stop token included when one ended the turn.
      stop_reason: "stop_token" or "max_new_tokens".
      prefill_seconds: wall time of the prefill.
      decode_seconds: wall time of every decode step but the first (which may compile).
      timed_decode_steps: how many steps `decode_seconds` covers.
      first_token_seconds: from the start of the prefill to the first new token picked.
    """

    prompt_ids: list[int]
    generated_ids: list[int]
    stop_reason: str
    prefill_seconds: float
    decode_seconds: float
    timed_decode_steps: int
    first_token_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return len(self.prompt_ids) / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.timed_decode_steps / self.decode_seconds if self.decode_seconds else 0.0


def checked_token(runner, token: object) -> int:
    """`token` as an int, refused unless it is an id of the runner's vocabulary: an id past the
    embedding table reads out of bounds (IREE crashes, XLA returns NaN, the others clamp)."""
    if isinstance(token, bool) or not isinstance(token, int | np.integer):
        raise GemmaforgeError(f"{runner.name}: token ids are integers, got {token!r}")
    if not 0 <= token < runner.vocab_size:
        raise GemmaforgeError(f"{runner.name}: token id {token} is outside the model's "
                              f"vocabulary [0, {runner.vocab_size}); is the tokenizer the "
                              "model's own?")
    return int(token)


def checked_prompt(runner, prompt_ids: Sequence[int]) -> list[int]:
    """The prompt as ints, refused when empty, longer than the runner's cache or holding an id
    outside the vocabulary."""
    ids = [checked_token(runner, i) for i in prompt_ids]
    if not ids:
        raise GemmaforgeError("the prompt is empty: it needs at least the BOS token")
    if len(ids) > runner.max_len:
        raise GemmaforgeError(f"the prompt has {len(ids)} tokens but {runner.name} holds "
                              f"{runner.max_len} (the exported --max-len)")
    return ids


def check_decode(runner, position: int | None, token: object) -> int:
    """`token` as an int; refuses a decode step before any prefill, past the end of the cache,
    or of an id outside the vocabulary."""
    token = checked_token(runner, token)
    if position is None:
        raise GemmaforgeError(f"{runner.name}: decode before prefill")
    if position >= runner.max_len:
        raise GemmaforgeError(f"{runner.name}: the cache is full ({runner.max_len} tokens, the "
                              "exported --max-len); re-export with a larger --max-len")
    return token


def check_room(runner, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuses a request whose prompt and new tokens cannot fit in the runner's cache."""
    needed = prompt_tokens + max_new_tokens
    if needed > runner.max_len:
        raise GemmaforgeError(
            f"{prompt_tokens} prompt tokens + {max_new_tokens} new tokens need {needed} cache "
            f"slots but the {runner.name} runner holds {runner.max_len}; raise --max-len (for "
            "an artifact: export it again with one) or ask for fewer tokens")


def generate(runner: Runner, prompt_ids: Sequence[int], max_new_tokens: int,
             stop_ids: Sequence[int] = (), sampler: SamplerConfig = GREEDY,
             on_token: Callable[[int], None] | None = None) -> Generation:
    """Prefills `prompt_ids`, then samples up to `max_new_tokens`, stopping at any `stop_ids`.
    `on_token` sees each new token as soon as it is picked (the stop token too); an exception
    it raises ends the generation there (how a caller cancels)."""
    if max_new_tokens < 0:
        raise GemmaforgeError(f"max new tokens must be >= 0, got {max_new_tokens}")
    if not prompt_ids:
        raise GemmaforgeError("the prompt is empty: it needs at least the BOS token")
    check_room(runner, len(prompt_ids), max_new_tokens)
    pick = Sampler(sampler)
    stops = set(stop_ids)
    start = time.perf_counter()
    logits = runner.prefill(list(prompt_ids))
    prefill_seconds = time.perf_counter() - start

    generated: list[int] = []
    decode_seconds, timed, first_token_seconds = 0.0, 0, 0.0
    stop_reason = "max_new_tokens"
    while len(generated) < max_new_tokens:
        token = pick(logits)
        generated.append(token)
        if len(generated) == 1:
            first_token_seconds = time.perf_counter() - start
        if on_token is not None:
            on_token(token)
        if token in stops:
            stop_reason = "stop_token"
            break
        if len(generated) == max_new_tokens:
            break
        start = time.perf_counter()
        logits = runner.decode(token)
        if len(generated) > 1:
            decode_seconds += time.perf_counter() - start
            timed += 1
    return Generation(list(prompt_ids), generated, stop_reason, prefill_seconds, decode_seconds,
                      timed, first_token_seconds)
