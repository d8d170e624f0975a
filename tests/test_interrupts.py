"""Interrupts and concurrency of `gemmaforge export`: SIGINT or SIGTERM at any moment leaves
either nothing or a complete artifact whose manifest says it was not validated, and exits 130
or 143; a second export of the same --out fails at once; --force replaces artifacts only; --out
is checked before the model loads."""

import gc
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cli.app import _interruptible, main
from exporter.artifact import interrupts_deferred, reserve

GEMMAFORGE = os.path.join(os.path.dirname(sys.executable), "gemmaforge")
EXPORT = ("export", "tiny-gemma2", "--no-symbolic", "--buckets", "8", "--max-len", "32")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def start(cwd, *args) -> subprocess.Popen:
    return subprocess.Popen([GEMMAFORGE, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the export ended first: {process.stderr.read()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def assert_nothing_or_unvalidated(parent, name: str = "art") -> None:
    """No scratch directory, lock or partial file anywhere; `name` absent, or complete with a
    manifest that records no validation."""
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]
    out = parent / name
    if not out.exists():
        return
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"] == {"status": "not run"}
    for entry in manifest["files"]:
        assert (out / entry["path"]).stat().st_size == entry["size"]
    assert not [p for p in out.rglob(".*")]


def loading(process: subprocess.Popen) -> bool:
    """Whether the console script holds SIGINT and SIGTERM back (it does while the modules
    load)."""
    with open(f"/proc/{process.pid}/status") as status:
        blocked = next(int(line.split()[1], 16) for line in status if line.startswith("SigBlk"))
    return all(blocked >> (signum - 1) & 1 for signum in EXIT)


MOMENTS = {
    "loading": lambda process, out: loading(process),
    "locked": lambda process, out: (out.parent / ".art.lock").exists(),
    "writing": lambda process, out: any(out.parent.glob(".art.partial-*")),
    "validating": lambda process, out: (out / "manifest.json").exists(),
}


@pytest.mark.parametrize(("moment", "signum"), [
    ("loading", signal.SIGINT), ("locked", signal.SIGTERM), ("writing", signal.SIGINT),
    ("writing", signal.SIGTERM), ("validating", signal.SIGINT), ("validating", signal.SIGTERM),
])
def test_interrupted_export_leaves_nothing_or_an_unvalidated_artifact(tmp_path, moment, signum):
    out = tmp_path / "art"
    process = start(tmp_path, *EXPORT, "--out", "art")
    wait_for(lambda: MOMENTS[moment](process, out), process)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == EXIT[signum], err
    assert "Traceback" not in err
    assert_nothing_or_unvalidated(tmp_path)
    if moment == "validating":
        assert out.exists()


def test_two_exports_of_one_out(tmp_path):
    first = start(tmp_path, *EXPORT, "--out", "art")  # validates: it holds the lock for a while
    wait_for(lambda: (tmp_path / ".art.lock").exists(), first)
    second = subprocess.run([GEMMAFORGE, *EXPORT, "--out", "art", "--no-validate"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 1 and len(lines) == 1, second.stderr
    # Refused by the lock, or by the artifact when the first has committed it by then.
    assert "another gemmaforge export is writing art" in lines[0] or \
        "art already exists" in lines[0]
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["validation"]["status"] == "passed"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_held_out_is_refused_at_once(tmp_path):
    with reserve(tmp_path / "art"):  # as an export in another process holds it
        second = subprocess.run([GEMMAFORGE, *EXPORT, "--out", "art"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        lines = second.stderr.strip().splitlines()
        assert second.returncode == 1 and len(lines) == 1, second.stderr
        assert "another gemmaforge export is writing art" in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock"]
    assert not any(tmp_path.iterdir())


def test_an_interrupt_lost_in_a_gc_callback_is_raised_again():
    def callback(phase, info):  # as JAX's, when SIGINT arrives while it runs
        if phase == "start":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), _interruptible():
        gc.callbacks.append(callback)
        try:
            gc.collect()  # Python reports the exception as unraisable and carries on
        finally:
            gc.callbacks.remove(callback)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the next steps, where it is raised again
            pass


def test_an_interrupt_waits_for_a_deferred_step():
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # where it would be raised, were it not deferred
        done.append(True)
    assert done


def run(capsys, *args):
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def assert_one_line_error(code, err, message):
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("gemmaforge: error:") and message in lines[0], lines[0]


def test_force_replaces_artifacts_only(capsys, tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    (work / "mine" / "notes.txt").write_text("keep me")
    (work / "file").write_text("keep me too")
    monkeypatch.chdir(work)
    cases = [("file", "is not a directory"), ("mine", "has no manifest.json"),
             (".", "current directory"), ("..", "current directory"),
             (str(tmp_path), "current directory")]
    for out, message in cases:
        code, _, err = run(capsys, *EXPORT, "--out", out, "--force", "--no-validate")
        assert_one_line_error(code, err, message)
    assert (work / "mine" / "notes.txt").read_text() == "keep me"
    assert (work / "file").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert sorted(p.name for p in work.iterdir()) == ["file", "mine"]

    # An artifact is replaced, and nothing of the old one is left beside it.
    for _ in range(2):
        code, _, err = run(capsys, *EXPORT, "--out", "art", "--force", "--no-validate")
        assert code == 0, err
    assert sorted(p.name for p in work.iterdir()) == ["art", "file", "mine"]


def test_out_is_checked_before_the_model_loads(capsys, tmp_path):
    (tmp_path / "art").mkdir()
    (tmp_path / "file").write_text("")
    missing = str(tmp_path / "not-yet.gguf")  # loading it would fail with its own message
    cases = [
        (("--out", str(tmp_path / "art")), "already exists"),
        (("--out", str(tmp_path / "file" / "art")), "is not a directory"),
        (("--out", str(tmp_path / "file" / "deeper" / "art")), "is not a directory"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((("--out", str(locked / "new" / "art")), "is not writable"))
    for args, message in cases:
        code, _, err = run(capsys, *EXPORT, "--checkpoint", missing, *args)
        assert_one_line_error(code, err, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["art", "file"] + (["locked"] if os.geteuid() != 0 else []))
    assert not any((tmp_path / "art").iterdir())


def test_missing_parents_are_made_and_removed_again(capsys, tmp_path):
    code, _, err = run(capsys, *EXPORT, "--out", str(tmp_path / "a" / "b" / "art"),
                       "--buckets", "8,64")  # longer than the cache: refused after the lock
    assert_one_line_error(code, err, "longer than the cache")
    assert not any(tmp_path.iterdir())
    code, _, err = run(capsys, *EXPORT, "--out", str(tmp_path / "a" / "b" / "art"),
                       "--no-validate")
    assert code == 0, err
    assert (tmp_path / "a" / "b" / "art" / "manifest.json").exists()
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["art"]
