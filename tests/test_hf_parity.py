"""Parity with an implementation nobody here wrote: HF transformers' Gemma, Gemma2 and Gemma3 text
models on the tiny configs, weights copied across, float32, prefill and 8 decode steps."""

import numpy as np
import pytest

import model_zoo as mz
from model_zoo import inference
from model_zoo.checkpoints.hf_config import config_from_hf, config_to_hf
from model_zoo.checkpoints.hf_names import hf_tensor_map, to_hf_state
from model_zoo.tree import set_path
from runtimes.tolerances import INDEPENDENT_FLOAT32
from tests.conftest import TINY_PRESETS

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

DECODE_STEPS = 8
PROMPT_LEN = 20  # past the tiny sliding windows (8)

_CONFIG_CLASSES = {"gemma": "GemmaConfig", "gemma2": "Gemma2Config",
                   "gemma3_text": "Gemma3TextConfig"}


def hf_model(config):
    fields = config_to_hf(config)
    config_class = getattr(transformers, _CONFIG_CLASSES[fields["model_type"]])
    hf_config = config_class(**{k: v for k, v in fields.items()
                                if k not in ("model_type", "architectures")})
    hf_config._attn_implementation = "eager"
    return transformers.AutoModelForCausalLM.from_config(hf_config).eval()


def compare(config, params, model):
    """Max abs logit error of our prefill + decode steps against HF's full-sequence forward."""
    ids = np.random.default_rng(0).integers(4, config.vocab_size, PROMPT_LEN + DECODE_STEPS)
    ids[0] = config.bos_id
    with torch.no_grad():
        reference = model(torch.tensor(ids[None])).logits[0].numpy()
    logits, cache, _ = inference.prefill(config, params, [list(ids[:PROMPT_LEN])],
                                         mz.KVCache.create(config, 1, 64))
    errors = [np.abs(np.asarray(logits[0]) - reference[PROMPT_LEN - 1]).max()]
    for position in range(PROMPT_LEN, len(ids)):
        logits, cache = inference.decode(config, params, [ids[position]], [position], cache)
        errors.append(np.abs(np.asarray(logits[0]) - reference[position]).max())
    return max(errors), np.abs(reference).max()


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_our_weights_in_hf_give_our_logits(name, tiny_params):
    config = mz.get_preset(name)
    model = hf_model(config)
    state = {k: torch.tensor(v) for k, v in to_hf_state(config, tiny_params(name)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embedding
    error, scale = compare(config, tiny_params(name), model)
    assert scale > 1.0  # logits large enough that soft-caps and norms matter
    assert error <= INDEPENDENT_FLOAT32


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_hf_random_weights_in_ours_give_hf_logits(name):
    config = mz.get_preset(name)
    torch.manual_seed(0)
    model = hf_model(config)
    with torch.no_grad():  # HF starts norms at exactly 0; move them so (1 + w) is exercised
        for key, value in model.named_parameters():
            if "norm" in key:
                value.normal_(0.0, 0.3)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = {}
    for hf_name, entry in hf_tensor_map(config).items():
        set_path(params, entry.path, entry.to_ours(state[hf_name]))
    error, _ = compare(config, params, model)
    assert error <= INDEPENDENT_FLOAT32


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_hf_config_round_trip(name):
    config = mz.get_preset(name)
    assert config_from_hf(config_to_hf(config), name=name) == config
