"""An artifact directory read as a stranger's: its manifest checked field by field, every path it
names confined to the directory, every file's size and sha256 checked before a runtime reads it.

A manifest can be written by anyone, so nothing in it is used before it is checked: paths are
relative, without `..`, and resolve (symlinks followed) inside the artifact; digests are 64
lowercase hex digits (they key caches, so they end up in paths); counts are bounded. Hashing is
streamed and remembered per process by (device, inode, size, mtime, ctime), so a file is hashed
once however many runners read it, and again as soon as it changes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path, PurePosixPath

from model_zoo.checkpoints.default import sha256_of
from model_zoo.config import MAX_CONTEXT
from model_zoo.errors import GemmaforgeError
from model_zoo.untrusted import regular_size

MANIFEST = "manifest.json"
REPORT_DIR = "report"
# A manifest is a few hundred kilobytes at most (a quantized model lists every tensor's grid).
MAX_MANIFEST_BYTES = 64 << 20
MAX_FILES = 100_000
MAX_BUCKETS = 64
SHA256 = re.compile(r"[0-9a-f]{64}")

_verified: dict[tuple[int, int, int, int, int], str] = {}


def _stat_key(info: os.stat_result) -> tuple[int, int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def regular_file(path: Path) -> os.stat_result:
    """stat() of `path`, refused unless it is a regular file (a FIFO or a device would be read
    without end)."""
    regular_size(path)
    return path.stat()


def sha256_file(path: Path) -> str:
    """The sha256 of a regular file, streamed; remembered while the file is unchanged."""
    key = _stat_key(regular_file(path))
    if key not in _verified:
        _verified[key] = sha256_of(path)
    return _verified[key]


def relative_path(text: object, where: str) -> PurePosixPath:
    """A manifest's path field as a relative path without `..`, or a one-line refusal."""
    if not isinstance(text, str) or not text:
        raise GemmaforgeError(f"{where} must be a relative path, got {text!r}; re-export the "
                              "model")
    path = PurePosixPath(text)
    if not text.isprintable():
        raise GemmaforgeError(f"{where} is {text!r}: a path in an artifact holds no control "
                              "characters; the manifest is damaged or crafted")
    if path.is_absolute() or ".." in path.parts or "\\" in text:
        raise GemmaforgeError(f"{where} is {text!r}: paths in an artifact must stay inside it "
                              "(relative, no '..'); the manifest is damaged or crafted")
    return path


def confined(root: Path, text: object, where: str) -> Path:
    """`root / text`, refused unless it resolves (symlinks followed) inside `root`."""
    path = Path(root) / relative_path(text, where)
    resolved_root = Path(root).resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise GemmaforgeError(f"{where} {text!r} leads outside {root} (through a symbolic "
                              "link); an artifact's files must lie inside it")
    return path


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of the manifest's `files` list."""

    path: str
    size: int
    sha256: str


def file_entries_of(manifest: dict, source: str) -> dict[str, FileEntry]:
    """The manifest's `files` list, each entry checked, by path."""
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) > MAX_FILES:
        raise GemmaforgeError(f"{source}: 'files' must be a list of at most {MAX_FILES} "
                              "entries; re-export the model")
    entries: dict[str, FileEntry] = {}
    for index, entry in enumerate(files):
        where = f"{source}: files[{index}]"
        if not isinstance(entry, dict):
            raise GemmaforgeError(f"{where} must be an object with path, size and sha256")
        path = str(relative_path(entry.get("path"), f"{where}.path"))
        size, digest = entry.get("size"), entry.get("sha256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise GemmaforgeError(f"{where}.size must be a byte count >= 0, got {size!r}")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            raise GemmaforgeError(f"{where}.sha256 must be 64 lowercase hex digits, got "
                                  f"{digest!r}")
        if path in entries:
            raise GemmaforgeError(f"{where}: {path} is listed twice")
        entries[path] = FileEntry(path, size, digest)
    return entries


def _positive_int(value: object, where: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise GemmaforgeError(f"{where} must be an integer in [1, {limit}], got {value!r}; "
                              "re-export the model")
    return value


def check_manifest(manifest: object, source: str) -> dict:
    """The fields every reader relies on, checked before any is used: the manifest's shape,
    the cache length and prefill buckets, the file list and the per-format sections."""
    if not isinstance(manifest, dict):
        raise GemmaforgeError(f"{source} must hold a JSON object; re-export the model")
    for key, kind in (("config", dict), ("formats", dict), ("tokenizer", dict),
                      ("weights_source", str)):
        if not isinstance(manifest.get(key), kind):
            raise GemmaforgeError(f"{source}: '{key}' is missing or not a {kind.__name__}; "
                                  "re-export the model")
    max_len = _positive_int(manifest.get("max_len"), f"{source}: max_len", MAX_CONTEXT)
    buckets = manifest.get("buckets")
    if not isinstance(buckets, list) or not 1 <= len(buckets) <= MAX_BUCKETS:
        raise GemmaforgeError(f"{source}: buckets must be a list of 1 to {MAX_BUCKETS} prefill "
                              f"lengths, got {buckets!r}")
    for bucket in buckets:
        _positive_int(bucket, f"{source}: each bucket", max_len)
    if len(set(buckets)) != len(buckets):
        raise GemmaforgeError(f"{source}: buckets {buckets} repeat a length")
    file_entries_of(manifest, source)
    for name, section in manifest["formats"].items():
        if not isinstance(section, dict):
            raise GemmaforgeError(f"{source}: formats.{name} must be an object")
    return manifest


def verify_file(root: Path, entry: FileEntry, *, content: bool = True) -> Path:
    """The path of a manifest file, confined to `root` and checked: a regular file of the
    recorded size and (with `content`) sha256."""
    path = confined(root, entry.path, f"{root}: file")
    if not path.exists():
        raise GemmaforgeError(f"{root}: {entry.path} is missing; re-export the model")
    size = regular_file(path).st_size
    if size != entry.size:
        raise GemmaforgeError(f"{root}: {entry.path} has changed since export (size {size}, "
                              f"recorded {entry.size}); re-export the model")
    if content and sha256_file(path) != entry.sha256:
        raise GemmaforgeError(f"{root}: {entry.path} has changed since export (its sha256 "
                              "differs from the manifest's); re-export the model")
    return path


def unlisted_files(root: Path, entries: dict[str, FileEntry], under: str = "") -> list[str]:
    """Files below `root / under` that the manifest does not list (the manifest itself, the
    validation report and the writers' scratch files aside)."""
    base = Path(root) / under if under else Path(root)
    extra = []
    for path in sorted(base.rglob("*")):
        relative = path.relative_to(root)
        if relative.name == MANIFEST and len(relative.parts) == 1 or \
                relative.parts[0] == REPORT_DIR or path.is_dir() and not path.is_symlink():
            continue
        if relative.as_posix() not in entries:
            extra.append(relative.as_posix())
    return extra


def write_atomically(path: Path, data: bytes) -> None:
    """Replaces `path` with `data` through a fresh temporary file beside it (made with O_EXCL
    under a random name, so a link planted under a fixed scratch name cannot redirect the
    write), renamed over `path` only once written."""
    descriptor, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial",
                                           dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
