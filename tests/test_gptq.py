"""GPTQ (`quantize.gptq`): a smaller output error than round-to-nearest on its calibration
inputs, closer to float32 on unseen text, and exported like any int4 recipe."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import model_zoo as mz
import quantize
from exporter import export
from model_zoo.cache import KVCache
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import apply
from quantize.spec import QuantSpec
from quantize.tensor import dequantize_params, quantize_tensor
from runtimes.validation import validate_artifact


@pytest.mark.parametrize("bits, block", [(4, 32), (8, None)])
def test_gptq_beats_round_to_nearest_on_its_calibration_inputs(bits, block):
    """GPTQ's one promise: a smaller output error ||X (W - W_q)|| on the inputs it saw, on the
    same grid (values within +-qmax, one scale per block and output). Per channel, the block
    (all 256 inputs) is larger than the rows GPTQ updates together."""
    from quantize.gptq import gptq

    rng = np.random.default_rng(0)
    inputs_dim = 256
    mixing = rng.standard_normal((inputs_dim, inputs_dim))  # correlated, as activations are
    inputs = rng.standard_normal((1024, inputs_dim)) @ mixing
    weight = rng.standard_normal((inputs_dim, 64)).astype(np.float32)
    spec = QuantSpec(bits, block=block)
    size = block or inputs_dim
    rtn = quantize_tensor("w", weight, spec, 1)
    values, scales = gptq(weight, inputs.T @ inputs, spec.qmax, size)
    blocks = inputs_dim // size
    assert np.abs(values).max() <= spec.qmax and scales.shape == (blocks, 64)
    calibrated = (values.reshape(blocks, size, 64) * scales[:, None, :]).reshape(inputs_dim, 64)
    error = np.linalg.norm(inputs @ (weight - calibrated))
    assert error < 0.8 * np.linalg.norm(inputs @ (weight - rtn.dequantize()))


def test_int4_cal_is_closer_to_float32_than_int4_on_unseen_text(tiny_params):
    """Calibrated on quantize/calibration.py's sample, measured on other text."""
    config = mz.get_preset("tiny-gemma3")
    params, tokenizer = tiny_params("tiny-gemma3"), mz.ByteTokenizer()
    ids = tokenizer.encode("Unseen words: a river, seven stones and the colour of the sky at "
                           "noon, measured twice by a careful hand.", add_bos=True)

    def log_probs(p):
        cache = KVCache.create(config, 1, len(ids))
        logits, _ = apply(config, p, jnp.asarray([ids]), jnp.arange(len(ids))[None], cache)
        return jax.nn.log_softmax(logits[0], axis=-1)

    reference = log_probs(params)

    def kl(recipe):
        qparams, _ = quantize.quantize_params(params, recipe, config=config,
                                              tokenizer=tokenizer)
        ours = log_probs(dequantize_params(qparams))
        return float(jnp.mean(jnp.sum(jnp.exp(reference) * (reference - ours), -1)))

    assert kl("int4-cal") < 0.75 * kl("int4")
    with pytest.raises(GemmaforgeError, match="calibrated"):
        quantize.quantize_params(params, "int4-cal")


def test_int4_cal_exports_like_int4(tmp_path, tiny_params):
    model = mz.LoadedModel(mz.get_preset("tiny-gemma2"), tiny_params("tiny-gemma2"),
                           mz.ByteTokenizer(), "test weights", True)
    manifest = export(model, tmp_path / "out", formats=("onnx", "stablehlo"), buckets=(8,),
                      quant="int4-cal")
    assert manifest["quantization"]["tensors"]["layers.0.mlp.down_proj"]["block"] == 32
    report = validate_artifact(tmp_path / "out", ["onnxruntime", "stablehlo"], decode_steps=4)
    assert report["passed"], report
