"""docs/benchmarks.md is rendered from results files: every figure from a file, every missing
benchmark named with the command that measures it."""

import json

from benchmarks import common, report


def speed() -> dict:
    """Prefill and decode speed of nothing in particular."""
    return {}


def accuracy() -> dict:
    return {}


accuracy.__module__ = __name__  # described by this module's docstring


def test_spread_gives_median_and_range():
    assert common.spread("seconds", [3.0, 1.0, 2.0, 10.0]) == {
        "seconds_median": 2.5, "seconds_min": 1.0, "seconds_max": 10.0}


def test_save_records_command_date_and_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    path = common.save("speed", {"repeats": 3})
    common.record_wall_time("speed", 12.34)
    saved = json.loads(path.read_text())
    assert path == tmp_path / "speed.json"
    assert saved["benchmark"] == "speed"
    assert saved["command"] == "python -m benchmarks speed"
    assert saved["date"].endswith("+00:00")
    assert saved["machine"]["cpu_count"] >= 1
    assert saved["repeats"] == 3
    assert saved["wall_seconds"] == 12.3


def test_page_renders_results_and_lists_the_unmeasured(tmp_path):
    (tmp_path / "speed.json").write_text(json.dumps({
        "benchmark": "speed", "command": "python -m benchmarks speed",
        "date": "2026-01-02T03:04:05+00:00", "wall_seconds": 61.0,
        "machine": {"cpu_count": 2, "memory_gib": 7.5, "platform": "Linux-x",
                    "load_average_when_saved": [1.0, 1.0, 1.0]},
        "preset": "gemma3-270m", "repeats": 3, "runs": [{"seconds": 1.0}],
        "runtimes": {"jax": {"decode_tokens_per_second_median": 10.26,
                             "decode_tokens_per_second_min": 9.5},
                     "iree": {"decode_tokens_per_second_median": 12.0,
                              "xnnpack": {"partitions": 4}}}}))
    page = report.render({"speed": speed, "accuracy": accuracy}, tmp_path)
    lines = page.splitlines()

    assert "Regenerate: `python -m benchmarks speed`" in lines
    assert "Prefill and decode speed of nothing in particular." in lines
    assert any(line.startswith("Measured 2026-01-02T03:04:05+00:00 on 2 cores, 7.5 GiB")
               and line.endswith("took 61 s.") for line in lines)
    assert "| preset | gemma3-270m |" in lines
    assert not any("seconds" in line for line in lines if line.startswith("|"))  # runs left out
    assert ("| runtimes | decode_tokens_per_second_median | decode_tokens_per_second_min "
            "| xnnpack / partitions |") in lines
    assert "| jax | 10.26 | 9.5 |  |" in lines
    assert "| iree | 12 |  | 4 |" in lines
    assert "Not measured yet: run `python -m benchmarks accuracy`." in lines
    assert "Regenerate: `python -m benchmarks accuracy`" not in lines
    assert lines[lines.index("## accuracy") + 2].startswith("docs/benchmarks.md is rendered")


def test_every_registered_benchmark_has_a_section(tmp_path):
    from benchmarks.__main__ import BENCHMARKS

    page = report.render(BENCHMARKS, tmp_path)
    for name in BENCHMARKS:
        assert f"## {name}" in page
        assert f"Not measured yet: run `python -m benchmarks {name}`." in page


def test_committed_page_is_the_rendering_of_the_committed_results():
    """docs/benchmarks.md is generated: run `python -m benchmarks report` after a benchmark."""
    from benchmarks.__main__ import BENCHMARKS

    assert report.PAGE.read_text() == report.render(BENCHMARKS)
