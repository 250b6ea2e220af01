"""One error wrapper, one exit status for bad input: through `worldvla <stage>`, a bad config value and a
bad file end the command with exit status 2 and one `error:` line naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from worldvla.cli import main as worldvla
from worldvla.errors import InputFileError, exit_on_input_errors

ROOT = Path(__file__).resolve().parents[1]


def run_in_process(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        worldvla(argv)
    return exit_.value.code, capsys.readouterr().err


def test_a_bad_config_value_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: many\n")
    res = subprocess.run([sys.executable, "-m", "worldvla.cli", "conversations", "--config", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr, res.stderr
    assert str(bad) in lines[0] and "seed" in lines[0] and "'many'" in lines[0]


def test_a_data_stage_failure_is_exit_2_like_every_other_stage(tmp_path, capsys):
    """A data stage's expected failure (here a missing input) went through a wrapper of its own that exited 1."""
    code, err = run_in_process(["pretokenize", f"inputs=[{tmp_path / 'none.json'}]", f"out_dir={tmp_path / 'o'}"],
                               capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and "none.json" in err, err


def test_the_wrapper_names_file_and_field_on_one_line(capsys, monkeypatch):
    def main(argv):
        raise InputFileError("a/b.json", "bad value\nspread over two lines", "field")

    monkeypatch.delenv("WORLDVLA_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as exit_:
        exit_on_input_errors(main)([])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: a/b.json: field: bad value spread over two lines\n"
    monkeypatch.setenv("WORLDVLA_TRACEBACK", "1")  # the traceback on request
    with pytest.raises(InputFileError):
        exit_on_input_errors(main)([])
