"""Checkpoint readers: real files (GGUF, HF safetensors, the gemma library's Orbax trees) into our
parameter tree, one tensor at a time."""

from model_zoo.checkpoints.hf_names import TensorMap, hf_tensor_map, to_hf_state

__all__ = ["TensorMap", "hf_tensor_map", "to_hf_state"]
