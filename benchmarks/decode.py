"""Speed of the JAX reference on gemma3-270m (float32, 2 threads here): prefill and decode
tokens/s, medians over repeats, compilation excluded (one warm-up run first)."""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import median, save


def run(repeats: int = 5, prompt_tokens: int = 500, new_tokens: int = 32) -> dict:
    from model_zoo.loading import load
    from runtimes import JaxRunner

    model = load("gemma3-270m")
    prompt = model.tokenizer.encode(
        " ".join(["The sea is calm and the waves are low."] * 60))[:prompt_tokens]
    runner = JaxRunner(model.config, model.params, max_len=1024)

    def once() -> tuple[float, float]:
        start = time.perf_counter()
        logits = runner.prefill(prompt)
        prefill = time.perf_counter() - start
        token = int(np.argmax(logits))
        start = time.perf_counter()
        for _ in range(new_tokens):
            token = int(np.argmax(runner.decode(token)))
        return prefill, time.perf_counter() - start

    once()  # compiles
    runs = [once() for _ in range(repeats)]
    result = {
        "runtime": "jax",
        "prompt_tokens": len(prompt),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "prefill_tokens_per_second_median": median([len(prompt) / p for p, _ in runs]),
        "decode_tokens_per_second_median": median([new_tokens / d for _, d in runs]),
    }
    save("decode", result)
    return result
