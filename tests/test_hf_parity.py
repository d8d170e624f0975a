"""Parity with an implementation nobody here wrote: HF transformers' Gemma, Gemma2 and Gemma3 text
models on the tiny configs, weights copied across, float32, prefill and 8 decode steps."""

import pytest

import model_zoo as mz
from model_zoo.checkpoints.hf_config import config_from_hf, config_to_hf
from model_zoo.checkpoints.hf_names import hf_tensor_map
from model_zoo.tree import set_path
from runtimes.tolerances import INDEPENDENT_FLOAT32
from tests.conftest import TINY_PRESETS
from tests.hf_reference import hf_model, tiny_parity

pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_our_weights_in_hf_give_our_logits(name, tiny_params):
    config = mz.get_preset(name)
    error, scale = tiny_parity(config, tiny_params(name), hf_model(config, tiny_params(name)))
    assert scale > 1.0  # logits large enough that soft-caps and norms matter
    assert error <= INDEPENDENT_FLOAT32


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_hf_random_weights_in_ours_give_hf_logits(name):
    import torch

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
    error, _ = tiny_parity(config, params, model)
    assert error <= INDEPENDENT_FLOAT32


@pytest.mark.parametrize("name", TINY_PRESETS)
def test_hf_config_round_trip(name):
    config = mz.get_preset(name)
    assert config_from_hf(config_to_hf(config), name=name) == config
