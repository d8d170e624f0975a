"""Text in, text out on any runner: what `gemmaforge generate` and `gemmaforge run` print."""

from __future__ import annotations

import dataclasses

from model_zoo.tokenizer import Tokenizer, chat_prompt
from runtimes.base import Runner, check_room, generate
from runtimes.sampling import GREEDY, SamplerConfig


@dataclasses.dataclass(frozen=True)
class TextGeneration:
    """A finished generation, as `--json` prints it."""

    preset: str
    weights: str
    runtime: str
    prompt: str
    prompt_ids: list[int]
    generated_ids: list[int]
    text: str
    stop_reason: str
    prefill_tokens_per_second: float
    decode_tokens_per_second: float

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def generate_text(runner: Runner, tokenizer: Tokenizer, prompt: str, *, preset: str,
                  weights: str, max_new_tokens: int = 32, sampler: SamplerConfig = GREEDY,
                  chat: bool = False) -> TextGeneration:
    """Encodes `prompt` (wrapped in the chat template with `chat`), generates on `runner` until
    a stop token or `max_new_tokens`, and decodes the new tokens (the stop token left out)."""
    text_in = chat_prompt(prompt) if chat else prompt
    prompt_ids = tokenizer.encode(text_in, add_bos=True)
    if getattr(runner, "text_only", False):
        return _generate_on_text_runner(runner, tokenizer, text_in, prompt, prompt_ids,
                                        preset=preset, weights=weights,
                                        max_new_tokens=max_new_tokens, sampler=sampler)
    result = generate(runner, prompt_ids, max_new_tokens, tokenizer.stop_ids, sampler)
    shown = result.generated_ids
    if result.stop_reason == "stop_token":
        shown = shown[:-1]
    return TextGeneration(
        preset=preset, weights=weights, runtime=runner.name, prompt=prompt,
        prompt_ids=result.prompt_ids, generated_ids=result.generated_ids,
        text=tokenizer.decode(shown), stop_reason=result.stop_reason,
        prefill_tokens_per_second=round(result.prefill_tokens_per_second, 2),
        decode_tokens_per_second=round(result.decode_tokens_per_second, 2))


def _generate_on_text_runner(runner, tokenizer: Tokenizer, text_in: str, prompt: str,
                             prompt_ids: list[int], *, preset: str, weights: str,
                             max_new_tokens: int, sampler: SamplerConfig) -> TextGeneration:
    """A runtime that takes text and returns text (LiteRT-LM's engine adds BOS itself)."""
    check_room(runner, len(prompt_ids), max_new_tokens)
    text = runner.generate_text(text_in, max_new_tokens, sampler)
    prefill_seconds, decode_seconds = runner.last_timings
    generated = tokenizer.encode(text, add_bos=False)
    return TextGeneration(
        preset=preset, weights=weights, runtime=runner.name, prompt=prompt,
        prompt_ids=prompt_ids, generated_ids=generated, text=text,
        stop_reason="max_new_tokens" if len(generated) >= max_new_tokens else "stop_token",
        prefill_tokens_per_second=round(len(prompt_ids) / prefill_seconds, 2)
        if prefill_seconds else 0.0,
        decode_tokens_per_second=round(len(generated) / decode_seconds, 2)
        if decode_seconds else 0.0)
