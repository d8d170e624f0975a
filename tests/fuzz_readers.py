"""Fuzzes the checkpoint readers for N minutes: `python tests/fuzz_readers.py --minutes 2`.

The mutations of tests/test_untrusted_checkpoints.py (GGUF, safetensors, HF config.json),
SentencePiece tokenizer.model mutations and artifact manifest.json mutations (any value
replaced or deleted, the text cut; the artifact then opened, verified and its weights read),
drawn from a seeded random generator (the same seed gives the same inputs), optionally with
bytes flipped anywhere in the file (weights included). Each input is loaded in a worker
process under a memory limit (RLIMIT_AS) and a per-input timeout; a worker that dies, hangs
or raises anything but a one-line GemmaforgeError is counted, and replaced. Prints one JSON
summary line; exits 1 if any input crashed, hung, ended in a traceback or a multi-line error,
or grew the worker's memory past a bound proportional to the file's size. Failing inputs are
kept with --keep DIR.

Not collected by pytest (its name does not start with test_).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.` imports when run as a script

TARGETS = ("gguf", "safetensors", "hf-config", "tokenizer", "manifest")
# A worker's memory growth while loading one input may be at most this plus a multiple of the
# input's size (float32 weights are up to 8x their Q4 bytes; parsing costs a few x more).
MEMORY_SLACK = 128 << 20
MEMORY_PER_FILE_BYTE = 16
# The worker's address space may grow this far past its size once warm: beyond, allocations
# fail (MemoryError) instead of taking the machine down.
ADDRESS_SPACE_HEADROOM = 4 << 30
WORKER_START_SECONDS = 180
FAILURES_SHOWN = 20

INTERESTING_INTS = [0, 1, 2, 3, 7, 31, 32, 33, 64, 255, 256, 4096, 1 << 20, 1 << 31,
                    (1 << 32) - 1, 1 << 32, 1 << 62, (1 << 64) - 1, -1, -(1 << 40)]


class RandomDraw:
    """The choices a mutation makes (see test_untrusted_checkpoints.HypothesisDraw), from a
    seeded random generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def choice(self, options):
        return self.rng.choice(list(options))

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def json(self, depth: int = 0):
        kind = self.rng.randrange(8 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return self.rng.random() < 0.5
        if kind == 2:
            return self.rng.choice(INTERESTING_INTS)
        if kind == 3:
            return self.rng.choice([0.5, -1.0, 1e300, float("inf"), float("nan"), 1e7])
        if kind in (4, 5):
            return "".join(self.rng.choice("ab\n\0é_F32") for _ in range(self.rng.randrange(6)))
        if kind == 6:
            return [self.json(depth + 1) for _ in range(self.rng.randrange(4))]
        keys = ["dtype", "shape", "data_offsets", "type", "factor", ""]
        return {self.rng.choice(keys): self.json(depth + 1) for _ in range(self.rng.randrange(3))}


# --- valid files --------------------------------------------------------------------------------

def write_valid(folder: Path) -> dict[str, Path]:
    """A valid file (or folder) of each target, for the tiny preset."""
    import model_zoo as mz
    from tests.test_untrusted_checkpoints import CONFIG
    from tests.writers import tiny_tokenizer_model, write_gguf, write_hf_folder

    params = mz.init_params(CONFIG, seed=0)
    write_gguf(folder / "model.gguf", CONFIG, params)
    write_hf_folder(folder / "hf", CONFIG, params, files=1)
    shard = next((folder / "hf").glob("*.safetensors"))
    shutil.copy(shard, folder / "model.safetensors")
    (folder / "tokenizer.model").write_bytes(tiny_tokenizer_model(CONFIG.vocab_size))
    from exporter import export

    model = mz.LoadedModel(CONFIG, params, mz.ByteTokenizer(), "random weights (seed 0)", True)
    export(model, folder / "artifact", formats=("stablehlo",), buckets=(8,), max_len=32,
           symbolic_prefill=False)
    return {"gguf": folder / "model.gguf", "safetensors": folder / "model.safetensors",
            "hf-config": folder / "hf" / "config.json", "tokenizer": folder / "tokenizer.model",
            "manifest": folder / "artifact" / "manifest.json"}


# --- mutations ----------------------------------------------------------------------------------

def mutate_tokenizer(draw: RandomDraw, valid: bytes) -> bytes:
    """A tokenizer.model with one field of its ModelProto broken, or raw bytes changed."""
    from sentencepiece import sentencepiece_model_pb2 as spm_pb2

    field = draw.choice(["bytes", "truncate", "piece", "type", "trainer", "charsmap"])
    if field == "bytes":
        raw = bytearray(valid)
        for _ in range(draw.integer(1, 8)):
            raw[draw.integer(0, len(raw) - 1)] = draw.integer(0, 255)
        return bytes(raw)
    if field == "truncate":
        return valid[: draw.integer(0, len(valid) - 1)]
    proto = spm_pb2.ModelProto()
    proto.ParseFromString(valid)
    piece = proto.pieces[draw.integer(0, len(proto.pieces) - 1)]
    if field == "piece":
        piece.piece = draw.choice(["", proto.pieces[0].piece, "<0x100>", "\u2581" * 64])
    elif field == "type":
        piece.type = draw.choice([1, 2, 3, 4, 5, 6])
    elif field == "trainer":
        name = draw.choice(["unk_id", "bos_id", "eos_id", "pad_id", "vocab_size", "model_type"])
        value = draw.choice([-1, 0, 1, 3, 4, 511, 512, 1 << 30])
        setattr(proto.trainer_spec, name, value if name != "model_type" else value % 4 + 1)
    else:
        proto.normalizer_spec.precompiled_charsmap = bytes(
            draw.integer(0, 255) for _ in range(draw.integer(0, 64)))
    return proto.SerializeToString()


def _key_paths(value, prefix=()):
    """Every key path into a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _key_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _key_paths(item, (*prefix, index))


def mutate_manifest(draw: RandomDraw, valid: bytes) -> bytes:
    """A manifest.json with one value replaced by any JSON or deleted, or its text cut."""
    action = draw.choice(["replace", "replace", "delete", "truncate"])
    if action == "truncate":
        return valid[: draw.integer(0, len(valid) - 1)]
    manifest = json.loads(valid)
    path = draw.choice(list(_key_paths(manifest))[1:])
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if action == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw.json()
    return json.dumps(manifest).encode()


def flip_bytes(draw: RandomDraw, data: bytes) -> bytes:
    """`data` with up to four bytes anywhere (weights included) replaced."""
    raw = bytearray(data)
    for _ in range(draw.integer(1, 4) if raw else 0):
        raw[draw.integer(0, len(raw) - 1)] = draw.integer(0, 255)
    return bytes(raw)


def crafted(target: str, draw: RandomDraw, valid: bytes, scratch: Path) -> bytes:
    from tests import test_untrusted_checkpoints as cases

    if target == "gguf":
        data = cases.mutate_gguf(draw, valid, scratch)
    elif target == "safetensors":
        data = cases.mutate_safetensors(draw, valid)
    elif target == "hf-config":
        data = json.dumps(cases.mutate_hf_config(draw)).encode()
    elif target == "manifest":
        data = mutate_manifest(draw, valid)
    else:
        data = mutate_tokenizer(draw, valid)
    return flip_bytes(draw, data) if target != "hf-config" and draw.integer(0, 3) == 0 else data


# --- the worker ---------------------------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _address_space() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _load(target: str, path: Path) -> None:
    from model_zoo.loading import load
    from model_zoo.spm import GemmaTokenizer
    from tests.test_untrusted_checkpoints import PRESET, load_safetensors

    if target == "gguf":
        load(PRESET, checkpoint=path)
    elif target == "safetensors":
        load_safetensors(path.read_bytes(), path.parent)
    elif target == "hf-config":
        load(checkpoint=path.parent)
    elif target == "manifest":
        from runtimes.artifact import open_artifact, verify_artifact

        artifact = open_artifact(path.parent)
        artifact.tokenizer()
        artifact.weights()
        verify_artifact(path.parent)
    else:
        GemmaTokenizer.from_file(path).encode("hello world <start_of_turn>")


def worker(connection, valid: dict[str, str]) -> None:
    """Loads each path it is sent; answers (outcome, detail, memory growth in bytes)."""
    from model_zoo.errors import GemmaforgeError

    for target, path in valid.items():  # warm up: JAX's client, imports
        _load(target, Path(path))
    limit = _address_space() + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    connection.send("ready")
    while (job := connection.recv()) is not None:
        target, path = job
        before, peak_before = _rss(), _peak()
        try:
            _load(target, Path(path))
            outcome, detail = "loaded", ""
        except GemmaforgeError as error:
            message = str(error)
            outcome, detail = ("clean_error", message) if "\n" not in message else (
                "multiline_error", message)
        except MemoryError:
            outcome, detail = "memory_overrun", "MemoryError under RLIMIT_AS"
        except BaseException:  # noqa: BLE001 - every other exception is what we count
            outcome, detail = "traceback", traceback.format_exc()[-3000:]
        peak_after = _peak()
        growth = peak_after - before if peak_after > peak_before else 0
        connection.send((outcome, detail, growth))


class Worker:
    """A worker process and its pipe, replaced when it dies or hangs."""

    def __init__(self, valid: dict[str, Path]):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=worker,
                                       args=(child, {k: str(v) for k, v in valid.items()}),
                                       daemon=True)
        self.process.start()
        if not self.connection.poll(WORKER_START_SECONDS) or self.connection.recv() != "ready":
            raise RuntimeError("the fuzz worker did not start")

    def run(self, target: str, path: Path, timeout: float) -> tuple[str, str, int] | None:
        """(outcome, detail, growth), or None when the worker hung or died."""
        self.connection.send((target, str(path)))
        try:
            if self.connection.poll(timeout):
                return self.connection.recv()
        except EOFError:
            pass
        return None

    def stop(self) -> None:
        self.process.kill()
        self.process.join()


# --- the loop -----------------------------------------------------------------------------------

def fuzz(minutes: float, seed: int, timeout: float, targets: list[str],
         keep: Path | None) -> dict:
    rng = random.Random(seed)
    draw = RandomDraw(rng)
    counts = dict.fromkeys(["tried", "loaded", "clean_errors", "crashes", "hangs", "tracebacks",
                            "multiline_errors", "memory_overruns"], 0)
    per_target = {t: {"tried": 0, "loaded": 0, "clean_errors": 0} for t in targets}
    failures = []
    with tempfile.TemporaryDirectory(prefix="fuzz-readers-") as scratch:
        scratch = Path(scratch)
        (scratch / "valid").mkdir()
        valid = write_valid(scratch / "valid")
        originals = {t: valid[t].read_bytes() for t in targets}
        inputs = scratch / "inputs"
        shutil.copytree(scratch / "valid" / "hf", inputs / "hf")  # hf-config rewrites config.json
        shutil.copytree(scratch / "valid" / "artifact", inputs / "artifact")
        paths = {"gguf": inputs / "model.gguf", "safetensors": inputs / "model.safetensors",
                 "hf-config": inputs / "hf" / "config.json",
                 "tokenizer": inputs / "tokenizer.model",
                 "manifest": inputs / "artifact" / "manifest.json"}
        current = Worker(valid)
        deadline = time.monotonic() + 60 * minutes
        index = 0
        while time.monotonic() < deadline:
            target = targets[index % len(targets)]
            index += 1
            data = crafted(target, draw, originals[target], scratch)
            paths[target].write_bytes(data)
            result = current.run(target, paths[target], timeout)
            counts["tried"] += 1
            per_target[target]["tried"] += 1
            if result is None:
                died = not current.process.is_alive()
                outcome = "crashes" if died else "hangs"
                detail = (f"exit code {current.process.exitcode}" if died else
                          f"no answer in {timeout} s")
                current.stop()
                current = Worker(valid)
            else:
                outcome, detail, growth = result
                outcome = {"loaded": "loaded", "clean_error": "clean_errors",
                           "traceback": "tracebacks", "multiline_error": "multiline_errors",
                           "memory_overrun": "memory_overruns"}[outcome]
                bound = MEMORY_SLACK + MEMORY_PER_FILE_BYTE * len(data)
                if growth > bound and outcome != "memory_overruns":
                    outcome, detail = "memory_overruns", f"grew {growth >> 20} MiB, bound " \
                                                         f"{bound >> 20} MiB ({detail[:200]})"
            counts[outcome] += 1
            if outcome in ("loaded", "clean_errors"):
                per_target[target][outcome] += 1
                continue
            saved = None
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                saved = keep / f"{index:06d}-{target}-{outcome}{paths[target].suffix}"
                saved.write_bytes(data)
            if len(failures) < FAILURES_SHOWN:
                failures.append({"input": index, "target": target, "outcome": outcome,
                                 "detail": detail[-1500:], "saved": str(saved) if saved else None})
        current.stop()
    return {"seed": seed, "minutes": minutes, **counts, "per_target": per_target,
            "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per input")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--keep", type=Path, help="save failing inputs here")
    args = parser.parse_args()
    targets = args.targets.split(",")
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}; known: {TARGETS}")
    summary = fuzz(args.minutes, args.seed, args.timeout, targets, args.keep)
    print(json.dumps(summary))
    bad = ("crashes", "hangs", "tracebacks", "multiline_errors", "memory_overruns")
    return 1 if any(summary[key] for key in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
