"""The gemma library's parameter trees (Gemma 2 and 3) saved with orbax-checkpoint.

Released checkpoints are "flat": keys like `transformer/layer_0/attn/q_einsum` holding `{"w": ...}`;
the library's in-memory form nests the same names (`layer_0/attn/q_einsum/w`). Both are read. The
layouts (google-deepmind/gemma `gm/nn`): q_einsum [N, D, H], kv_einsum [2, K, D, H] (k then v),
qkv_einsum [3, N, D, H] when N == K, attn_vec_einsum [N, H, D], gating_einsum [2, F, D] or
[2, D, F] (gelu branch first), linear [F, D]; norms store w of (1 + w). Vision-tower and
multimodal projection parameters of Gemma 3 are skipped. The tree is restored one layer at a
time, to numpy.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

from model_zoo.checkpoints.collect import Collector, unexpected
from model_zoo.config import ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.transformer import Params
from model_zoo.untrusted import check_tree, one_line, shown

_LAYER = re.compile(r"layer_(\d+)/(.+)")
_NORMS = {"pre_attention_norm": "pre_attn_norm", "post_attention_norm": "post_attn_norm",
          "pre_ffw_norm": "pre_ffw_norm", "post_ffw_norm": "post_ffw_norm"}
_SKIPPED = ("SigLiPFromPatches_0", "vision_encoder", "embedder/mm_", "mm_")

Split = list[tuple[tuple, Callable[[np.ndarray], np.ndarray]]]


def _heads_first_to_ours(w: np.ndarray) -> np.ndarray:
    # [heads, D, H] -> [D, heads, H]
    return w.transpose(1, 0, 2)


def _targets(config: ModelConfig, module: str, shape: tuple[int, ...]) -> tuple[tuple, Split]:
    """(expected source shape, [(our path, conversion)]) for one gemma-library tensor."""
    d, n, k, h, f = (config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim,
                     config.hidden_dim)
    if module == "embedder/input_embedding":
        return (config.vocab_size, d), [(("embedder", "embedding"), lambda w: w)]
    if module == "final_norm/scale":
        return (d,), [(("final_norm", "scale"), lambda w: w)]
    match = _LAYER.fullmatch(module)
    if not match:
        return (), []
    i, rest = int(match.group(1)), match.group(2)
    layer = ("layers", i)
    if rest.endswith("/scale") and rest[: -len("/scale")] in _NORMS:
        return (d,), [((*layer, _NORMS[rest[: -len("/scale")]], "scale"), lambda w: w)]
    simple = {
        "attn/q_einsum": ((n, d, h), [((*layer, "attn", "q_proj"), _heads_first_to_ours)]),
        "attn/kv_einsum": ((2, k, d, h), [
            ((*layer, "attn", "k_proj"), lambda w: _heads_first_to_ours(w[0])),
            ((*layer, "attn", "v_proj"), lambda w: _heads_first_to_ours(w[1]))]),
        "attn/qkv_einsum": ((3, n, d, h), [
            ((*layer, "attn", "q_proj"), lambda w: _heads_first_to_ours(w[0])),
            ((*layer, "attn", "k_proj"), lambda w: _heads_first_to_ours(w[1])),
            ((*layer, "attn", "v_proj"), lambda w: _heads_first_to_ours(w[2]))]),
        "attn/attn_vec_einsum": ((n, h, d), [((*layer, "attn", "o_proj"), lambda w: w)]),
        "attn/_query_norm/scale": ((h,), [((*layer, "attn", "q_norm", "scale"), lambda w: w)]),
        "attn/_key_norm/scale": ((h,), [((*layer, "attn", "k_norm", "scale"), lambda w: w)]),
        "mlp/linear": ((f, d), [((*layer, "mlp", "down_proj"), lambda w: w)]),
    }
    if rest in simple:
        return simple[rest]
    if rest == "mlp/gating_einsum":
        if shape == (2, d, f) and d != f:  # the untransposed form (Gemma 2 2B)
            return (2, d, f), [((*layer, "mlp", "gate_proj"), lambda w: w[0]),
                               ((*layer, "mlp", "up_proj"), lambda w: w[1])]
        return (2, f, d), [((*layer, "mlp", "gate_proj"), lambda w: w[0].T),
                           ((*layer, "mlp", "up_proj"), lambda w: w[1].T)]
    return (), []


def _flatten(tree: dict) -> Iterator[tuple[tuple[str, ...], object]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from (((key, *rest), leaf) for rest, leaf in _flatten(value))
        else:
            yield (key,), value


def _module_name(keys: tuple[str, ...]) -> str:
    """('transformer/layer_0/attn/q_einsum', 'w') -> 'layer_0/attn/q_einsum'."""
    name = "/".join(keys)
    name = name.removeprefix("transformer/")
    return name.removesuffix("/w")


def read_orbax(path: str | os.PathLike, config: ModelConfig,
               shardings: Params | None = None) -> Params:
    """Our parameters from a gemma-library Orbax checkpoint directory."""
    import orbax.checkpoint as ocp  # slow to import; only this reader needs it

    path = os.path.abspath(os.fspath(path))
    check_tree(Path(path))
    checkpointer = ocp.PyTreeCheckpointer()
    with _orbax_errors(path):
        tree = checkpointer.metadata(path).item_metadata.tree
        if not isinstance(tree, dict):
            raise GemmaforgeError(f"{path}: the checkpoint holds a {type(tree).__name__}; "
                                  "expected a tree of named arrays")
        return _read(checkpointer, path, tree, config, shardings)


@contextlib.contextmanager
def _orbax_errors(path: str) -> Iterator[None]:
    """Orbax and TensorStore raise many kinds of exception for a broken directory: one line."""
    try:
        yield
    except GemmaforgeError:
        raise
    except Exception as error:
        raise GemmaforgeError(f"{path} is not a readable Orbax checkpoint "
                              f"({shown(one_line(f'{type(error).__name__}: {error}'))})") from None


def _read(checkpointer, path: str, tree: dict, config: ModelConfig,
          shardings: Params | None) -> Params:
    """The tree's parameters, checked against `config` before any is restored."""
    import orbax.checkpoint as ocp

    collector = Collector(config, path, shardings)
    groups: dict[str, list[tuple[tuple[str, ...], object]]] = {}
    extra = []
    for keys, meta in _flatten(tree):
        module = _module_name(keys)
        if module.startswith(_SKIPPED):
            continue
        want, targets = _targets(config, module, tuple(meta.shape))
        if not targets:
            extra.append(module)
            continue
        collector.check_shape(module, tuple(meta.shape), want)
        layer = _LAYER.match(module)
        groups.setdefault(layer.group(1) if layer else module, []).append((keys, meta))
    if extra:
        raise unexpected(path, extra)

    for entries in groups.values():
        item: dict = {}
        for keys, meta in entries:
            node = item
            for key in keys[:-1]:
                node = node.setdefault(key, {})
            node[keys[-1]] = meta
        restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
            item=item, partial_restore=True,
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)))
        for keys, value in _flatten(restored):
            module = _module_name(keys)
            _, targets = _targets(config, module, tuple(value.shape))
            array = np.asarray(value, dtype=np.float32)
            for our_path, convert in targets:
                collector.add(our_path, convert(array), module)
    return collector.finish()
