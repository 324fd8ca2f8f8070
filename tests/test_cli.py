import json
import subprocess
import sys
import textwrap

import pytest

from fastgrad.cli import main


def test_demo_exits_zero_and_prints_both_reports(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "FAILED" in out and "b1" in out


@pytest.fixture
def problems(tmp_path, monkeypatch):
    (tmp_path / "myproblems.py").write_text(textwrap.dedent("""
        from fastgrad.examples import two_layer_problem

        def good():
            return two_layer_problem(jit=False)

        def bad():
            return two_layer_problem(bug="transpose", jit=False)

        def not_a_problem():
            return 42
    """))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_check_exit_codes(problems, capsys):
    assert main(["check", "myproblems:good", "--samples", "8"]) == 0
    assert main(["check", "myproblems:bad", "--samples", "8"]) == 1
    out = capsys.readouterr().out
    assert "W1" in out and "FAILED" in out
    assert main(["check", "myproblems:missing"]) == 2
    assert main(["check", "no_such_module:good"]) == 2
    assert main(["check", "myproblems:not_a_problem"]) == 2
    assert main(["check", "nocolon"]) == 2
    assert main(["check", "myproblems:good", "--samples", "zero"]) == 2


def test_check_json_and_seed(problems):
    assert main(["check", "myproblems:bad", "--samples", "4", "--seed", "3",
                 "--json", "out.json"]) == 1
    data = json.loads((problems / "out.json").read_text())
    assert data["passed"] is False and data["seed"] == 3
    assert data["segments"]["W1"]["failed"] > 0 and data["segments"]["b1"]["failed"] == 0


def test_console_script_runs_as_a_module(problems):
    done = subprocess.run([sys.executable, "-m", "fastgrad.cli", "check", "myproblems:bad",
                           "--samples", "4"], capture_output=True, text=True, cwd=problems)
    assert done.returncode == 1 and "W1" in done.stdout


def test_check_audit_finds_the_missing_bias_gradient_within_budget(problems, capsys):
    assert main(["check", "myproblems:bad", "--audit", "--budget", "400"]) == 1
    assert main(["check", "myproblems:good", "--audit", "--json", "audit.json"]) == 0
    data = json.loads((problems / "audit.json").read_text())
    assert data["passed"] is True
    (problems / "biasbug.py").write_text(
        "from fastgrad.examples import buggy_two_layer_problem as bad\n")
    assert main(["check", "biasbug:bad", "--audit", "--budget", "300", "--json", "b.json"]) == 1
    data = json.loads((problems / "b.json").read_text())
    assert data["evaluations"] <= 300
    assert data["segments"]["b1"]["passed"] is False
    assert all(data["segments"][name]["passed"] for name in ("W1", "W2", "b2"))


def test_a_bug_inside_fastgrad_is_not_reported_as_bad_input(tmp_path, monkeypatch, capsys):
    """Only bad input exits 2; an exception from fastgrad's own code is an internal error
    (exit 70, with its traceback), never mistaken for the user's mistake or a failed check."""
    import fastgrad.checks.coordinates as coordinates

    def broken(*args, **kwargs):
        raise TypeError("an internal bug")

    monkeypatch.setattr(coordinates, "sample_coordinates", broken)
    assert main(["demo"]) == 70
    err = capsys.readouterr().err
    assert "an internal bug" in err and "Traceback" in err and "bad input" not in err


def test_bad_input_from_a_problem_exits_2(tmp_path, monkeypatch, capsys):
    (tmp_path / "badproblems.py").write_text(
        "import numpy as np\nimport fastgrad as fg\n"
        "def wrong_size():\n"
        "    return fg.Problem(lambda t: float(t @ t), np.ones(3), np.ones(4))\n"
        "def raising():\n"
        "    return fg.Problem(lambda t: 1 / 0, np.ones(3), np.ones(3))\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "badproblems:wrong_size"]) == 2
    assert "grad: has 4 values" in capsys.readouterr().err
    assert main(["check", "badproblems:raising"]) == 2
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_a_reader_that_stops_reading_is_not_an_internal_error(problems):
    # fastgrad check ... | head: the reader leaves before the report is written (here at once)
    done = subprocess.run(
        ["bash", "-c", f"{sys.executable} -m fastgrad.cli check myproblems:bad --samples 4 "
                       "| true; exit ${PIPESTATUS[0]}"],
        capture_output=True, text=True, cwd=problems)
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 141  # as a shell reports a writer killed by SIGPIPE
