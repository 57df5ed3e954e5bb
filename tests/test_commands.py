"""The command layer: one parser and one mapping from failures to exit statuses for every subcommand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mstagger.commands.main import main as cli_main


@pytest.mark.parametrize(
    "argv", [["predict", "x.wav"], ["info"], ["tags", "--annotations", "a.csv"], ["report"]]
)
def test_a_bad_flag_is_one_line_and_status_2_everywhere(argv, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        cli_main([*argv, "--no-such-flag"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--no-such-flag" in err, err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "missing.pt"], "missing.pt"),
        (["report", "--from", "missing.json"], "missing.json"),
        (["tags", "--annotations", "missing.csv"], "missing.csv"),
        (["predict", "missing.wav"], "missing.wav"),
    ],
)
def test_an_expected_failure_is_one_error_line_and_status_2(argv, needle, capsys) -> None:
    assert cli_main(argv) == 2  # from the repository root, where ./params.yaml gives the defaults
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_an_unknown_command_and_python_dash_m(capsys) -> None:
    assert cli_main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "mstagger", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "predict PATH..." in done.stdout


def test_every_command_whose_output_fails_says_so_in_one_line(tmp_path) -> None:
    """stdout on a full disk (/dev/full): one line and status 2 for tags and report too, as for predict
    and info (tests/test_predict_faults.py); before, the failure came at exit as a traceback."""
    from helpers import make_fake_project
    from test_report import exp_show

    proj = make_fake_project(tmp_path)
    saved = tmp_path / "exp.json"
    saved.write_text(json.dumps(exp_show()))
    commands = {
        "tags": ["tags", "--annotations", str(proj["raw"] / "annotations_final.csv")],
        "report": ["report", "--from", str(saved)],
    }
    for name, argv in commands.items():
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "mstagger", *argv],
                cwd=tmp_path,
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=120,
            )
        assert done.returncode == 2, (name, done.stderr)
        assert done.stderr == "error: cannot write the output: No space left on device\n", (name, done.stderr)
