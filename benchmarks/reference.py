"""Accuracy of the float32 JAX model on the real gemma3-270m weights.

Against ../shared/refs (HF transformers float32 on the same dequantized weights): max abs error of
the last logits and greedy agreement. Against HF transformers run here on a ~700-token prompt
(past the 512-token window): max abs logit error and top-1 agreement over the last 9 positions.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import save


def run() -> dict:
    import jax.numpy as jnp
    import torch
    import transformers

    import model_zoo as mz
    from model_zoo import inference
    from model_zoo.checkpoints.hf_config import config_to_hf
    from model_zoo.checkpoints.hf_names import to_hf_state
    from model_zoo.loading import load
    from runtimes import JaxRunner, generate
    from tests.shared_data import REF_PROMPTS, REFS

    model = load("gemma3-270m")
    config, params = model.config, model.params
    result: dict = {"refs": {}}
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
            "greedy_tokens_matching": int(np.sum(np.array(greedy) == ref["greedy"])),
            "greedy_tokens": 32,
        }

    text = " ".join(f"Item {i} of the list is the word {w}." for i, w in
                    enumerate(("sea", "salt", "wave", "shell", "tide", "foam") * 9))
    ids = model.tokenizer.encode(text)
    fields = config_to_hf(config)
    hf_config = transformers.Gemma3TextConfig(
        **{k: v for k, v in fields.items() if k not in ("model_type", "architectures")})
    hf_config._attn_implementation = "eager"
    hf_model = transformers.Gemma3ForCausalLM(hf_config).eval()
    hf_model.load_state_dict({k: torch.from_numpy(np.array(v))
                              for k, v in to_hf_state(config, params).items()}, strict=False)
    with torch.no_grad():
        reference = hf_model(torch.tensor([ids])).logits[0].numpy()
    prompt = len(ids) - 8
    logits, cache, _ = inference.prefill(config, params, [ids[:prompt]],
                                         mz.KVCache.create(config, 1, 1024), chunk_size=128)
    ours = [np.asarray(logits[0])]
    for position in range(prompt, len(ids)):
        logits, cache = inference.decode(config, params, [ids[position]], [position], cache)
        ours.append(np.asarray(logits[0]))
    ours = np.stack(ours)
    result["long_prompt_vs_hf"] = {
        "tokens": len(ids),
        "window": config.sliding_window,
        "max_abs_error": float(np.abs(ours - reference[prompt - 1 :]).max()),
        "top1_agreement": f"{int((ours.argmax(-1) == reference[prompt - 1:].argmax(-1)).sum())}"
                          f"/{len(ours)}",
    }
    save("reference", result)
    return result
