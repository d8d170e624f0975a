"""What every reader does before it trusts a byte: checkpoints come from strangers (model hubs).

Readers open files only when they are regular files (a FIFO or `/dev/zero` would block or never
end), read whole only small files of bounded size, keep the files a folder names inside it,
refuse non-finite weights, and turn whatever a damaged file makes a parser raise into one
GemmaforgeError line that names the file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
from google.protobuf.message import DecodeError

from model_zoo.errors import GemmaforgeError

# More files than any checkpoint folder holds (an Orbax tree has a few per tensor): walking
# further is walking a crafted tree.
MAX_FOLDER_ENTRIES = 100_000
# Values tested at a time when a tensor's sum is not finite (a 1 MiB temporary).
FINITE_CHECK_ELEMENTS = 1 << 20
# Longest value or name quoted back from a file in an error message.
MAX_SHOWN = 80
# What a parser may raise on bytes it does not expect. MemoryError is left out on purpose:
# every allocation is bounded by the file's size before it is made, so running out of memory
# is a bug to see, not a damaged file.
LOW_LEVEL_ERRORS = (struct.error, ValueError, KeyError, IndexError, TypeError, AttributeError,
                    OverflowError, UnicodeError, RecursionError, NotImplementedError, DecodeError,
                    OSError)


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) as one space."""
    return " ".join(text.split())


def shown(value: object) -> str:
    """A value or name from a file, safe to quote in a one-line message: repr'd when it is not
    plain printable text, cut when long."""
    text = value if isinstance(value, str) and value.isprintable() else one_line(repr(value))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


@contextlib.contextmanager
def reading(source: object, what: str) -> Iterator[None]:
    """Turns a low-level exception raised while reading `source` into a GemmaforgeError;
    `what` says what the file should have been ("a GGUF", "a safetensors file")."""
    try:
        yield
    except GemmaforgeError:
        raise
    except OSError as error:
        raise GemmaforgeError(f"cannot read {source}: {error.strerror or one_line(str(error))}") \
            from None
    except LOW_LEVEL_ERRORS as error:
        detail = shown(one_line(f"{type(error).__name__}: {error}"))
        raise GemmaforgeError(f"{source}: {detail}; the file is damaged or not {what}") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def regular_size(path: str | os.PathLike) -> int:
    """The size of `path`, refused unless it is a regular file (checked before any open: opening
    a FIFO blocks, and a device may never end)."""
    try:
        mode = os.stat(path)
    except OSError as error:
        raise GemmaforgeError(f"cannot open {path}: {error.strerror}") from None
    if not stat.S_ISREG(mode.st_mode):
        raise GemmaforgeError(f"{path} is {_kind(mode.st_mode)}, not a regular file; "
                              "gemmaforge reads checkpoints and tokenizers from regular files")
    return mode.st_size


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for reading, refused unless it is a regular file. The check is made again on
    the open file (non-blocking, so a FIFO swapped in after the first check cannot hang us)."""
    regular_size(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise GemmaforgeError(f"cannot open {path}: {error.strerror}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise GemmaforgeError(f"{path} is {_kind(mode)}, not a regular file")
    return os.fdopen(fd, "rb")


def read_small(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The whole of `path`, a regular file of at most `limit` bytes (`what` names it)."""
    with open_regular(path) as file:
        data = file.read(limit + 1)  # never more than the limit, even if the file grew
    if len(data) > limit:
        raise GemmaforgeError(f"{path} is over {limit >> 20} MiB, too large for {what}")
    return data


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {shown(key)} appears twice")
        result[key] = value
    return result


def parse_json(data: bytes, source: object) -> object:
    """JSON from a file, refusing repeated keys (a second entry for a name would silently win)."""
    try:
        return json.loads(data, object_pairs_hook=_unique_pairs)
    except (ValueError, UnicodeError, RecursionError) as error:
        raise GemmaforgeError(f"{source} is not valid JSON: {shown(one_line(str(error)))}") \
            from None


def inside(folder: Path, name: object, source: object) -> Path:
    """The file `name` of `folder`, as an index lists it: a relative path without `..` whose
    resolved target (symlinks followed) stays inside the folder. Hugging Face's download cache
    links `snapshots/<revision>/<file>` to `../../blobs/<hash>`; that one way out is allowed."""
    if not isinstance(name, str) or not name:
        raise GemmaforgeError(f"{source} names the file {shown(name)}; expected a file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise GemmaforgeError(f"{source} names the file {shown(name)}, outside "
                              f"{folder}; expected a file inside the checkpoint folder")
    root = folder.resolve()
    target = (folder / relative).resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if not (target.is_relative_to(root) or (blobs is not None and target.parent == blobs)):
        raise GemmaforgeError(f"{source}: {shown(name)} leads to {target}, outside {folder}; "
                              "expected a file inside the checkpoint folder")
    return folder / relative


def check_tree(folder: Path) -> None:
    """Refuses a checkpoint folder holding anything but regular files and folders inside it
    (checked before a library walks it: it would open a FIFO and block)."""
    count = 0
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            count += 1
            if count > MAX_FOLDER_ENTRIES:
                raise GemmaforgeError(f"{folder} holds over {MAX_FOLDER_ENTRIES} files; it is "
                                      "not a checkpoint")
            entry = Path(parent) / name
            if entry.is_symlink():
                inside(folder, str(entry.relative_to(folder)), folder)
            if not entry.is_dir():
                regular_size(entry)


def check_finite(source: object, name: str, values: np.ndarray) -> None:
    """Refuses a tensor holding NaN or infinity. NaN and inf propagate into a sum, so a finite
    sum (one fast pass, no temporary) clears a tensor; only one whose sum is not finite (which
    large finite values may also give) is tested value by value, a block of rows at a time."""
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is what we test for
        if np.isfinite(np.sum(values)):
            return
    rows = max(1, FINITE_CHECK_ELEMENTS // max(1, values[0].size))
    if not all(np.isfinite(values[i : i + rows]).all() for i in range(0, len(values), rows)):
        raise GemmaforgeError(f"{source}: tensor {name} holds NaN or infinite values; the "
                              "checkpoint is damaged")


def check_tiling(source: object, ranges: list[tuple[str, int, int]], start: int, end: int,
                 alignment: int = 1) -> None:
    """Refuses tensors that do not tile the data section [start, end) as their writers lay them
    out: each (name, first byte, byte past the last) must begin where the one before it ended
    (rounded up to `alignment`), and the last end the file (or its padding). An overlap lets
    two tensors alias; a gap or stray bytes mean that a tensor's declared dtype or shape does
    not match its data (F16 declared over F32 bytes)."""
    ordered = sorted(ranges, key=lambda r: (r[1], r[2]))
    for name, _, stop in ordered:
        if stop > end:
            raise GemmaforgeError(f"{source} is truncated: tensor {name} ends at byte {stop}, "
                                  f"the file at {end}")
    for (before, _, before_end), (name, first, _) in itertools.pairwise(ordered):
        if first < before_end:
            raise GemmaforgeError(f"{source}: tensor {name} overlaps tensor {before} (bytes "
                                  f"{first} to {before_end}); tensors may not share data")
    expected, previous = start, "the header"
    for name, first, stop in ordered:
        if first != expected:
            raise GemmaforgeError(
                f"{source}: tensor {name} starts {first - expected} bytes after the end of "
                f"{previous}; a tensor's dtype or shape does not match its data (each tensor "
                "must start where the one before it ends)")
        expected, previous = -(-stop // alignment) * alignment, name
    if ordered and end > expected:
        raise GemmaforgeError(f"{source}: {end - expected} bytes follow the last tensor, "
                              f"{previous}; its dtype or shape does not match its data")
