"""Quantization quality on the real model: every weight-only recipe against float32, on the
committed evaluation text (benchmarks/data/evaluation.txt, written for the project, ~2,200
tokens of gemma3-270m's tokenizer).

The text runs through the model in chunks of CHUNK tokens (the KV cache carries the context), the
float32 model and every recipe in lockstep, so no distribution is stored. Per recipe:
  - top-1 agreement with float32 over every next-token prediction;
  - mean and max KL(float32 || quantized) of the next-token distributions;
  - perplexity of the text (float32's too, for scale);
  - the quantized weights' packed size (values at their bit width, scales and zero points in
    float32 / int8): what a format that packs them stores, before its own overhead.
The quantized models are the JAX references (`quantize.quantize_params`); artifacts are compared
with them by `gemmaforge validate`. `int4-cal` calibrates on quantize/calibration.py's sample,
which shares no text with the evaluation text. `quantize_seconds` includes calibration.
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path

import numpy as np

from benchmarks.common import save

DATA = Path(__file__).parent / "data"
TEXT = DATA / "evaluation.txt"
CHUNK = 256
RECIPES = ("fp16", "int8", "int8-dyn", "int4", "int4-b128", "int4-cal")
# `quality-int8`: where int8's loss comes from, as user recipes (benchmarks/data/recipes).
INT8_DIAGNOSIS = ("int8", *(str(DATA / "recipes" / f"int8-{part}.toml")
                            for part in ("table-only", "projections-only", "b32", "gptq")))


def packed_bytes(quantized: dict) -> int:
    from quantize import QuantizedTensor

    total = 0
    for value in quantized.values():
        if isinstance(value, QuantizedTensor):
            total += math.ceil(value.values.size * value.spec.bits / 8) + value.scales.nbytes
            total += 0 if value.zeros is None else value.zeros.size * value.spec.bits // 8
        else:
            total += value.nbytes
    return total


def run(recipes: tuple[str, ...] = RECIPES, preset: str = "gemma3-270m",
        save_as: str = "quality") -> dict:
    import jax
    import jax.numpy as jnp

    from model_zoo.cache import KVCache
    from model_zoo.loading import load
    from model_zoo.transformer import apply
    from quantize import dequantize_once, get_recipe, model_config, quantize_params
    from quantize.activations import activation_projection

    model = load(preset)
    config = model.config
    ids = model.tokenizer.encode(TEXT.read_text(), add_bos=True)
    length = math.ceil(len(ids) / CHUNK) * CHUNK
    variants = {"f32": model.params}
    configs = {"f32": config}
    sizes = {"f32": sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(model.params))}
    quantize_seconds = {}
    for recipe in recipes:
        label = get_recipe(recipe).name  # a recipe file's own name, not its path
        start = time.perf_counter()
        qparams, quantized = quantize_params(model.params, recipe, config=config,
                                             tokenizer=model.tokenizer)
        quantize_seconds[label] = time.perf_counter() - start
        variants[label] = dequantize_once(qparams)
        configs[label] = model_config(config, recipe)  # int8-dyn rounds activations
        sizes[label] = packed_bytes(quantized)
        del qparams, quantized

    @functools.partial(jax.jit, static_argnums=0)
    def forward(run_config, params, tokens, positions, cache):
        logits, cache = apply(run_config, params, tokens, positions, cache,
                              projection=activation_projection(run_config))
        return jax.nn.log_softmax(logits[0], axis=-1), cache

    caches = {name: KVCache.create(config, 1, length) for name in variants}
    stats = {name: {"agree": 0, "kl": [], "nll": []} for name in variants}
    predictions = 0
    for start in range(0, len(ids) - 1, CHUNK):
        chunk = ids[start:start + CHUNK]
        targets = np.asarray(ids[start + 1:start + 1 + len(chunk)])
        tokens = jnp.asarray([chunk + [0] * (CHUNK - len(chunk))], jnp.int32)
        positions = jnp.arange(start, start + CHUNK, dtype=jnp.int32)[None]
        used = len(targets)  # the last token of the text predicts nothing
        reference = None
        for name, params in variants.items():
            logp, caches[name] = forward(configs[name], params, tokens, positions,
                                         caches[name])
            logp = logp[:used]
            if reference is None:
                reference = logp
            entry = stats[name]
            entry["agree"] += int(jnp.sum(jnp.argmax(logp, -1) == jnp.argmax(reference, -1)))
            entry["kl"].append(np.asarray(jnp.sum(jnp.exp(reference) * (reference - logp), -1)))
            entry["nll"].append(-np.asarray(logp[jnp.arange(used), targets]))
        predictions += used

    rows = {}
    for name, entry in stats.items():
        kl, nll = np.concatenate(entry["kl"]), np.concatenate(entry["nll"])
        rows[name] = {"top1_agreement": entry["agree"] / predictions,
                      "kl_mean": float(kl.mean()), "kl_max": float(kl.max()),
                      "perplexity": float(np.exp(nll.mean())),
                      "packed_weight_bytes": sizes[name],
                      **({"quantize_seconds": round(quantize_seconds[name], 2)}
                         if name in quantize_seconds else {})}
    result = {"preset": preset, "weights": model.source, "text": str(TEXT.name),
              "text_tokens": len(ids), "predictions": predictions, "chunk": CHUNK,
              "reference": "jax", "recipes": rows}
    save(save_as, result)
    return result


def run_int8() -> dict:
    """int8's loss taken apart: the table alone, the projections alone, blocks of 32, GPTQ."""
    return run(INT8_DIAGNOSIS, save_as="quality-int8")
