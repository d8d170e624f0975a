"""The artifact directory: written atomically, described by manifest.json.

    out/
      manifest.json          config, options, entry points, files with sha256, tool versions,
                             validation summary
      weights.safetensors    float32 parameters under our dotted names (the reference's, and
                             the StableHLO entry points' `weights` argument)
      tokenizer.model        the SentencePiece model (absent for byte-tokenized test models)
      stablehlo/             one serialized jax.export artifact and its MLIR text per entry point
      report/                validation.json
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from model_zoo.checkpoints.default import sha256_of
from model_zoo.errors import GemmaforgeError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
WEIGHTS = "weights.safetensors"
TOKENIZER = "tokenizer.model"
REPORT_DIR = "report"


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """A scratch directory beside `out` that becomes `out` only when the block succeeds.

    An existing `out` is refused unless `force`; then it is replaced only at the very end.
    """
    out = Path(out)
    if out.exists() and not force:
        raise GemmaforgeError(f"{out} already exists; choose another --out or pass --force to "
                              "replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    scratch.chmod(0o777 & ~umask)  # mkdtemp makes it private; the artifact is an ordinary dir
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if out.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, retired / "old")
        os.replace(scratch, out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(scratch, out)


def file_entries(root: Path) -> list[dict]:
    """Every artifact file but the manifest and the reports, with size and sha256."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if relative.name == MANIFEST or relative.parts[0] == REPORT_DIR:
            continue
        entries.append({"path": str(relative), "size": path.stat().st_size,
                        "sha256": sha256_of(path)})
    return entries


def tool_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the named distributions (and gemmaforge's own)."""
    versions = {}
    for name in ("gemmaforge", *distributions):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(root: Path, manifest: dict) -> None:
    """Replaces manifest.json atomically."""
    partial = root / f".{MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, root / MANIFEST)


def read_manifest(root: str | os.PathLike) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise GemmaforgeError(f"{root} is not a gemmaforge artifact directory (no {MANIFEST}); "
                              "make one with `gemmaforge export`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GemmaforgeError(f"{path} is not valid JSON: {error}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GemmaforgeError(f"{path} has format_version {manifest.get('format_version')}; "
                              f"this gemmaforge reads {FORMAT_VERSION}: re-export the model")
    return manifest


def verify_files(root: Path, manifest: dict) -> None:
    """Refuses an artifact whose files are missing or changed since export."""
    for entry in manifest.get("files", []):
        path = root / entry["path"]
        if not path.exists():
            raise GemmaforgeError(f"{root}: {entry['path']} is missing; re-export the model")
        if path.stat().st_size != entry["size"]:
            raise GemmaforgeError(f"{root}: {entry['path']} has changed since export (size "
                                  f"{path.stat().st_size}, recorded {entry['size']})")
