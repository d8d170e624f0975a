"""Token choice: greedy is argmax, sampling is seeded and respects top-k / top-p."""

import numpy as np
import pytest

from model_zoo.errors import GemmaforgeError
from runtimes.sampling import Sampler, SamplerConfig

LOGITS = np.log(np.array([0.05, 0.5, 0.3, 0.1, 0.05]))


def test_greedy_is_argmax():
    assert Sampler(SamplerConfig())(LOGITS) == 1


def test_sampling_is_reproducible_for_a_seed_and_varies_across_seeds():
    def draws(seed):
        sampler = Sampler(SamplerConfig(temperature=1.0, seed=seed))
        return [sampler(LOGITS) for _ in range(50)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_top_k_keeps_the_k_most_likely():
    sampler = Sampler(SamplerConfig(temperature=1.0, top_k=2, seed=0))
    assert {sampler(LOGITS) for _ in range(300)} == {1, 2}


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    sampler = Sampler(SamplerConfig(temperature=1.0, top_p=0.85, seed=0))
    assert {sampler(LOGITS) for _ in range(300)} == {1, 2, 3}


def test_frequencies_follow_the_distribution():
    sampler = Sampler(SamplerConfig(temperature=1.0, seed=1))
    counts = np.bincount([sampler(LOGITS) for _ in range(4000)], minlength=5) / 4000
    np.testing.assert_allclose(counts, np.exp(LOGITS), atol=0.03)


@pytest.mark.parametrize("bad", [{"temperature": -1.0}, {"top_k": -2}, {"top_p": 0.0},
                                 {"top_p": 1.5}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(GemmaforgeError):
        SamplerConfig(**bad)
