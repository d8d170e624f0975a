"""Test-side writers of the checkpoint formats our readers take, from our parameters.

Each writes the format with its own library (gguf's GGUFWriter, safetensors, orbax) and spells
out the foreign names and layouts here, independently of the readers' tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np

from model_zoo.checkpoints.hf_config import config_to_hf
from model_zoo.checkpoints.hf_names import to_hf_state
from model_zoo.config import Family, ModelConfig

Q8_0 = gguf.GGMLQuantizationType.Q8_0


def numpy_params(params) -> dict:
    return {k: numpy_params(v) if isinstance(v, dict) else np.asarray(v, np.float32)
            for k, v in params.items()}


def gguf_names(config: ModelConfig, i: int) -> dict[str, tuple]:
    """GGUF tensor name -> our path, for layer i (llama.cpp's names)."""
    layer = ("layers", i)
    names = {
        f"blk.{i}.attn_q.weight": (*layer, "attn", "q_proj"),
        f"blk.{i}.attn_k.weight": (*layer, "attn", "k_proj"),
        f"blk.{i}.attn_v.weight": (*layer, "attn", "v_proj"),
        f"blk.{i}.attn_output.weight": (*layer, "attn", "o_proj"),
        f"blk.{i}.ffn_gate.weight": (*layer, "mlp", "gate_proj"),
        f"blk.{i}.ffn_up.weight": (*layer, "mlp", "up_proj"),
        f"blk.{i}.ffn_down.weight": (*layer, "mlp", "down_proj"),
        f"blk.{i}.attn_norm.weight": (*layer, "pre_attn_norm", "scale"),
        f"blk.{i}.ffn_norm.weight": (*layer, "pre_ffw_norm", "scale"),
    }
    if config.family is not Family.GEMMA1:
        names[f"blk.{i}.post_attention_norm.weight"] = (*layer, "post_attn_norm", "scale")
        names[f"blk.{i}.post_ffw_norm.weight"] = (*layer, "post_ffw_norm", "scale")
    if config.use_qk_norm:
        names[f"blk.{i}.attn_q_norm.weight"] = (*layer, "attn", "q_norm", "scale")
        names[f"blk.{i}.attn_k_norm.weight"] = (*layer, "attn", "k_norm", "scale")
    return names


def _gguf_matrix(path: tuple, value: np.ndarray) -> np.ndarray:
    """Our layout -> llama.cpp's [out, in]."""
    kind = path[-1]
    if kind in ("q_proj", "k_proj", "v_proj"):  # [D, heads, H] -> [heads * H, D]
        return value.reshape(value.shape[0], -1).T
    if kind == "o_proj":  # [N, H, D] -> [D, N * H]
        return value.reshape(-1, value.shape[-1]).T
    if kind in ("gate_proj", "up_proj", "down_proj"):
        return value.T
    return value


# Byte ranges of the float16 scales in one block of the types gguf cannot quantize: random
# blocks get these set to small positive values (the rest of the bytes stay random).
K_SCALES = {gguf.GGMLQuantizationType.Q4_K: (0, 4), gguf.GGMLQuantizationType.Q6_K: (208, 210),
            gguf.GGMLQuantizationType.Q5_K: (0, 4), gguf.GGMLQuantizationType.Q2_K: (80, 84)}


def random_blocks(shape: tuple[int, int], qtype, seed: int = 0) -> np.ndarray:
    """Random raw blocks of `qtype` for an [out, in] matrix: every bit pattern of values,
    sub-scales and minimums, with float16 super-block scales in [1e-4, 1e-3)."""
    rng = np.random.default_rng(seed)
    per_block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (shape[0] * shape[1] // per_block, block_bytes), np.uint8)
    start, stop = K_SCALES[qtype]
    scales = rng.uniform(1e-4, 1e-3, (blocks.shape[0], (stop - start) // 2)).astype(np.float16)
    blocks[:, start:stop] = scales.view(np.uint8)
    return blocks.reshape(shape[0], -1)


def write_gguf(path: Path, config: ModelConfig, params, *, qtype=Q8_0, vocab=None,
               arch: str | None = None, skip: tuple[str, ...] = (), extra: dict | None = None,
               qtypes: dict | None = None):
    """A GGUF of `params`: matrices in `qtype` (or `qtypes[role]`, role e.g. "attn_output",
    "token_embd"; the K types gguf cannot quantize get random blocks), norms float32 with
    llama.cpp's +1.

    Returns what the file holds once dequantized (our layout, norms without +1).
    """
    from model_zoo.tree import get_path, set_path

    arch = arch or {Family.GEMMA1: "gemma", Family.GEMMA2: "gemma2",
                    Family.GEMMA3: "gemma3"}[config.family]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(config.num_layers)
    writer.add_embedding_length(config.embed_dim)
    writer.add_feed_forward_length(config.hidden_dim)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_context_length(config.max_context)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    if config.sliding_window:
        writer.add_sliding_window(config.sliding_window)
    pieces, scores, types = vocab or tiny_vocab(config.vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)

    names = {"token_embd.weight": ("embedder", "embedding"),
             "output_norm.weight": ("final_norm", "scale")}
    for i in range(config.num_layers):
        names.update(gguf_names(config, i))
    names = {name: path for name, path in names.items() if name not in skip}
    names.update(extra or {})  # name -> a raw array written as it is
    expected: dict = {}
    ours = numpy_params(params)
    for name, our_path in names.items():
        value = get_path(ours, our_path) if isinstance(our_path, tuple) else our_path
        if isinstance(our_path, tuple) and our_path[-1] == "scale":
            writer.add_tensor(name, (value + 1.0).astype(np.float32))
            set_path(expected, our_path, (value + 1.0).astype(np.float32) - 1.0)
            continue
        matrix = _gguf_matrix(our_path, value) if isinstance(our_path, tuple) else value
        role = name.removesuffix(".weight").split(".")[-1]
        kind = (qtypes or {}).get(role, qtype)
        if kind in K_SCALES:
            stored = random_blocks(matrix.shape, kind, seed=len(expected) + len(name))
        else:
            stored = gguf.quants.quantize(np.ascontiguousarray(matrix), kind)
        writer.add_tensor(name, stored, raw_dtype=kind)
        if isinstance(our_path, tuple):
            back = gguf.quants.dequantize(stored, kind).reshape(matrix.shape)
            set_path(expected, our_path, _from_gguf_matrix(our_path, back, value.shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _from_gguf_matrix(path: tuple, matrix: np.ndarray, shape: tuple) -> np.ndarray:
    """llama.cpp's [out, in] -> our layout (the embedding is [V, D] in both)."""
    return matrix.reshape(shape) if path[-1] == "embedding" else matrix.T.reshape(shape)


def tiny_vocab(size: int):
    """A SentencePiece-style vocabulary: specials, turn markers, 256 byte pieces, then letters and
    letter pairs as normal pieces (GGUF writes spaces, not '▁')."""
    pieces = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    types = [3, 3, 3, 2, 3, 3]
    pieces += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    letters = "abcdefghijklmnopqrstuvwxyz "
    normal = list(letters) + [a + b for a in letters for b in letters]
    normal = [p for p in normal if p not in pieces][: size - len(pieces)]
    pieces += normal
    types += [1] * len(normal)
    scores = [0.0] * (len(pieces) - len(normal)) + [-float(i) for i in range(len(normal))]
    return pieces, scores, types


def tiny_tokenizer_model(size: int) -> bytes:
    """A SentencePiece model of `tiny_vocab`, as a tokenizer.model file holds it."""
    from model_zoo.spm import GemmaTokenizer

    pieces, scores, types = tiny_vocab(size)
    return GemmaTokenizer.from_vocab(pieces, np.array(scores), np.array(types), bos_id=2,
                                     eos_id=1, pad_id=0, unk_id=3).model_proto


def write_hf_folder(folder: Path, config: ModelConfig, params, *, files: int = 2,
                    dtype=np.float32, prefix: str = "model.", extra: dict | None = None,
                    skip: tuple[str, ...] = (), config_json: dict | None = None) -> None:
    """An HF folder: config.json, tokenizer.model, `files` safetensors shards and their index."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in to_hf_state(config, params, prefix).items() if k not in skip}
    state = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in state.items()}
    state.update(extra or {})
    names = sorted(state)
    weight_map = {}
    for index in range(files):
        shard = f"model-{index + 1:05d}-of-{files:05d}.safetensors"
        chunk = {n: state[n] for n in names[index::files]}
        save_file(chunk, str(folder / shard))
        weight_map.update({n: shard for n in chunk})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config_json or config_to_hf(config)))
    (folder / "tokenizer.model").write_bytes(tiny_tokenizer_model(config.vocab_size))


def gemma_lib_tree(config: ModelConfig, params, *, transpose_gating: bool = True) -> dict:
    """Our parameters in the gemma library's flat checkpoint layout."""
    p = numpy_params(params)
    tree = {"transformer/embedder": {"input_embedding": p["embedder"]["embedding"]},
            "transformer/final_norm": {"scale": p["final_norm"]["scale"]}}
    for i in range(config.num_layers):
        layer, prefix = p["layers"][i], f"transformer/layer_{i}"
        attn = layer["attn"]
        q = attn["q_proj"].transpose(1, 0, 2)  # [D, N, H] -> [N, D, H]
        k = attn["k_proj"].transpose(1, 0, 2)
        v = attn["v_proj"].transpose(1, 0, 2)
        if config.num_heads == config.num_kv_heads:
            tree[f"{prefix}/attn/qkv_einsum"] = {"w": np.stack([q, k, v])}
        else:
            tree[f"{prefix}/attn/q_einsum"] = {"w": q}
            tree[f"{prefix}/attn/kv_einsum"] = {"w": np.stack([k, v])}
        tree[f"{prefix}/attn/attn_vec_einsum"] = {"w": attn["o_proj"]}
        if config.use_qk_norm:
            tree[f"{prefix}/attn/_query_norm"] = {"scale": attn["q_norm"]["scale"]}
            tree[f"{prefix}/attn/_key_norm"] = {"scale": attn["k_norm"]["scale"]}
        gate, up = layer["mlp"]["gate_proj"], layer["mlp"]["up_proj"]  # [D, F]
        gating = np.stack([gate.T, up.T]) if transpose_gating else np.stack([gate, up])
        tree[f"{prefix}/mlp/gating_einsum"] = {"w": gating}
        tree[f"{prefix}/mlp/linear"] = {"w": layer["mlp"]["down_proj"]}
        for ours, theirs in (("pre_attn_norm", "pre_attention_norm"),
                             ("post_attn_norm", "post_attention_norm"),
                             ("pre_ffw_norm", "pre_ffw_norm"), ("post_ffw_norm", "post_ffw_norm")):
            if ours in layer:
                tree[f"{prefix}/{theirs}"] = {"scale": layer[ours]["scale"]}
    return tree


def write_orbax(path: Path, tree: dict) -> None:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path.absolute(), tree)
    checkpointer.wait_until_finished()
