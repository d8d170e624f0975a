"""HF transformers as an independent reference: the same weights in its Gemma models, and our
model run the way a user runs it (chunked prefill, then decode steps). Shared by the parity
tests and the accuracy benchmark."""

from __future__ import annotations

import numpy as np

import model_zoo as mz
from model_zoo import inference
from model_zoo.checkpoints.hf_config import config_to_hf
from model_zoo.checkpoints.hf_names import to_hf_state

_CONFIG_CLASSES = {"gemma": "GemmaConfig", "gemma2": "Gemma2Config",
                   "gemma3_text": "Gemma3TextConfig"}


def hf_model(config: mz.ModelConfig, params: mz.Params | None = None):
    """An HF CausalLM of `config` with eager attention, holding `params` when given."""
    import torch
    import transformers

    fields = config_to_hf(config)
    config_class = getattr(transformers, _CONFIG_CLASSES[fields["model_type"]])
    hf_config = config_class(**{k: v for k, v in fields.items()
                                if k not in ("model_type", "architectures")})
    hf_config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf_config).eval()
    if params is not None:
        state = {k: torch.from_numpy(np.array(v)) for k, v in to_hf_state(config, params).items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embedding
            raise AssertionError(f"HF names disagree: missing {missing}, unexpected {unexpected}")
    return model


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """float32 logits [T, V] of one full-sequence forward."""
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def ours_stepwise(config: mz.ModelConfig, params: mz.Params, ids: list[int], decoded: int, *,
                  max_len: int, chunk_size: int | None = None) -> np.ndarray:
    """Logits [decoded + 1, V] at positions len(ids) - decoded - 1 ...: prefill all but the last
    `decoded` tokens, then one decode step per remaining token."""
    prompt = len(ids) - decoded
    logits, cache, _ = inference.prefill(config, params, [ids[:prompt]],
                                         mz.KVCache.create(config, 1, max_len),
                                         chunk_size=chunk_size)
    out = [np.asarray(logits[0])]
    for position in range(prompt, len(ids)):
        logits, cache = inference.decode(config, params, [ids[position]], [position], cache)
        out.append(np.asarray(logits[0]))
    return np.stack(out)


def tiny_parity(config: mz.ModelConfig, params: mz.Params, model, *, prompt: int = 20,
                decoded: int = 8) -> tuple[float, float]:
    """(max abs logit error, largest |logit|) of our prefill + `decoded` steps against HF."""
    ids = np.random.default_rng(0).integers(4, config.vocab_size, prompt + decoded)
    ids[0] = config.bos_id
    ids = ids.tolist()
    reference = hf_logits(model, ids)[prompt - 1 :]
    ours = ours_stepwise(config, params, ids, decoded, max_len=64)
    return float(np.abs(ours - reference).max()), float(np.abs(reference).max())


def long_prompt_ids(tokenizer) -> list[int]:
    """~640 tokens of plain text: past gemma3-270m's 512-token window."""
    text = " ".join(f"Item {i} of the list is the word {w}." for i, w in
                    enumerate(("sea", "salt", "wave", "shell", "tide", "foam") * 9))
    return tokenizer.encode(text)
