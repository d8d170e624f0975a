"""Text in, text out: `generate` (a model loaded, quantized and run on the JAX reference) and
`run` (an exported artifact on one runtime), what `gemmaforge generate` and `gemmaforge run`
print, and `generate_text` on any runner, streaming the text as it comes when asked."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from jax.sharding import Mesh

from model_zoo.errors import GemmaforgeError
from model_zoo.inference import default_max_len
from model_zoo.loading import load
from model_zoo.tokenizer import Tokenizer, chat_prompt
from quantize import get_recipe, model_config, quantize_params
from runtimes import base
from runtimes.artifact import open_artifact
from runtimes.base import Runner, check_room
from runtimes.jax_runner import JaxRunner
from runtimes.registry import make_runner
from runtimes.sampling import GREEDY, SamplerConfig


@dataclasses.dataclass(frozen=True)
class TextGeneration:
    """A finished generation, as `--json` prints it (`random_weights` aside: whether the model
    had no checkpoint, which the CLI says on stderr)."""

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
    time_to_first_token_seconds: float = 0.0
    random_weights: bool = False

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        del data["random_weights"]
        return data


def generate(preset: str | None, prompt: str, *, checkpoint: str | os.PathLike | None = None,
             tokenizer: str | os.PathLike | None = None, quant: str | None = None,
             max_new_tokens: int = 32, sampler: SamplerConfig = GREEDY, chat: bool = False,
             max_len: int | None = None, mesh: Mesh | None = None, seed: int = 0,
             on_text: Callable[[str], None] | None = None) -> TextGeneration:
    """Loads `preset` (its packaged weights, `checkpoint`, or random weights drawn from
    `seed`), quantizes it with the recipe `quant` (a name or a .toml/.json file; None: float32)
    and continues `prompt` on the JAX reference until a stop token or `max_new_tokens`. The
    result holds the new text and ids and the prefill and decode speeds; `on_text` sees the new
    text piece by piece as it is generated."""
    recipe = get_recipe(quant) if quant else None  # a bad recipe fails before the model loads
    if recipe is not None and mesh is not None:
        raise GemmaforgeError("--quant runs the quantized reference unsharded: drop --mesh")
    model = load(preset, checkpoint=checkpoint, tokenizer=tokenizer, seed=seed, mesh=mesh)
    params, weights, config = model.params, model.source, model.config
    if recipe is not None:
        params, _ = quantize_params(params, recipe, config=model.config,
                                    tokenizer=model.tokenizer, checkpoint=model.checkpoint)
        weights = f"{weights}, quantized {recipe.name}"
        config = model_config(model.config, recipe)
    runner = JaxRunner(config, params, max_len=max_len or default_max_len(config))
    result = generate_text(runner, model.tokenizer, prompt, preset=model.config.name,
                           weights=weights, max_new_tokens=max_new_tokens, sampler=sampler,
                           chat=chat, on_text=on_text)
    return dataclasses.replace(result, random_weights=model.random_weights)


def run(path: str | os.PathLike, prompt: str, *, runtime: str = "stablehlo",
        max_new_tokens: int = 32, sampler: SamplerConfig = GREEDY, chat: bool = False,
        threads: int | None = None,
        on_text: Callable[[str], None] | None = None) -> TextGeneration:
    """Continues `prompt` with the artifact at `path` on `runtime` (runtimes.registry),
    `threads` CPU threads where the runtime takes them; `on_text` sees the new text as it
    comes."""
    artifact = open_artifact(path)
    runner = make_runner(runtime, artifact, threads=threads)
    return generate_text(runner, artifact.tokenizer(), prompt, preset=artifact.config.name,
                         weights=artifact.manifest.weights_source,
                         max_new_tokens=max_new_tokens, sampler=sampler, chat=chat,
                         on_text=on_text)


class TextStream:
    """New tokens in, new text out, as they come. SentencePiece spells a character outside its
    vocabulary as one byte token per UTF-8 byte, so a piece is let out only once the tokens so
    far decode to whole characters (`finish` lets out what is held back at the end); stop
    tokens are never shown."""

    def __init__(self, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._stops = set(tokenizer.stop_ids)
        self._ids: list[int] = []
        self._shown = ""

    def push(self, token: int) -> str:
        """The text that `token` completes (often "" for a partial character)."""
        if token in self._stops:
            return ""
        self._ids.append(token)
        text = self._tokenizer.decode(self._ids)
        if text.endswith("\ufffd") or not text.startswith(self._shown):
            return ""
        piece, self._shown = text[len(self._shown):], text
        return piece

    def finish(self) -> str:
        """What is still held back: bytes that never completed a character."""
        text = self._tokenizer.decode(self._ids)
        piece = text[len(self._shown):] if text.startswith(self._shown) else ""
        self._shown = text
        return piece


def generate_text(runner: Runner, tokenizer: Tokenizer, prompt: str, *, preset: str,
                  weights: str, max_new_tokens: int = 32, sampler: SamplerConfig = GREEDY,
                  chat: bool = False,
                  on_text: Callable[[str], None] | None = None) -> TextGeneration:
    """Encodes `prompt` (wrapped in the chat template with `chat`), generates on `runner` until
    a stop token or `max_new_tokens`, and decodes the new tokens (the stop token left out).
    `on_text` sees the new text piece by piece as it is generated; an exception it raises
    ends the generation (how a caller cancels one)."""
    text_in = chat_prompt(prompt) if chat else prompt
    prompt_ids = tokenizer.encode(text_in, add_bos=True)
    if getattr(runner, "text_only", False):
        return _generate_on_text_runner(runner, tokenizer, text_in, prompt, prompt_ids,
                                        preset=preset, weights=weights,
                                        max_new_tokens=max_new_tokens, sampler=sampler,
                                        on_text=on_text)
    on_token = None
    if on_text is not None:
        stream = TextStream(tokenizer)

        def on_token(token: int) -> None:
            piece = stream.push(token)
            if piece:
                on_text(piece)

    result = base.generate(runner, prompt_ids, max_new_tokens, tokenizer.stop_ids, sampler,
                           on_token)
    if on_text is not None and (rest := stream.finish()):
        on_text(rest)
    shown = result.generated_ids
    if result.stop_reason == "stop_token":
        shown = shown[:-1]
    return TextGeneration(
        preset=preset, weights=weights, runtime=runner.name, prompt=prompt,
        prompt_ids=result.prompt_ids, generated_ids=result.generated_ids,
        text=tokenizer.decode(shown), stop_reason=result.stop_reason,
        prefill_tokens_per_second=round(result.prefill_tokens_per_second, 2),
        decode_tokens_per_second=round(result.decode_tokens_per_second, 2),
        time_to_first_token_seconds=round(result.first_token_seconds, 4))


def _generate_on_text_runner(runner, tokenizer: Tokenizer, text_in: str, prompt: str,
                             prompt_ids: list[int], *, preset: str, weights: str,
                             max_new_tokens: int, sampler: SamplerConfig,
                             on_text: Callable[[str], None] | None) -> TextGeneration:
    """A runtime that takes text and returns text (LiteRT-LM's engine adds BOS itself)."""
    check_room(runner, len(prompt_ids), max_new_tokens)
    done = runner.generate_text(text_in, max_new_tokens, sampler, on_text=on_text)
    text, prefill_seconds, decode_seconds = done.text, done.prefill_seconds, done.decode_seconds
    generated = tokenizer.encode(text, add_bos=False)
    return TextGeneration(
        preset=preset, weights=weights, runtime=runner.name, prompt=prompt,
        prompt_ids=prompt_ids, generated_ids=generated, text=text,
        stop_reason="max_new_tokens" if len(generated) >= max_new_tokens else "stop_token",
        prefill_tokens_per_second=round(len(prompt_ids) / prefill_seconds, 2)
        if prefill_seconds else 0.0,
        decode_tokens_per_second=round(len(generated) / decode_seconds, 2)
        if decode_seconds else 0.0,
        time_to_first_token_seconds=round(done.first_token_seconds, 4))
