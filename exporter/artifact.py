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
import fcntl
import importlib.metadata
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from exporter import integrity
from exporter.integrity import MANIFEST, REPORT_DIR
from exporter.manifest import FORMAT_VERSION, Manifest
from model_zoo.checkpoints.default import sha256_of
from model_zoo.errors import GemmaforgeError

WEIGHTS = "weights.safetensors"
TOKENIZER = "tokenizer.model"


# The signals that end an export: they wait while a step that must not be cut in half runs.
INTERRUPTS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM are held back until the block is done (and raised then), for the
    steps whose half would be left behind: a rename pair, a cleanup, a lock file's life.

    Their handlers are swapped for ones that only note them: masking the signals would not do,
    as any thread that has them unmasked (JAX's, the runtimes') still takes them for the main
    thread. Elsewhere than in the main thread, which alone runs signal handlers, the block
    cannot be interrupted anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    previous = {signum: signal.signal(signum, lambda signum, frame: noted.append(signum))
                for signum in INTERRUPTS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if noted:
            signal.raise_signal(noted[0])


def _is_artifact(path: Path) -> bool:
    """Whether `path` holds a manifest.json that parses with a format_version (any version:
    an artifact of another gemmaforge may be replaced too)."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and "format_version" in manifest


def _check_replaceable(out: Path) -> None:
    """--force replaces a gemmaforge artifact directory and nothing else: not a file, not
    someone's own directory, never the working directory, one above it or the home directory."""
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise GemmaforgeError(f"--force will not replace {out}: it is the current directory, one "
                              "above it or the home directory; choose another --out")
    if not out.is_dir():
        raise GemmaforgeError(f"--force replaces only a gemmaforge artifact directory, and {out} "
                              "is not a directory; remove it yourself or choose another --out")
    if not _is_artifact(out):
        raise GemmaforgeError(f"--force replaces only a gemmaforge artifact directory, and {out} "
                              f"has no {MANIFEST} with a format_version; remove it yourself or "
                              "choose another --out")


def _check_writable(out: Path, target: Path) -> None:
    """The nearest existing folder above `out` must be a directory we may write in (the missing
    ones between are made)."""
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise GemmaforgeError(f"cannot write {out}: {parent} is not a directory; choose another "
                              "--out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GemmaforgeError(f"cannot write {out}: {parent} is not writable; choose another "
                              "--out")


def check_out(out: str | os.PathLike, *, force: bool = False) -> Path:
    """Refuses, before any work, an `out` that exists (unless `force` and it is an artifact
    directory) or that cannot be written. Returns its absolute path."""
    target = Path(os.path.abspath(out))
    if os.path.lexists(target):
        if not force:
            raise GemmaforgeError(f"{out} already exists; choose another --out or pass --force "
                                  "to replace it")
        _check_replaceable(Path(out))
    _check_writable(Path(out), target)
    return target


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those above it that do not exist yet, the deepest first."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    return missing


def _lock(path: Path, out: str | os.PathLike) -> int:
    """An exclusive flock on `path` (made if missing); refused at once when another process
    holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GemmaforgeError(f"another gemmaforge export is writing {out} (it holds {path});"
                                  " wait for it to finish or choose another --out") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        # Its last holder removed it between our open and our lock: lock the one there now.
        os.close(fd)


# (thread, lock file) of the locks this process holds: a nested `reserve` only re-checks.
_held: set[tuple[int, Path]] = set()


@contextlib.contextmanager
def reserve(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Holds `out` for this export: checks it (`check_out`), makes its missing parents and takes
    an exclusive lock on `.<name>.lock` beside it, so that a second export of the same `out`
    fails at once. The lock file goes on the way out, and so do the parents made here if
    nothing was written in them. Yields the absolute path of `out`."""
    target = check_out(out, force=force)
    key = (threading.get_ident(), target.parent / f".{target.name}.lock")
    if key in _held:
        yield target
        return
    lock, missing, fd = key[1], _missing_folders(target.parent), None
    try:
        with interrupts_deferred():
            fd = _acquire(lock, missing, out)
            _held.add(key)
        check_out(out, force=force)  # again: an export that held the lock before may have ended
        yield target
    finally:
        with interrupts_deferred():
            if fd is not None:
                _held.discard(key)
                lock.unlink(missing_ok=True)
                os.close(fd)
            _remove_empty(missing)


def _acquire(lock: Path, missing: list[Path], out: str | os.PathLike) -> int:
    """Makes the missing folders and locks `lock` in the deepest."""
    try:
        for folder in reversed(missing):
            folder.mkdir()
        return _lock(lock, out)
    except OSError as error:
        raise GemmaforgeError(f"cannot write {out}: {error.strerror}; choose another --out") \
            from None


def _remove_empty(folders: list[Path]) -> None:
    """Removes the folders made for an export that wrote nothing in them, the deepest first."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def _commit(scratch: Path, target: Path) -> None:
    """Moves the finished scratch directory to `target`; a replaced artifact (--force) is
    renamed aside first and removed after."""
    if not os.path.lexists(target):
        os.replace(scratch, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / "old")
    os.replace(scratch, target)
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """A scratch directory beside `out` that becomes `out` only when the block succeeds.

    `out` is reserved first (`reserve`): an existing one is refused unless `force` and it is an
    artifact directory, which is then replaced only at the very end. An exception, SIGINT or
    SIGTERM included, removes the scratch directory; the signals wait while it is made,
    committed or removed, so an interrupted export leaves either nothing or `out` complete.
    """
    with reserve(out, force=force) as target:
        scratch = None
        try:
            with interrupts_deferred():
                scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-",
                                                dir=target.parent))
                umask = os.umask(0)
                os.umask(umask)
                scratch.chmod(0o777 & ~umask)  # mkdtemp makes it private; an artifact is not
            yield scratch
            with interrupts_deferred():
                _commit(scratch, target)
        except BaseException:
            with interrupts_deferred():
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)
            raise


def file_entries(root: Path) -> tuple[integrity.FileEntry, ...]:
    """Every artifact file but the manifest and the reports, with size and sha256."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root)
        if relative.name == MANIFEST or relative.parts[0] == REPORT_DIR:
            continue
        entries.append(integrity.FileEntry(str(relative), path.stat().st_size, sha256_of(path)))
    return tuple(entries)


def tool_versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the named distributions (and gemmaforge's own)."""
    versions = {}
    for name in ("gemmaforge", *distributions):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Replaces manifest.json atomically (`integrity.write_atomically`: no link planted in the
    directory redirects the write); an interrupt waits until it is done, so no partial file is
    left."""
    with interrupts_deferred():
        integrity.write_atomically(root / MANIFEST,
                                   (json.dumps(manifest.to_json(), indent=2) + "\n").encode())


def read_manifest(root: str | os.PathLike) -> Manifest:
    """manifest.json, parsed and checked (`Manifest.from_json`): every field is refused with
    one line when it is missing, mistyped or out of bounds."""
    path = Path(root) / MANIFEST
    if not path.exists():
        raise GemmaforgeError(f"{root} is not a gemmaforge artifact directory (no {MANIFEST}); "
                              "make one with `gemmaforge export`")
    integrity.confined(Path(root), MANIFEST, f"{root}:")
    size = integrity.regular_file(path).st_size
    if size > integrity.MAX_MANIFEST_BYTES:
        raise GemmaforgeError(f"{path} is {size} bytes, more than any manifest "
                              f"({integrity.MAX_MANIFEST_BYTES}); the file is not a manifest")
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise GemmaforgeError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise GemmaforgeError(f"{path} has format_version {version!r}; this gemmaforge reads "
                              f"{FORMAT_VERSION}: re-export the model")
    return Manifest.from_json(manifest, str(path))


def verify_files(root: Path, manifest: Manifest, *, content: bool = True
                 ) -> dict[str, integrity.FileEntry]:
    """Refuses an artifact whose files are missing or changed since export: each one's path
    confined to `root`, its size and (with `content`) its sha256 checked; returns the entries
    by path."""
    entries = manifest.files_by_path
    for entry in entries.values():
        integrity.verify_file(Path(root), entry, content=content)
    return entries
