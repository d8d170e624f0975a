"""Choosing the next token from logits: greedy, or seeded temperature / top-k / top-p sampling.

Sampling runs on the host in numpy so that every runtime, whatever produced its logits, picks
tokens the same way from the same numbers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model_zoo.errors import GemmaforgeError

# Past this, softmax(logits / T) is uniform to float64 precision for any logits a model gives.
MAX_TEMPERATURE = 1e4


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """temperature 0 is greedy (argmax); otherwise softmax(logits / temperature) restricted to
    the top_k most likely tokens (0: all) and the smallest set with mass >= top_p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        # Written so that NaN fails each test: every comparison with NaN is false.
        if not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise GemmaforgeError(f"temperature must be in [0, {MAX_TEMPERATURE}] (0: greedy), "
                                  f"got {self.temperature}")
        if self.top_k < 0:
            raise GemmaforgeError(f"top-k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise GemmaforgeError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.seed < 2**63:
            raise GemmaforgeError(f"the seed must be in [0, 2**63), got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplerConfig()


class Sampler:
    """Draws tokens for one sequence; its generator is seeded once, so runs are reproducible."""

    def __init__(self, config: SamplerConfig):
        self.config = config
        self._rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """logits [V] -> token id."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.config.greedy:
            return int(np.argmax(logits))
        scaled = logits / self.config.temperature
        candidates = np.arange(scaled.shape[0])
        if self.config.top_k:
            keep = np.argpartition(-scaled, min(self.config.top_k, scaled.size) - 1)
            candidates = keep[: self.config.top_k]
        order = candidates[np.argsort(-scaled[candidates], kind="stable")]
        probs = np.exp(scaled[order] - scaled[order[0]])
        probs /= probs.sum()
        if self.config.top_p < 1.0:
            cutoff = int(np.searchsorted(np.cumsum(probs), self.config.top_p)) + 1
            order, probs = order[:cutoff], probs[:cutoff] / probs[:cutoff].sum()
        return int(self._rng.choice(order, p=probs))
