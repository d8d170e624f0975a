"""The ONNX runtimes: `onnxruntime` (an InferenceSession on the decoder graph, the cache held in
OrtValues bound with IO binding) and `ort-genai` (onnxruntime-genai's generator on the folder,
as services run it). Both take a whole prompt in one call: the graph's token count is symbolic.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

from exporter.onnx_export import past_name, present_name
from runtimes.artifact import Artifact
from runtimes.base import check_decode, checked_prompt


def _providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeRunner:
    """The decoder on ONNX Runtime (CUDA where present, else CPU). With the ort profile the
    cache is one fixed buffer per tensor, bound as both past and present, so GroupQueryAttention
    writes it in place; with the standard profile present is a new, longer tensor that becomes
    the next step's past, never leaving the runtime."""

    name = "onnxruntime"

    def __init__(self, artifact: Artifact, *, threads: int | None = None):
        import onnxruntime as ort

        section = artifact.format("onnx")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        for key, value in section.get("quantization", {}).get("session_config", {}).items():
            options.add_session_config_entry(key, value)
        self.max_len = artifact.max_len
        self.vocab_size = artifact.config.vocab_size
        self._ort = ort
        self._config = artifact.config
        self._shared = section["share_buffer"]
        self._session = ort.InferenceSession(str(artifact.file(section["file"])), options,
                                             providers=_providers())
        self._device = "cuda" if "CUDAExecutionProvider" in self._session.get_providers() \
            else "cpu"
        self._caches: dict[str, object] = {}
        self._position: int | None = None

    def _names(self) -> list[tuple[str, str]]:
        return [(past_name(layer, kind), present_name(layer, kind))
                for layer in range(self._config.num_layers) for kind in "kv"]

    def _reset(self) -> None:
        c = self._config
        length = self.max_len if self._shared else 0
        shape = (1, c.num_kv_heads, length, c.head_dim)
        self._caches = {past: self._ort.OrtValue.ortvalue_from_numpy(
            np.zeros(shape, np.float32), self._device) for past, _ in self._names()}

    def _run(self, ids: Sequence[int], start: int) -> np.ndarray:
        count = len(ids)
        binding = self._session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, start + count), np.int64))
        binding.bind_cpu_input("position_ids",
                               np.arange(start, start + count, dtype=np.int64)[None])
        binding.bind_output("logits", "cpu")
        bound = ["logits"]
        for past, present in self._names():
            binding.bind_ortvalue_input(past, self._caches[past])
            if self._shared:
                binding.bind_ortvalue_output(present, self._caches[past])
            else:
                binding.bind_output(present, self._device)
            bound.append(present)
        self._session.run_with_iobinding(binding)
        outputs = dict(zip(bound, binding.get_outputs(), strict=True))
        if not self._shared:
            self._caches = {past: outputs[present] for past, present in self._names()}
        return np.array(outputs["logits"].numpy()[0, -1])

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        ids = checked_prompt(self, prompt_ids)
        self._reset()
        logits = self._run(ids, 0)
        self._position = len(ids)
        return logits

    def decode(self, token: int) -> np.ndarray:
        token = check_decode(self, self._position, token)
        logits = self._run([token], self._position)
        self._position += 1
        return logits


@contextlib.contextmanager
def private_tmpdir() -> Iterator[None]:
    """TMPDIR pointed at a fresh private folder for the block, removed after it.
    onnxruntime-genai writes a session file under a fixed name (`$TMPDIR/.ses`) when a model
    is made, and follows a link planted there by another user of a shared /tmp."""
    previous = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="gemmaforge-genai-") as private:
        os.environ["TMPDIR"] = private
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous


class OrtGenaiRunner:
    """onnxruntime-genai's Model and Generator on the artifact's onnx/ folder: the tokens go
    in through `append_tokens`, the logits come back from the generator."""

    name = "ort-genai"

    def __init__(self, artifact: Artifact, *, threads: int | None = None):
        import onnxruntime_genai as og

        section = artifact.format("onnx")
        self._og = og
        self.max_len = artifact.max_len
        self.vocab_size = artifact.config.vocab_size
        folder = artifact.folder(section["directory"])
        with private_tmpdir():
            config = og.Config(str(folder))
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": threads}}}}))
            self._model = og.Model(config)
        self._generator = None

    def _new_generator(self):
        params = self._og.GeneratorParams(self._model)
        params.set_search_options(max_length=self.max_len, do_sample=False)
        return self._og.Generator(self._model, params)

    def prefill(self, prompt_ids: Sequence[int]) -> np.ndarray:
        ids = checked_prompt(self, prompt_ids)
        self._generator = self._new_generator()
        self._generator.append_tokens(np.asarray(ids, np.int32))
        return np.array(self._generator.get_logits()).reshape(-1)

    def decode(self, token: int) -> np.ndarray:
        token = check_decode(self, None if self._generator is None
                             else self._generator.token_count(), token)
        self._generator.append_tokens(np.asarray([token], np.int32))
        return np.array(self._generator.get_logits()).reshape(-1)

    def greedy(self, prompt_ids: Sequence[int], max_new_tokens: int) -> list[int]:
        """onnxruntime-genai's own greedy search: the tokens its generator picks."""
        ids = checked_prompt(self, prompt_ids)
        generator = self._new_generator()
        generator.append_tokens(np.asarray(ids, np.int32))
        tokens = []
        while len(tokens) < max_new_tokens and not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        return tokens
