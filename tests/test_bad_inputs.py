"""Every crafted input of tests/bad_inputs.py through the CLI: the expected one-line error and
exit status, no traceback, and nothing written or removed."""

import pytest

from cli.app import main
from tests.bad_inputs import CASES, good_artifact, snapshot


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_params):
    from tests.bad_inputs import PRESET

    return good_artifact(tmp_path_factory.mktemp("good") / "artifact", tiny_params(PRESET))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_is_one_clear_error_and_leaves_nothing(case, good, tmp_path, monkeypatch,
                                                           capsys):
    monkeypatch.setenv("GEMMAFORGE_CACHE", str(tmp_path / "cache"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = case.make(scratch, good)
    before = snapshot(scratch)
    monkeypatch.chdir(scratch)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    out, err = capsys.readouterr()
    assert stop.value.code == case.exit_code, err
    assert err.startswith("gemmaforge: error:") and err.count("\n") == 1, err
    assert case.expect in err
    assert "Traceback" not in out + err
    assert snapshot(scratch) == before
