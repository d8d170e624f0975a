"""Telling checkpoint formats apart, and refusing pickle-based ones."""

from __future__ import annotations

import enum
from pathlib import Path

from model_zoo.errors import GemmaforgeError
from model_zoo.untrusted import open_regular, reading

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}
# Zip archives (torch.save) and raw pickle streams (protocol 2+ starts with 0x80).
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt", "checkpoint")


class CheckpointFormat(enum.Enum):
    GGUF = "gguf"
    HF_FOLDER = "hf-safetensors"
    SAFETENSORS_FILE = "safetensors"
    ORBAX = "orbax"


def detect_format(path: str | Path) -> CheckpointFormat:
    """What `path` holds, or a GemmaforgeError saying why it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise GemmaforgeError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if (path / "config.json").exists():
            return CheckpointFormat.HF_FOLDER
        if any((path / marker).exists() for marker in _ORBAX_MARKERS):
            return CheckpointFormat.ORBAX
        raise GemmaforgeError(
            f"{path} is neither a Hugging Face folder (config.json + *.safetensors) nor an "
            "Orbax checkpoint")
    with reading(path, "a checkpoint"), open_regular(path) as file:
        magic = file.read(4)
    if magic == b"GGUF":
        return CheckpointFormat.GGUF
    if path.suffix in PICKLE_SUFFIXES or magic.startswith(_PICKLE_MAGICS):
        raise GemmaforgeError(
            f"{path} looks pickle-based; gemmaforge refuses pickle files because loading them "
            "can run arbitrary code: convert it to safetensors")
    if path.suffix == ".safetensors":
        return CheckpointFormat.SAFETENSORS_FILE
    raise GemmaforgeError(f"{path}: unknown checkpoint format (expected a .gguf file, a "
                          ".safetensors file, a Hugging Face folder or an Orbax directory)")
