"""Hugging Face parameter names and layouts for Gemma, Gemma 2 and Gemma 3 text models.

HF stores every linear layer as torch's [out, in]; we keep einsum layouts with named head axes.
Each entry maps one HF tensor to one of our parameters with the conversion both ways, so the
safetensors reader, the writer used by tests and the parity tests share one table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from model_zoo.config import Family, ModelConfig
from model_zoo.tree import ParamPath, get_path


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one HF tensor becomes one of ours and back. `same` is True when nothing moves, so a
    reader may fill our buffer row by row."""

    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    same: bool = False


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor <-> one of our parameters.

    Attributes:
      path: where the parameter sits in our tree.
      hf_shape: the tensor's shape in the HF checkpoint.
      layout: the conversion both ways.
    """

    path: ParamPath
    hf_shape: tuple[int, ...]
    layout: Layout

    def to_ours(self, array: np.ndarray) -> np.ndarray:
        return self.layout.to_ours(array)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        return self.layout.to_hf(array)


SAME = Layout(lambda w: w, lambda w: w, same=True)
TRANSPOSED = Layout(lambda w: w.T, lambda w: w.T)


def _heads_in(heads: int, head_dim: int) -> Layout:
    """HF [heads * H, D] <-> ours [D, heads, H]."""
    def to_ours(w):
        # [heads * H, D] -> [D, heads * H] -> [D, heads, H]
        return w.T.reshape(w.shape[1], heads, head_dim)

    def to_hf(w):
        # [D, heads, H] -> [D, heads * H] -> [heads * H, D]
        return w.reshape(w.shape[0], heads * head_dim).T

    return Layout(to_ours, to_hf)


def _heads_out(heads: int, head_dim: int) -> Layout:
    """HF o_proj [D, N * H] <-> ours [N, H, D]."""
    def to_ours(w):
        # [D, N * H] -> [N * H, D] -> [N, H, D]
        return w.T.reshape(heads, head_dim, w.shape[0])

    def to_hf(w):
        # [N, H, D] -> [N * H, D] -> [D, N * H]
        return w.reshape(heads * head_dim, w.shape[2]).T

    return Layout(to_ours, to_hf)


def hf_tensor_map(config: ModelConfig, prefix: str = "model.") -> dict[str, TensorMap]:
    """Every HF tensor name of a `config` text model (under `prefix`) and where it goes."""
    d, n, k, h, f = (config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                     config.hidden_dim)
    table: dict[str, TensorMap] = {}

    def add(name: str, path: ParamPath, hf_shape: tuple[int, ...], layout: Layout) -> None:
        table[prefix + name] = TensorMap(path, hf_shape, layout)

    add("embed_tokens.weight", ("embedder", "embedding"), (config.vocab_size, d), SAME)
    add("norm.weight", ("final_norm", "scale"), (d,), SAME)
    for i in range(config.num_layers):
        layer = f"layers.{i}."
        add(layer + "self_attn.q_proj.weight", ("layers", i, "attn", "q_proj"), (n * h, d),
            _heads_in(n, h))
        add(layer + "self_attn.k_proj.weight", ("layers", i, "attn", "k_proj"), (k * h, d),
            _heads_in(k, h))
        add(layer + "self_attn.v_proj.weight", ("layers", i, "attn", "v_proj"), (k * h, d),
            _heads_in(k, h))
        add(layer + "self_attn.o_proj.weight", ("layers", i, "attn", "o_proj"), (d, n * h),
            _heads_out(n, h))
        if config.use_qk_norm:
            add(layer + "self_attn.q_norm.weight", ("layers", i, "attn", "q_norm", "scale"), (h,),
                SAME)
            add(layer + "self_attn.k_norm.weight", ("layers", i, "attn", "k_norm", "scale"), (h,),
                SAME)
        add(layer + "mlp.gate_proj.weight", ("layers", i, "mlp", "gate_proj"), (f, d),
            TRANSPOSED)
        add(layer + "mlp.up_proj.weight", ("layers", i, "mlp", "up_proj"), (f, d), TRANSPOSED)
        add(layer + "mlp.down_proj.weight", ("layers", i, "mlp", "down_proj"), (d, f),
            TRANSPOSED)
        add(layer + "input_layernorm.weight", ("layers", i, "pre_attn_norm", "scale"), (d,),
            SAME)
        if config.family is Family.GEMMA1:
            # Gemma 1's "post_attention_layernorm" is the norm *before* the MLP.
            add(layer + "post_attention_layernorm.weight", ("layers", i, "pre_ffw_norm", "scale"),
                (d,), SAME)
        else:
            add(layer + "post_attention_layernorm.weight",
                ("layers", i, "post_attn_norm", "scale"), (d,), SAME)
            add(layer + "pre_feedforward_layernorm.weight",
                ("layers", i, "pre_ffw_norm", "scale"), (d,), SAME)
            add(layer + "post_feedforward_layernorm.weight",
                ("layers", i, "post_ffw_norm", "scale"), (d,), SAME)
    return table


def to_hf_state(config: ModelConfig, params: dict, prefix: str = "model.") -> dict[str, np.ndarray]:
    """Our parameters as an HF state dict (numpy, contiguous)."""
    return {name: np.ascontiguousarray(entry.to_hf(np.asarray(get_path(params, entry.path))))
            for name, entry in hf_tensor_map(config, prefix).items()}
