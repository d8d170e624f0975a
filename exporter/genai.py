"""What onnxruntime-genai reads beside model.onnx: genai_config.json and a Hugging Face
tokenizer.json, which it needs (a SentencePiece tokenizer.model alone fails to load).

The tokenizer.json is the SentencePiece BPE model restated: the same pieces and ids, merges
derived from the pieces (a pair merges when both halves and their join are pieces, ranked by
the join's id, which SentencePiece orders by score), byte fallback, spaces as '▁', and every
control and user-defined piece as an added token matched whole. Tests compare its ids with
SentencePiece's on real text.
"""

from __future__ import annotations

import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as spm_pb2

from model_zoo.config import FAMILY_NAMES, ModelConfig

SPACE = "\u2581"
_Piece = spm_pb2.ModelProto.SentencePiece


def _merges(pieces: list[str], normal: set[int]) -> list[list[str]]:
    ids = {piece: index for index, piece in enumerate(pieces)}
    ranked = []
    for index in normal:
        piece = pieces[index]
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if ids.get(left) in normal and ids.get(right) in normal:
                ranked.append((index, ids[left], ids[right], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def tokenizer_json(proto: spm_pb2.ModelProto) -> dict:
    """The Hugging Face tokenizer.json of a SentencePiece BPE model with byte fallback."""
    pieces = [p.piece for p in proto.pieces]
    normal = {i for i, p in enumerate(proto.pieces) if p.type == _Piece.NORMAL}
    unknown = next(p.piece for p in proto.pieces if p.type == _Piece.UNKNOWN)
    whole = [(i, p) for i, p in enumerate(proto.pieces)
             if p.type in (_Piece.CONTROL, _Piece.USER_DEFINED, _Piece.UNKNOWN)]
    bos = proto.pieces[proto.trainer_spec.bos_id].piece
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        # Pieces matched whole in the raw text, as SentencePiece matches them: a user-defined
        # run of '▁' is written as the spaces it stands for (onnxruntime-genai's tokenizer
        # matches added tokens before any normalizer, and decodes them as written).
        "added_tokens": [{"id": i, "content": p.piece.replace(SPACE, " ") if p.type ==
                          _Piece.USER_DEFINED else p.piece, "single_word": False,
                          "lstrip": False, "rstrip": False, "normalized": False,
                          "special": p.type != _Piece.USER_DEFINED} for i, p in whole],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [proto.trainer_spec.bos_id],
                                     "tokens": [bos]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unknown,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {piece: index for index, piece in enumerate(pieces)},
                  "merges": _merges(pieces, normal)},
    }


def write_tokenizer_files(directory: Path, model_proto: bytes, *, max_len: int) -> list[str]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `directory`."""
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    spec = proto.trainer_spec
    special = {"bos_token": proto.pieces[spec.bos_id].piece,
               "eos_token": proto.pieces[spec.eos_id].piece,
               "unk_token": proto.pieces[spec.unk_id].piece}
    if spec.pad_id >= 0:
        special["pad_token"] = proto.pieces[spec.pad_id].piece
    (directory / "tokenizer.json").write_text(
        json.dumps(tokenizer_json(proto), ensure_ascii=False))
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True,
              "add_eos_token": False, "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
              "legacy": False, **special}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]


def genai_config(config: ModelConfig, *, filename: str, max_len: int, profile: str,
                 bos_id: int, stop_ids: list[int], pad_id: int,
                 session_config: dict[str, str] | None = None) -> dict:
    """onnxruntime-genai's genai_config.json for our decoder graph (exporter.onnx_export);
    `session_config`: onnxruntime session config entries the graph needs (genai passes a
    session option it does not know, with a string value, on as a config entry)."""
    session_options = {"log_id": "onnxruntime-genai", "provider_options": [],
                       **(session_config or {})}
    return {
        "model": {
            "type": FAMILY_NAMES[config.family].model_type,
            "bos_token_id": bos_id,
            "eos_token_id": stop_ids,
            "pad_token_id": pad_id,
            "context_length": max_len,
            "vocab_size": config.vocab_size,
            "decoder": {
                "session_options": session_options,
                "filename": filename,
                "head_size": config.head_dim,
                "hidden_size": config.embed_dim,
                "num_attention_heads": config.num_heads,
                "num_hidden_layers": config.num_layers,
                "num_key_value_heads": config.num_kv_heads,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1,
            "max_length": max_len, "min_length": 0, "temperature": 1.0, "top_k": 1,
            "top_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "diversity_penalty": 0.0, "early_stopping": True,
            # The ort profile's GroupQueryAttention keeps one [1, K, max_len, H] buffer that
            # past and present share; the standard profile's Attention concatenates.
            "past_present_share_buffer": profile == "ort",
        },
    }
