"""`quantized`: every quantized artifact of gemma3-270m against float32, per format and runtime,
in one run (issue 7's table: recipe x format).

Each recipe is exported once to every format that lowers it (one quantization, several formats)
and float32 to all three for the baseline. Per (recipe, format, runtime):
  - size on disk of what that format's runtime loads;
  - top-1 agreement with float32 and mean KL(float32 || artifact) over the first PREDICTIONS
    next-token predictions of the committed evaluation text, the artifact teacher-forced through
    its own decode path (prefill of BOS, then one decode step per token); the float32 log-probs
    come from the JAX reference over the same tokens;
  - prefill tokens/s (a 128-token prompt) and decode tokens/s (32 tokens), medians of REPEATS
    after a warm-up, 2 threads.
ONNX runs at MatMulNBits' accuracy level 0 (float32 activations, the reference's arithmetic) and
level 4 (int8 activations, onnxruntime's fast kernels).
The whole text's quality per recipe (2,200 tokens, the JAX references) is `quality`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import save, time_generation
from benchmarks.quality import TEXT

PREDICTIONS = 256
REPEATS = 3
THREADS = 2
# (recipe, the formats that lower it, MatMulNBits' accuracy level for ONNX).
EXPORTS = (("f32", ("stablehlo", "onnx", "litert"), 0),
           ("int8", ("stablehlo", "onnx", "litert"), 0),
           ("int4", ("stablehlo", "onnx"), 0),
           ("int8", ("onnx",), 4),
           ("int4", ("onnx",), 4),
           ("int4-cal", ("onnx",), 4))
RUNTIMES = {"stablehlo": "stablehlo", "onnx": "onnxruntime", "litert": "litert"}


def _format_bytes(root: Path, section: dict, fmt: str) -> int:
    """What the format's runtime loads: the StableHLO programs and the weights they take, the
    ONNX model and its data, the .tflite."""
    if fmt == "stablehlo":
        return (sum(f.stat().st_size for f in (root / "stablehlo").iterdir())
                + (root / "weights.safetensors").stat().st_size)
    if fmt == "onnx":
        return sum(f.stat().st_size for f in (root / "onnx").iterdir()
                   if f.name.startswith("model.onnx"))
    return (root / section["file"]).stat().st_size


def _reference_logprobs(model, ids: list[int], scratch: Path) -> np.memmap:
    """float32 log-probs [len(ids), V] of the float32 JAX model, on disk."""
    import jax
    import jax.numpy as jnp

    from model_zoo.cache import KVCache
    from model_zoo.transformer import apply

    config = model.config
    out = np.lib.format.open_memmap(scratch / "f32.npy", "w+", np.float32,
                                    (len(ids), config.vocab_size))
    cache = KVCache.create(config, 1, len(ids))
    logits, _ = jax.jit(lambda p, t, q, c: apply(config, p, t, q, c))(
        model.params, jnp.asarray([ids], jnp.int32),
        jnp.arange(len(ids), dtype=jnp.int32)[None], cache)
    out[:] = np.asarray(jax.nn.log_softmax(logits[0], axis=-1))
    out.flush()
    return out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())


def _agreement(runner, ids: list[int], reference: np.ndarray) -> dict:
    agree, kl = 0, []
    logits = runner.prefill(ids[:1])
    for position in range(len(ids)):
        if position:
            logits = runner.decode(ids[position])
        logp = _log_softmax(np.asarray(logits, np.float32).reshape(-1))
        ref = reference[position].astype(np.float64)
        agree += int(np.argmax(logp) == np.argmax(ref))
        kl.append(float(np.sum(np.exp(ref) * (ref - logp))))
    return {"top1_agreement": agree / len(ids), "kl_mean": float(np.mean(kl)),
            "predictions": len(ids)}


def run(exports: tuple = EXPORTS, name: str = "quantized") -> dict:
    from exporter import export
    from model_zoo.loading import load
    from runtimes.artifact import open_artifact
    from runtimes.registry import make_runner

    model = load("gemma3-270m")
    ids = model.tokenizer.encode(TEXT.read_text(), add_bos=True)[:PREDICTIONS]
    prompt = model.tokenizer.encode(TEXT.read_text())[:128]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        reference = _reference_logprobs(model, ids, scratch)
        for recipe, formats, level in exports:
            out = scratch / f"{recipe}-{level}"
            manifest = export(model, out, formats=formats,
                              quant=None if recipe == "f32" else recipe,
                              onnx_accuracy_level=level)
            artifact = open_artifact(out)
            for fmt in formats:
                runner = make_runner(RUNTIMES[fmt], artifact, threads=THREADS)
                prefill, decode = time_generation(runner, prompt, 32, REPEATS)
                row = {"bytes": _format_bytes(out, manifest["formats"][fmt], fmt),
                       **_agreement(runner, ids, reference),
                       "prefill_tokens_per_second_median": prefill,
                       "decode_tokens_per_second_median": decode}
                label = f"{fmt} (accuracy level {level})" if fmt == "onnx" and level else fmt
                rows[f"{recipe} / {label} / {RUNTIMES[fmt]}"] = row
                del runner
            del artifact
    result = {"preset": "gemma3-270m", "weights": model.source, "text": TEXT.name,
              "prompt_tokens": len(prompt), "new_tokens": 32, "repeats": REPEATS,
              "threads": THREADS, "rows": rows}
    save(name, result)
    return result
