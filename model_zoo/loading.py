"""`load`: a preset name and/or a checkpoint to a ready model — config, float32 parameters
(sharded when a mesh is given) and tokenizer."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
from jax.sharding import Mesh

from model_zoo.checkpoints.default import default_checkpoint
from model_zoo.checkpoints.formats import CheckpointFormat, detect_format
from model_zoo.checkpoints.gguf_reader import GGUFCheckpoint
from model_zoo.checkpoints.hf_config import config_from_hf
from model_zoo.checkpoints.orbax_reader import read_orbax
from model_zoo.checkpoints.safetensors_reader import (
    check_same_architecture,
    read_config,
    read_safetensors,
    safetensors_files,
)
from model_zoo.config import Family, ModelConfig
from model_zoo.errors import GemmaforgeError
from model_zoo.presets import get_preset
from model_zoo.sharding import shardings
from model_zoo.spm import GemmaTokenizer
from model_zoo.tokenizer import ByteTokenizer, Tokenizer
from model_zoo.transformer import (
    Params,
    abstract_params,
    count_params,
    init_params,
    iter_random_params,
)
from model_zoo.tree import flatten, get_path, path_name

# Random weights are refused past this share of the memory available now.
MAX_MEMORY_SHARE = 0.8


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to run.

    Attributes:
      config: the architecture.
      params: float32 parameters (sharded when loaded with a mesh); None for random weights
        loaded with materialize=False, which `weights()` draws one tensor at a time.
      tokenizer: text <-> ids.
      source: where the weights came from, in words.
      random_weights: True when no checkpoint was used.
      checkpoint: the checkpoint path, None for random weights.
      seed: the seed of random weights.
    """

    config: ModelConfig
    params: Params | None
    tokenizer: Tokenizer
    source: str
    random_weights: bool
    checkpoint: str | None = None
    seed: int = 0

    def weights(self) -> Iterator[tuple[str, np.ndarray]]:
        """Every parameter as (dotted name, float32 host array), one at a time, in the order of
        `abstract_params`: a writer can stream the model without a second copy of it."""
        if self.params is not None:
            return ((path_name(p), np.asarray(get_path(self.params, p)))
                    for p, _ in flatten(abstract_params(self.config)))
        return ((path_name(p), value) for p, value in iter_random_params(self.config, self.seed))


def describe(config: ModelConfig) -> dict:
    """A preset as plain data: architecture and parameter counts (from jax.eval_shape)."""
    embedding, non_embedding = count_params(config)
    return {
        "name": config.name,
        "family": config.family.value,
        "vocab_size": config.vocab_size,
        "embed_dim": config.embed_dim,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_kv_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_dim": config.hidden_dim,
        "attention_types": [t.value for t in config.attention_types],
        "sliding_window": config.sliding_window,
        "rope_base_global": config.rope_base_global,
        "rope_base_local": config.rope_base_local,
        "rope_scale_global": config.rope_scale_global,
        "query_pre_attn_scalar": config.query_pre_attn_scalar,
        "attn_logit_softcap": config.attn_logit_softcap,
        "final_logit_softcap": config.final_logit_softcap,
        "qk_norm": config.use_qk_norm,
        "post_norms": config.use_post_attn_norm and config.use_post_ffw_norm,
        "max_context": config.max_context,
        "embedding_params": embedding,
        "non_embedding_params": non_embedding,
        "total_params": embedding + non_embedding,
    }


def load_random(config: ModelConfig, *, seed: int = 0, mesh: Mesh | None = None,
                tokenizer: Tokenizer | None = None, materialize: bool = True) -> LoadedModel:
    """Seeded random float32 weights, refused with a clear error when they cannot fit in memory.
    With materialize=False nothing is drawn until `weights()` streams them (for exporting models
    larger than memory would hold twice). The tokenizer defaults to the byte tokenizer (its
    ids fit every vocabulary)."""
    source = f"random weights (seed {seed})"
    tokenizer = tokenizer or ByteTokenizer()
    if not materialize:
        return LoadedModel(config, None, tokenizer, source, True, seed=seed)
    needed = 4 * sum(count_params(config))
    available = psutil.virtual_memory().available
    if needed > MAX_MEMORY_SHARE * available:
        raise GemmaforgeError(
            f"{config.name} with random float32 weights needs {needed / 2**30:.1f} GiB but "
            f"{available / 2**30:.1f} GiB of memory is available; pick a smaller preset "
            "(see `gemmaforge zoo list`)")
    params = init_params(config, seed, shardings=shardings(config, mesh) if mesh else None)
    return LoadedModel(config, params, tokenizer, source, True, seed=seed)


def load(preset: str | None = None, *, checkpoint: str | os.PathLike | None = None,
         tokenizer: str | os.PathLike | None = None, seed: int = 0,
         mesh: Mesh | None = None, materialize: bool = True) -> LoadedModel:
    """The model named by `preset` and/or `checkpoint`.

    Args:
      preset: a preset name; its packaged checkpoint is used when `checkpoint` is None, and
        seeded random weights when it has none.
      checkpoint: a GGUF file, a Hugging Face folder (its config.json stands in for a missing
        preset), a .safetensors file or a gemma-library Orbax directory.
      tokenizer: a SentencePiece `tokenizer.model`, overriding the checkpoint's own.
      seed: the seed of random weights.
      mesh: shard the parameters on this (data, model) mesh.
      materialize: False leaves random weights undrawn (see `load_random`); checkpoints are
        always read.
    """
    config = get_preset(preset) if preset is not None else None
    explicit_tokenizer = GemmaTokenizer.from_file(tokenizer) if tokenizer is not None else None
    if checkpoint is None:
        if config is None:
            raise GemmaforgeError("name a preset or pass --checkpoint")
        checkpoint = default_checkpoint(config.name)
        if checkpoint is None:
            return load_random(config, seed=seed, mesh=mesh, tokenizer=explicit_tokenizer,
                               materialize=materialize)
    path = Path(checkpoint)
    kind = detect_format(path)
    own_tokenizer = None
    if kind is CheckpointFormat.HF_FOLDER:
        from_file = config_from_hf(read_config(path), name=path.name)
        if config is None:
            config = from_file
        else:
            check_same_architecture(config, from_file, path)
        params = read_safetensors(safetensors_files(path), config, str(path),
                                  _shardings(config, mesh))
        if (path / "tokenizer.model").exists():
            own_tokenizer = GemmaTokenizer.from_file(path / "tokenizer.model")
    else:
        if config is None:
            raise GemmaforgeError(f"{path} is a {kind.value} checkpoint, which does not say which "
                                  "model it is: name the preset too")
        if kind is CheckpointFormat.GGUF:
            gguf_file = GGUFCheckpoint(path)
            params = gguf_file.params(config, _shardings(config, mesh))
            own_tokenizer = gguf_file.tokenizer()
        elif kind is CheckpointFormat.ORBAX:
            params = read_orbax(path, config, _shardings(config, mesh))
        else:
            params = read_safetensors([path], config, str(path), _shardings(config, mesh))
    chosen = explicit_tokenizer or own_tokenizer or _family_tokenizer(config)
    if chosen.vocab_size > config.vocab_size:
        raise GemmaforgeError(f"the tokenizer has {chosen.vocab_size} tokens but {config.name}'s "
                              f"embedding only {config.vocab_size}: wrong tokenizer?")
    return LoadedModel(config, params, chosen, f"{path} ({kind.value}, float32)", False,
                       str(path))


def _shardings(config: ModelConfig, mesh: Mesh | None) -> Params | None:
    return shardings(config, mesh) if mesh is not None else None


def _family_tokenizer(config: ModelConfig) -> GemmaTokenizer:
    """Gemma 3 models share one vocabulary: the packaged gemma3-270m GGUF carries it."""
    if config.family is Family.GEMMA3:
        packaged = default_checkpoint("gemma3-270m")
        if packaged is not None:
            return GGUFCheckpoint(packaged).tokenizer()
    raise GemmaforgeError(f"the checkpoint carries no tokenizer for {config.name}: pass "
                          "--tokenizer PATH/tokenizer.model")
