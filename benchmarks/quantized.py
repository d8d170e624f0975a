"""`quantized`: every quantized artifact of gemma3-270m against float32, per format and runtime,
in one run (recipe x format).

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

llama.cpp (llama-cpp-python, when installed: `pip install llama-cpp-python`, ~11 min to build
on 2 cores) runs the checkpoint's own GGUF (Q4_K_M) in the same run, through the same decode
path and timings: the peer the int4 and `source` recipes are held to. It
quantizes activations, so its agreement is its own, not the file's float32 model's.

`source`: the GGUF's own grids in every format (`python -m benchmarks source`).
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
# `source`, and the recipes that round the same float32 model again, for contrast.
SOURCE_EXPORTS = (("source", ("stablehlo", "onnx", "litert"), 0),
                  ("source", ("onnx",), 4),
                  ("int8", ("onnx",), 0),
                  ("int4", ("onnx",), 0),
                  ("int4-cal", ("onnx",), 0),
                  ("int4", ("onnx",), 4))
# LiteRT's quantized schemes (int8 weight-only; int8-dyn and int4, dynamic range), float32
# beside them, and onnxruntime's int8-dyn and int8-activation int4 for contrast; each
# .litertlm also on the LiteRT-LM engine.
LITERT_EXPORTS = (("f32", ("litert",), 0),
                  ("int8", ("litert",), 0),
                  ("int8-dyn", ("litert", "onnx"), 0),
                  ("int4", ("litert",), 0),
                  ("int4-cal", ("litert",), 0),
                  ("int4", ("onnx",), 4))
RUNTIMES = {"stablehlo": "stablehlo", "onnx": "onnxruntime", "litert": "litert"}
ENGINE_PREFILL, ENGINE_DECODE = 128, 64


class LlamaCpp:
    """llama.cpp on a GGUF, behind the runner interface the timings and agreement use."""

    def __init__(self, path: str, context: int):
        from llama_cpp import Llama

        self.llm = Llama(model_path=path, n_ctx=context, n_batch=512, n_threads=THREADS,
                         n_threads_batch=THREADS, verbose=False)

    def _last(self) -> np.ndarray:
        # The last position's logits, straight from the context (eval() keeps them only with
        # logits_all, which would compute every position's).
        logits = self.llm._ctx.get_logits_ith(-1)
        return np.ctypeslib.as_array(logits, shape=(self.llm.n_vocab(),)).copy()

    def prefill(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return self._last()

    def decode(self, token: int) -> np.ndarray:
        self.llm.eval([token])
        return self._last()


def _llama_cpp_row(path: str, ids: list[int], prompt: list[int], reference) -> dict:
    """llama.cpp's row, or why there is none."""
    try:
        import llama_cpp
    except ImportError:
        return {"skipped": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    runner = LlamaCpp(path, max(len(ids), len(prompt) + 40) + 8)
    prefill, decode = time_generation(runner, prompt, 32, REPEATS)
    row = {"bytes": Path(path).stat().st_size, **_agreement(runner, ids, reference),
           "prefill_tokens_per_second_median": prefill,
           "decode_tokens_per_second_median": decode, "version": llama_cpp.__version__}
    del runner
    return row


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


def run(exports: tuple = EXPORTS, name: str = "quantized", engine: bool = False) -> dict:
    """Every quantized artifact of gemma3-270m against float32, per recipe, format and runtime:
    size, top-1 agreement and KL over the evaluation text, prefill and decode tokens/s.

    `engine`: time each LiteRT model on the LiteRT-LM engine too (its own benchmark: prefill
    ENGINE_PREFILL tokens, decode ENGINE_DECODE)."""
    from benchmarks.litert import engine_speed
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
                row = {"bytes": _format_bytes(out, manifest["formats"][fmt], fmt),
                       **_agreement(runner, ids, reference),
                       **time_generation(runner, prompt, 32, REPEATS)}
                label = f"{fmt} (accuracy level {level})" if fmt == "onnx" and level else fmt
                rows[f"{recipe} / {label} / {RUNTIMES[fmt]}"] = row
                del runner
                if fmt == "litert" and engine:
                    rows[f"{recipe} / litert / litert-lm"] = {
                        "bytes": row["bytes"], **engine_speed(
                            artifact, ENGINE_PREFILL, ENGINE_DECODE, REPEATS, THREADS,
                            str(scratch))[0]}
            del artifact
        if model.checkpoint and model.checkpoint.endswith(".gguf"):
            rows["GGUF (Q4_K_M) / llama.cpp"] = _llama_cpp_row(model.checkpoint, ids, prompt,
                                                              reference)
    result = {"preset": "gemma3-270m", "weights": model.source, "text": TEXT.name,
              "prompt_tokens": len(prompt), "new_tokens": 32, "repeats": REPEATS,
              "threads": THREADS, "rows": rows}
    if engine:
        result |= {"engine_prefill_tokens": ENGINE_PREFILL, "engine_decode_tokens": ENGINE_DECODE}
    save(name, result)
    return result


def run_source() -> dict:
    """The `source` recipe per format and runtime, llama.cpp on the GGUF itself beside it."""
    return run(SOURCE_EXPORTS, "source")


def run_litert() -> dict:
    """LiteRT's quantized models per runtime (the Interpreter and the LiteRT-LM engine), float32
    and onnxruntime's int8-activation int4 beside them, llama.cpp when installed."""
    return run(LITERT_EXPORTS, "quantized-litert", engine=True)
