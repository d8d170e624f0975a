"""Text in, text out on a loaded model: what `gemmaforge generate` runs."""

from __future__ import annotations

import dataclasses

from model_zoo.loading import LoadedModel
from model_zoo.tokenizer import chat_prompt
from runtimes.base import Runner, generate
from runtimes.jax_runner import JaxRunner
from runtimes.sampling import GREEDY, SamplerConfig

DEFAULT_MAX_LEN = 1024


@dataclasses.dataclass(frozen=True)
class TextGeneration:
    """A finished generation, as `gemmaforge generate --json` prints it."""

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


def default_max_len(model: LoadedModel) -> int:
    return min(model.config.max_context, DEFAULT_MAX_LEN)


def generate_text(model: LoadedModel, prompt: str, *, max_new_tokens: int = 32,
                  sampler: SamplerConfig = GREEDY, chat: bool = False,
                  max_len: int | None = None, runner: Runner | None = None) -> TextGeneration:
    """Encodes `prompt` (wrapped in the chat template with `chat`), generates on `runner`
    (default: the JAX reference with a cache of `max_len` slots) and decodes the new tokens."""
    text_in = chat_prompt(prompt) if chat else prompt
    prompt_ids = model.tokenizer.encode(text_in, add_bos=True)
    if runner is None:
        runner = JaxRunner(model.config, model.params,
                           max_len=max_len if max_len is not None else default_max_len(model))
    stops = model.tokenizer.stop_ids
    result = generate(runner, prompt_ids, max_new_tokens, stops, sampler)
    shown = result.generated_ids
    if result.stop_reason == "stop_token":
        shown = shown[:-1]
    return TextGeneration(
        preset=model.config.name, weights=model.source, runtime=runner.name, prompt=prompt,
        prompt_ids=result.prompt_ids, generated_ids=result.generated_ids,
        text=model.tokenizer.decode(shown), stop_reason=result.stop_reason,
        prefill_tokens_per_second=round(result.prefill_tokens_per_second, 2),
        decode_tokens_per_second=round(result.decode_tokens_per_second, 2))
