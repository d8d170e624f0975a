"""The LiteRT runtimes: `litert` (ai-edge-litert's Interpreter on the .tflite signatures, XNNPACK
on) and `litert-lm` (the LiteRT-LM engine on the .litertlm bundle, as Android and iOS apps run
it). The engine takes text and returns text, so `litert-lm` is a text runner: validation
compares its greedy continuation with the reference's."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from exporter.integrity import sha256_file
from exporter.trace import DECODE, empty_cache
from model_zoo.checkpoints.default import cache_dir
from runtimes.artifact import Artifact
from runtimes.base import TextRun
from runtimes.entry_runner import EntryPointRunner
from runtimes.sampling import GREEDY, SamplerConfig


class LiteRTRunner(EntryPointRunner):
    name = "litert"

    def __init__(self, artifact: Artifact, *, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        super().__init__(artifact)
        section = artifact.format("litert")
        self._interpreter = Interpreter(model_path=str(artifact.file(section["file"])),
                                        num_threads=threads)
        self._signatures = {name: self._interpreter.get_signature_runner(name)
                            for name in section["signatures"]}
        self._cache: dict[str, np.ndarray] = {}

    def _reset(self) -> None:
        self._cache = empty_cache(self._config, self.max_len)

    def _call(self, entry: str, tokens: np.ndarray, input_pos: np.ndarray) -> np.ndarray | None:
        outputs = self._signatures[entry](tokens=tokens, input_pos=input_pos, **self._cache)
        self._cache = {name: outputs[name] for name in self._cache}
        return np.array(outputs["logits"][0, 0]) if entry == DECODE else None


# Engine caches kept (the most recently used): each is as large as its model's weights.
ENGINE_CACHES_KEPT = 6
# An engine cache folder's name: the first 16 hex digits of its bundle's sha256. Pruning
# touches nothing else, so no folder that gemmaforge did not make is ever removed.
ENGINE_CACHE_NAME = re.compile(r"[0-9a-f]{16}")


def engine_cache_dir(bundle: Path) -> Path:
    """Where the engine keeps its packed-weight (XNNPACK) cache. By default it writes a file as
    large as the model beside the bundle, inside the artifact; ours lives in the gemmaforge
    cache, one folder per bundle content: the sha256 of the file the engine loads (verified
    against the manifest just before), never a string the manifest supplies."""
    root = cache_dir() / "litert-lm"
    path = root / sha256_file(bundle)[:16]
    path.mkdir(parents=True, exist_ok=True)
    os.utime(path)
    prune_engine_caches(root, ENGINE_CACHES_KEPT)
    return path


def prune_engine_caches(root: Path, keep: int) -> None:
    """Removes all but the `keep` most recently used engine caches under `root` (one folder per
    bundle; without this, every new export leaves a model-sized cache behind). Only real
    folders named as `engine_cache_dir` names them are candidates: never a symbolic link,
    never anything else that happens to be there."""
    folders = sorted((p for p in root.iterdir()
                      if ENGINE_CACHE_NAME.fullmatch(p.name) and not p.is_symlink()
                      and p.is_dir()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in folders[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


class LiteRTLMRunner:
    """Generation by the LiteRT-LM engine itself: text in, text out."""

    name = "litert-lm"
    text_only = True

    def __init__(self, artifact: Artifact, *, threads: int | None = None,
                 bundle: str = "bundle"):
        """`bundle`: "bundle" runs the .litertlm, "task" the MediaPipe .task (same engine)."""
        import litert_lm

        litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
        self._litert_lm = litert_lm
        if bundle == "task":
            self.name = "litert-lm-task"
        self.max_len = artifact.max_len
        path = artifact.file(artifact.format("litert")[bundle]["file"])
        # The artifacts are float32; the engine's CPU default is float16 activations.
        self._engine = litert_lm.Engine(
            str(path), backend=litert_lm.Backend.CPU(thread_count=threads),
            max_num_tokens=self.max_len, cache_dir=str(engine_cache_dir(path)),
            activation_data_type=litert_lm.ActivationDataType.FLOAT32)

    def generate_text(self, prompt: str, max_new_tokens: int, sampler: SamplerConfig = GREEDY,
                      on_text: Callable[[str], None] | None = None) -> TextRun:
        """The engine's continuation of `prompt` (it adds BOS and stops at the stop tokens),
        with the seconds its prefill and decode took; `on_text` sees each piece the engine
        streams, and an exception it raises cancels the rest."""
        if sampler.greedy:
            config = self._litert_lm.SamplerConfig(top_k=1, top_p=1.0, temperature=1.0,
                                                   seed=sampler.seed)
        else:
            config = self._litert_lm.SamplerConfig(
                top_k=sampler.top_k or None, top_p=sampler.top_p,
                temperature=sampler.temperature, seed=sampler.seed)
        session = self._engine.create_session(apply_prompt_template=False,
                                              sampler_config=config,
                                              max_output_tokens=max_new_tokens)
        try:
            start = time.perf_counter()
            session.run_prefill([prompt])
            prefilled = time.perf_counter()
            pieces: list[str] = []
            first_token_seconds = 0.0
            for response in session.run_decode_async():
                piece = response.texts[0]
                if not pieces:
                    first_token_seconds = time.perf_counter() - start
                pieces.append(piece)
                if on_text is not None and piece:
                    on_text(piece)
            return TextRun("".join(pieces), prefilled - start, time.perf_counter() - prefilled,
                           first_token_seconds)
        finally:
            session.close()
