"""The reference runner: the JAX model itself, on whatever backend JAX has (sharded or not)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from model_zoo import inference
from model_zoo.cache import KVCache
from model_zoo.config import ModelConfig
from model_zoo.lowering import Composites
from model_zoo.sharding import replicated_like
from model_zoo.transformer import Params
from quantize.activations import activation_projection
from quantize.tensor import dequantize_once, is_quantized
from runtimes.base import check_decode, checked_prompt


class JaxRunner:
    """Runs `model_zoo` directly: the numbers every artifact is compared with."""

    name = "jax"

    def __init__(self, config: ModelConfig, params: Params, *, max_len: int,
                 composites: Composites = Composites.CORE):
        self.config = config
        self.params = dequantize_once(params) if is_quantized(params) else params
        self.max_len = max_len
        self.vocab_size = config.vocab_size
        self.composites = composites
        # A quantized model with int8-dynamic activations rounds every matmul's input.
        self.projection = activation_projection(config)
        self._cache: KVCache | None = None
        self._position = 0

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        prompt_ids = checked_prompt(self, prompt_ids)
        cache = KVCache.create(self.config, 1, self.max_len,
                               sharding=replicated_like(self.params))
        logits, self._cache, lengths = inference.prefill(
            self.config, self.params, [list(prompt_ids)], cache, composites=self.composites,
            projection=self.projection)
        self._position = int(lengths[0])
        return np.asarray(logits[0])

    def decode(self, token: int) -> np.ndarray:
        token = check_decode(self, None if self._cache is None else self._position, token)
        logits, self._cache = inference.decode(self.config, self.params, [token],
                                               [self._position], self._cache,
                                               composites=self.composites,
                                               projection=self.projection)
        self._position += 1
        return np.asarray(logits[0])
