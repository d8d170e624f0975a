"""Accuracy of the float32 JAX model against independent references.

- tiny presets against HF transformers (random weights copied across): max abs logit error of
  prefill + 8 decode steps, per family;
- gemma3-270m against tests/data/gemma3_270m (HF float32 on the same dequantized weights):
  last-logit error and greedy agreement;
- gemma3-270m against HF transformers run here on a ~640-token prompt (past the 512 window).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import save


def run() -> dict:
    import jax.numpy as jnp

    import model_zoo as mz
    from model_zoo.loading import load
    from runtimes import JaxRunner
    from runtimes.base import generate
    from tests.hf_reference import (
        hf_logits,
        hf_model,
        long_prompt_ids,
        ours_stepwise,
        tiny_parity,
    )
    from tests.reference_data import REF_PROMPTS, REFS

    result: dict = {"tiny_vs_hf": {}, "refs": {}}
    for name in ("tiny-gemma1", "tiny-gemma2", "tiny-gemma3"):
        config = mz.get_preset(name)
        params = mz.init_params(config, 0)
        error, scale = tiny_parity(config, params, hf_model(config, params))
        result["tiny_vs_hf"][name] = {"max_abs_error": error, "largest_logit": scale}

    model = load("gemma3-270m")
    config, params = model.config, model.params
    for name, prompt in REF_PROMPTS.items():
        path = REFS / f"{name}.npz"
        if not path.exists():
            continue
        ref = np.load(path)
        ids = model.tokenizer.encode(prompt)
        logits, _ = mz.apply(config, params, jnp.asarray([ids]),
                             jnp.arange(len(ids), dtype=jnp.int32)[None],
                             mz.KVCache.create(config, 1, len(ids)))
        greedy = generate(JaxRunner(config, params, max_len=128), ids, 32).generated_ids
        result["refs"][name] = {
            "ids_match": ids == ref["ids"].tolist(),
            "last_logits_max_abs_error": float(np.abs(np.asarray(logits[0, -1])
                                                      - ref["last_logits"]).max()),
            "greedy_tokens_matching": f"{int(np.sum(np.array(greedy) == ref['greedy']))}/32",
        }

    ids = long_prompt_ids(model.tokenizer)
    reference = hf_logits(hf_model(config, params), ids)[-9:]
    ours = ours_stepwise(config, params, ids, 8, max_len=1024, chunk_size=128)
    result["long_prompt_vs_hf"] = {
        "tokens": len(ids),
        "window": config.sliding_window,
        "max_abs_error": float(np.abs(ours - reference).max()),
        "top1_agreement": f"{int((ours.argmax(-1) == reference.argmax(-1)).sum())}/{len(ours)}",
    }
    save("reference", result)
    return result
