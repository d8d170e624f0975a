"""Speed of each runtime on one gemma3-270m StableHLO artifact, measured in the same run:
prefill tokens/s on a ~500-token prompt and decode tokens/s over 32 tokens, medians over
repeats after a warm-up (compilation excluded). `jax` is the reference model itself."""

from __future__ import annotations

import tempfile

from benchmarks.common import save, time_generation

RUNTIMES = ("jax", "stablehlo", "iree")


def run(repeats: int = 5, new_tokens: int = 32) -> dict:
    from exporter import export
    from model_zoo.loading import load
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner

    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        export(load("gemma3-270m"), f"{scratch}/art")
        artifact = open_artifact(f"{scratch}/art")
        prompt = artifact.tokenizer().encode(
            " ".join(["The sea is calm and the waves are low."] * 60))[:500]
        for name in RUNTIMES:
            rows[name] = time_generation(make_runner(name, artifact), prompt, new_tokens,
                                         repeats)
    result = {"preset": "gemma3-270m", "precision": "float32", "prompt_tokens": len(prompt),
              "new_tokens": new_tokens, "repeats": repeats, "runtimes": rows}
    save("runtimes", result)
    return result
