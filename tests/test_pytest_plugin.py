"""The pytest plugin: a failing gradient check shows the report table, not a kernel traceback."""

from importlib.metadata import entry_points

import pytest

# Every run is a subprocess: pytester's in-process runs forget the modules first imported inside
# them, and after one, README's Dask example (tests/test_readme.py, run next) hung in
# client.close() whenever no earlier test had imported distributed.

pytest_plugins = ["pytester"]

FAILING_TEST = """
import numpy as np
import fastgrad


def test_wrong_bias_gradient():
    theta = np.array([1.0, 2.0, 3.0, 4.0])
    grad = np.r_[2 * theta[:2], 3 * theta[2:]]          # the "b" half is wrong
    fastgrad.assert_gradients(lambda t: float(t @ t), theta, grad,
                              segments={"w": (2,), "b": (2,)})


def test_right_gradient():
    theta = np.array([1.0, 2.0])
    fastgrad.assert_gradients(lambda t: float(t @ t), theta, 2 * theta)


def test_plain_assertion():
    assert 1 == 2
"""


def plugin_args() -> list[str]:
    """Load the plugin by hand unless it is already installed through its entry point."""
    installed = any(ep.value == "fastgrad.pytest_plugin" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "fastgrad.pytest_plugin"]


def test_failing_check_shows_the_report_table(pytester: pytest.Pytester):
    pytester.makepyfile(test_grads=FAILING_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "-ra")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines([
        "*test_wrong_bias_gradient*",
        "*fastgrad.assert_gradients(lambda t: float(t @ t), theta, grad,*",
        "fastgrad check FAILED: max rel. error*",
        "*segment*size*checked*failed*",
        "*w *2 *2 *0 *",
        "*b *2 *2 *2 *FAILED*",
        "test_grads.py:8: gradient check failed in 'b' (2 of 2 checked failed)",
    ])
    result.stdout.fnmatch_lines([
        "FAILED test_grads.py::test_wrong_bias_gradient - gradient check failed in 'b'*",
    ])
    output = result.stdout.str()
    # no traceback through fastgrad's own modules
    for internal in ("check.py", "evaluate.py", "kernels.py", "raise GradientCheckError"):
        assert internal not in output
    # other failures keep pytest's usual report
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])


def test_traceback_option_restores_the_usual_report(pytester: pytest.Pytester):
    pytester.makepyfile(test_grads=FAILING_TEST)
    result = pytester.runpytest_subprocess(*plugin_args(), "--fastgrad-traceback", "-k",
                                           "wrong_bias")
    result.assert_outcomes(failed=1, deselected=2)
    result.stdout.fnmatch_lines(["*GradientCheckError*"])
    assert "raise GradientCheckError" in result.stdout.str()


def test_plugin_does_not_import_fastgrad_at_startup(pytester: pytest.Pytester):
    pytester.makepyfile(test_light="""
        import sys

        def test_fastgrad_not_imported():
            assert "numba" not in sys.modules
        """)
    # a subprocess: this session has imported fastgrad (and numba) already
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
