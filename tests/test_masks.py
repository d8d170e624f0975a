"""Mask helpers against literal matrices."""

import jax.numpy as jnp
import numpy as np

from model_zoo import masks
from model_zoo.composites import MASK_VALUE


def test_causal_mask_literal():
    got = masks.visible(jnp.array([[0, 1, 2]]), cache_len=4, window=None)
    expected = np.array([[1, 0, 0, 0],
                         [1, 1, 0, 0],
                         [1, 1, 1, 0]], bool)
    np.testing.assert_array_equal(np.asarray(got[0]), expected)


def test_sliding_window_mask_literal():
    # Queries at positions 3..5 with window 2 see themselves and one key before.
    got = masks.visible(jnp.array([[3, 4, 5]]), cache_len=6, window=2)
    expected = np.array([[0, 0, 1, 1, 0, 0],
                         [0, 0, 0, 1, 1, 0],
                         [0, 0, 0, 0, 1, 1]], bool)
    np.testing.assert_array_equal(np.asarray(got[0]), expected)


def test_rows_have_their_own_positions():
    got = masks.visible(jnp.array([[1], [3]]), cache_len=4, window=None)
    np.testing.assert_array_equal(np.asarray(got[:, 0]), [[1, 1, 0, 0], [1, 1, 1, 1]])


def test_additive_mask_values_and_shape():
    add = masks.additive(jnp.array([[[True, False]]]))
    assert add.shape == (1, 1, 1, 2)
    np.testing.assert_array_equal(np.asarray(add).ravel(), [0.0, MASK_VALUE])
