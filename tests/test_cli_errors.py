"""``python -m studio``: a user error is one ``error:`` line and exit code 2, with or without
``--debug`` (which adds the traceback). The web app's own entry is in test_security."""

from __future__ import annotations

import pytest

from studio.cli import main


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("command, sentence", [
    (["train"], "error: data.dataset: give the dataset with --dataset DATASET_DIR."),
    (["generate", "--prompt", "x", "--steps", "0"], "error: Steps must be between 1 and 150"),
])
def test_user_error_exits_2_with_one_line(tmp_path, capsys, command, sentence, debug):
    argv = (["--debug"] if debug else []) + command + ["--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(sentence), err
    assert ("Traceback" in err) is debug
