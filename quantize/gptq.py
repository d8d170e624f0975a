"""GPTQ (Frantar et al., 2022) onto our blockwise grids: the calibrated rounding of `int4-cal`.

Round-to-nearest minimises each weight's own error; GPTQ minimises the error of the layer's
output on calibration inputs X. Going through the input features in order, it rounds one row of
W [in, out], then spreads that row's rounding error over the rows not yet rounded, weighted by the
inverse of H = X^T X (through its Cholesky factor), so later rows compensate. Each block's scale
is taken when the block's first row is reached, from the rows as updated so far. The grid is the
spec's own (symmetric, scale = max |w| / qmax per block and output): every format stores the
result exactly as it stores round-to-nearest values.

Calibration inputs come from the float32 model on a committed sample
(`quantize/calibration.py`), each projection's input captured by a `Recorder` the model is built
with for one eager forward.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model_zoo.cache import KVCache
from model_zoo.errors import GemmaforgeError
from model_zoo.layers import IN_AXES, Projection
from model_zoo.lowering import PLAIN
from model_zoo.transformer import Gemma
from quantize.tensor import dequantize_params

DAMPING = 0.01  # of the mean diagonal of H, added to it: keeps H invertible on few tokens
LAZY_ROWS = 128  # rows updated together before the rest of W is (a multiple of blocks <= 128)


@dataclasses.dataclass(frozen=True, eq=False)
class Recorder(Projection):
    """Hands each matmul its input unchanged and keeps, for the layers' projections, (role,
    input as float32 [tokens, in_features]) in the order the layers run: the capture of one
    eager forward. (The LM head's input is not kept: the table is rounded to nearest.)"""

    inputs: list = dataclasses.field(default_factory=list)

    def __call__(self, role: str, x: jax.Array) -> jax.Array:
        if IN_AXES[role] <= 0:
            return x
        features = math.prod(x.shape[x.ndim - IN_AXES[role]:])
        self.inputs.append((role, np.asarray(x, np.float32).reshape(-1, features)))
        return x


def projection_inputs(config, params, ids: list[int]) -> list[tuple[str, np.ndarray]]:
    """(role, input [tokens, in_features]) of every projection, layer by layer: the model
    under `config`, built with a `Recorder`, run once, eagerly, over `ids`."""
    recorder = Recorder()
    model = nnx.eval_shape(lambda: Gemma(config, key=jax.random.key(0), projection=recorder))
    model = nnx.merge(nnx.graphdef(model), dequantize_params(params))
    model(jnp.asarray([ids], jnp.int32), jnp.arange(len(ids), dtype=jnp.int32)[None],
          KVCache.create(config, 1, len(ids)), PLAIN)
    return recorder.inputs


def hessians(config, params, ids: list[int]) -> dict[str, np.ndarray]:
    """Dotted parameter name -> H = X^T X (float64 [in, in]) of its calibration inputs
    (`projection_inputs`)."""
    seen: dict[str, int] = {}
    out = {}
    for role, x in projection_inputs(config, params, ids):
        layer = seen.get(role, 0)
        seen[role] = layer + 1
        section = "attn" if role in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        x = x.astype(np.float64)
        out[f"layers.{layer}.{section}.{role}"] = x.T @ x
    if any(count != config.num_layers for count in seen.values()):
        raise GemmaforgeError(f"calibration saw projections {seen}, not one per layer; "
                              "this is a gemmaforge bug")
    return out


def gptq(matrix: np.ndarray, hessian: np.ndarray, qmax: int,
         block: int) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values [in, out], float32 scales [in / block, out]) of `matrix` [in, out] on the
    symmetric grid of `qmax` with one scale per `block` inputs of each output."""
    weights = matrix.astype(np.float64).copy()
    inputs, outputs = weights.shape
    h = hessian.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    weights[dead] = 0.0
    h[np.diag_indices(inputs)] += DAMPING * np.mean(np.diag(h))
    # The upper Cholesky factor of H^-1: row i holds how row i's error moves the later rows.
    factor = np.linalg.cholesky(np.linalg.inv(h)).T
    values = np.zeros((inputs, outputs), np.int8)
    scales = np.zeros((inputs // block, outputs), np.float32)
    # A block's scale is read from its rows when the first is reached, so a block must lie in
    # one batch: a larger block (per channel: all inputs) is its own batch.
    batch = max(LAZY_ROWS, block)
    for start in range(0, inputs, batch):
        stop = min(start + batch, inputs)
        rows = weights[start:stop].copy()
        errors = np.zeros_like(rows)
        for i in range(stop - start):
            row = start + i
            if row % block == 0:
                scale = np.abs(rows[i:i + block]).max(axis=0) / qmax
                scales[row // block] = np.where(scale > 0, scale, 1.0)
            scale = scales[row // block].astype(np.float64)
            q = np.clip(np.round(rows[i] / scale), -qmax, qmax)
            values[row] = q
            error = (rows[i] - q * scale) / factor[row, row]
            rows[i:] -= np.outer(factor[row, row:stop], error)
            errors[i] = error
        weights[stop:] -= factor[start:stop, stop:].T @ errors
    return values, scales
