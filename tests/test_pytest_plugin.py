"""The pytest plugin: a failing gradient check shows the report table, not a kernel traceback."""

import json
import os
import sys
import types
from importlib.metadata import entry_points
from types import SimpleNamespace

import pytest

try:  # before fastgrad: torch imported in a process where numba's kernels ran crashed it here
    import torch
except ImportError:
    torch = None

from fastgrad.testing.plugin import (
    _ROUTER,
    pytest_configure,
    pytest_load_initial_conftests,
    pytest_unconfigure,
)
from fastgrad.testing.render import _summary

# Every run is a subprocess: pytester's in-process runs forget the modules first imported inside
# them, and after one, the docs' Dask example (tests/test_docs.py, run next) hung in
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
    installed = any(ep.value == "fastgrad.testing.plugin"
                    for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "fastgrad.testing.plugin"]


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


# --- A: every report type renders, and rendering never breaks a run ---------------------------

FAST_MODE_FAILURE = """
import torch


class Triple(torch.autograd.Function):  # 3 x, whose backward says 2
    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def test_fast_mode_bug():
    import fastgrad.torch
    x = torch.linspace(0.1, 1.0, 4, dtype=torch.float64, requires_grad=True)
    fastgrad.torch.gradcheck(Triple.apply, (x,), fast_mode=True)


def test_after_it_nothing_is_routed():
    import os
    import sys
    checker = sys.modules["torch.autograd.gradcheck"]
    assert torch.autograd.gradcheck is checker.gradcheck
    assert not hasattr(torch.autograd.gradcheck, "__fastgrad_original__")
    assert "FASTGRAD_STRICT" not in os.environ
"""


def test_audit_report_failure_is_rendered_and_the_run_goes_on(pytester: pytest.Pytester,
                                                              monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("torch")
    monkeypatch.delenv("FASTGRAD_STRICT", raising=False)
    pytester.makepyfile(test_fast=FAST_MODE_FAILURE)
    result = pytester.runpytest_subprocess(*plugin_args(), "-ra")
    assert result.ret == 1
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines([
        "*fastgrad.torch.gradcheck(Triple.apply, (x,), fast_mode=True)*",
        "fast mode: a random direction disagreed*",
        "fastgrad audit FAILED: 4 wrong coordinates*",
        "*segment*size*suspects*blocks*status*verdict*",
        "*input0 *4 *4 *0 *localized *FAILED*",
        "test_fast.py:17: gradient check failed in 'input0' (4 of 4 wrong, localized)",
    ])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


BAD_REPORT = """
import fastgrad


class Unprintable:
    segments = {}

    def __str__(self):
        raise RuntimeError("cannot print this report")


def test_unrenderable_report():
    error = fastgrad.GradientCheckError("a report")
    error.report = Unprintable()
    raise error


def test_after():
    pass
"""


def test_a_report_that_cannot_be_rendered_keeps_the_traceback(pytester: pytest.Pytester):
    pytester.makepyfile(test_bad=BAD_REPORT)
    result = pytester.runpytest_subprocess(*plugin_args())
    assert result.ret == 1
    result.assert_outcomes(failed=1, passed=1)
    output = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in output
    assert "raise error" in output  # pytest's own traceback
    assert "GradientCheckError" in output


def test_summary_of_each_report_type():
    import numpy as np

    import fastgrad

    theta = np.array([1.0, 2.0, 3.0, 4.0])
    grad = np.r_[2 * theta[:2], 3 * theta[2:]]  # "b" is wrong
    segments = {"w": (2,), "b": (2,)}
    check = fastgrad.check(lambda t: float(t @ t), theta, grad, segments=segments)
    assert _summary(check) == "gradient check failed in 'b' (2 of 2 checked failed)"
    audit = fastgrad.audit(lambda t: float(t @ t), theta, grad, segments=segments)
    assert type(audit).__name__ == "AuditReport"
    assert _summary(audit) == "gradient check failed in 'b' (2 of 2 wrong, localized)"
    # a report of None: an error raised before a report existed
    assert _summary(None, ValueError("no input requires grad\nmore")) == "no input requires grad"
    # anything else: the error's first line
    assert _summary(object(), AssertionError("\n  not equal\n")) == "not equal"
    assert _summary(None) == "gradient check failed"


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_summary_of_a_jacobian_report():
    import fastgrad.torch

    x = torch.linspace(0.1, 1.0, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(fastgrad.GradientCheckError) as caught:
        fastgrad.torch.gradcheck(lambda x: x.detach() * 2 + x, (x,))
    report = caught.value.report
    assert type(report).__name__ == "JacobianReport"
    assert _summary(report) == ("gradient check failed in 'input0/output0' "
                                "(3 of 9 checked failed)")


# --- B: --fastgrad-strict -----------------------------------------------------------------------

class _FakeConfig:
    """What pytest_configure/pytest_unconfigure read of a config."""

    def __init__(self, tmp_path, **options):
        self.options = {"fastgrad_strict": False, "fastgrad_gradcheck": None,
                        "fastgrad_gradcheck_json": None, **options}
        self.stash = pytest.Stash()
        self.pluginmanager = SimpleNamespace(get_plugins=lambda: [])
        self.invocation_params = SimpleNamespace(dir=tmp_path)

    def getoption(self, name, default=None):
        return self.options.get(name, default)


@pytest.mark.parametrize("before", [None, "0", "1", ""])
def test_strict_option_sets_and_restores_the_environment(before, tmp_path,
                                                         monkeypatch: pytest.MonkeyPatch):
    if before is None:
        monkeypatch.delenv("FASTGRAD_STRICT", raising=False)
    else:
        monkeypatch.setenv("FASTGRAD_STRICT", before)
    config = _FakeConfig(tmp_path, fastgrad_strict=True)
    pytest_configure(config)
    assert os.environ["FASTGRAD_STRICT"] == "1"
    pytest_unconfigure(config)
    assert os.environ.get("FASTGRAD_STRICT") == before
    pytest_unconfigure(config)  # a second call changes nothing
    assert os.environ.get("FASTGRAD_STRICT") == before


# --- C: --fastgrad-gradcheck ----------------------------------------------------------------------

def test_bare_option_does_not_swallow_the_next_path():
    args = ["--fastgrad-gradcheck", "tests", "--fastgrad-gradcheck", "compare", "--",
            "--fastgrad-gradcheck"]
    namespace = SimpleNamespace(fastgrad_gradcheck="tests", file_or_dir=[])
    pytest_load_initial_conftests(SimpleNamespace(known_args_namespace=namespace), None, args)
    assert args == ["--fastgrad-gradcheck=replace", "tests", "--fastgrad-gradcheck", "compare",
                    "--", "--fastgrad-gradcheck"]
    assert namespace.fastgrad_gradcheck == "replace" and namespace.file_or_dir == ["tests"]


def test_a_wrong_mode_is_a_usage_error(tmp_path):
    with pytest.raises(pytest.UsageError, match="replace' or 'compare"):
        pytest_configure(_FakeConfig(tmp_path, fastgrad_gradcheck="both"))


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_routing_patches_and_restores_the_exact_originals(tmp_path):
    module = sys.modules["torch.autograd.gradcheck"]
    originals = (torch.autograd.gradcheck, torch.autograd.gradgradcheck, module.gradcheck,
                 module.gradgradcheck)
    bound = types.ModuleType("bound_at_import")
    bound.gradcheck = torch.autograd.gradcheck
    bound.other = len
    config = _FakeConfig(tmp_path, fastgrad_gradcheck="replace")
    pytest_configure(config)
    try:
        routed = torch.autograd.gradcheck
        assert routed is not originals[0] and routed.__fastgrad_original__ is originals[0]
        assert module.gradcheck is routed  # one replacement per original
        assert torch.autograd.gradgradcheck.__fastgrad_original__ is originals[1]
        router = config.stash[_ROUTER]
        router.patch_globals([bound])
        assert bound.gradcheck is routed and bound.other is len
        x = torch.linspace(0.1, 1.0, 3, dtype=torch.float64, requires_grad=True)
        assert bound.gradcheck(torch.sin, (x,))
        [call] = router.log.calls
        assert call["checker"] == "gradcheck" and call["fastgrad"]["verdict"] == "pass"
        assert call["original"] is None  # replace: torch's checker did not run
    finally:
        pytest_unconfigure(config)
    assert (torch.autograd.gradcheck, torch.autograd.gradgradcheck, module.gradcheck,
            module.gradgradcheck) == originals
    assert all(a is b for a, b in zip((torch.autograd.gradcheck, torch.autograd.gradgradcheck,
                                       module.gradcheck, module.gradgradcheck), originals))
    assert bound.gradcheck is originals[0]


# A suite as its authors wrote it: torch's and jax's checkers, bound at import or called by
# attribute. Its conftest checks, after the plugin's unconfigure, that the originals are back.
SUITE_CONFTEST = """
import json
import os
import sys

import pytest
import torch

TORCH_MODULE = sys.modules["torch.autograd.gradcheck"]
ORIGINALS = {
    "torch.autograd.gradcheck": torch.autograd.gradcheck,
    "torch.autograd.gradgradcheck": torch.autograd.gradgradcheck,
    "module.gradcheck": TORCH_MODULE.gradcheck,
    "module.gradgradcheck": TORCH_MODULE.gradgradcheck,
}


def current():
    values = {
        "torch.autograd.gradcheck": torch.autograd.gradcheck,
        "torch.autograd.gradgradcheck": torch.autograd.gradgradcheck,
        "module.gradcheck": TORCH_MODULE.gradcheck,
        "module.gradgradcheck": TORCH_MODULE.gradgradcheck,
        "test_torch_bound.gradcheck": sys.modules["test_torch_bound"].gradcheck,
    }
    if "jax.test_util" in sys.modules:
        from jax._src import public_test_util
        values["jax.test_util.check_grads"] = sys.modules["jax.test_util"].check_grads
        values["public_test_util.check_grads"] = public_test_util.check_grads
        values["test_jax_bound.check_grads"] = sys.modules["test_jax_bound"].check_grads
    return values


def pytest_sessionstart(session):
    session.config.fastgrad_routed_during = None


def pytest_collection_finish(session):
    session.config.fastgrad_routed_during = sorted(
        name for name, value in current().items() if hasattr(value, "__fastgrad_original__"))


@pytest.hookimpl(trylast=True)  # after the plugin's own unconfigure
def pytest_unconfigure(config):
    after = current()
    jax_original = None
    if "jax.test_util" in sys.modules:
        from jax._src import public_test_util
        jax_original = public_test_util.check_grads
        assert not hasattr(jax_original, "__fastgrad_original__")
    restored = {name: after[name] is ORIGINALS.get(name.replace("test_torch_bound.", "module."),
                                                   jax_original)
                for name in after}
    with open(os.path.join(os.path.dirname(__file__), "restored.json"), "w") as out:
        json.dump({"routed_during": config.fastgrad_routed_during, "restored": restored,
                   "strict": os.environ.get("FASTGRAD_STRICT")}, out)
"""

SUITE_TORCH_BOUND = """
import pytest
import torch
from torch.autograd import gradcheck
from torch.autograd.gradcheck import GradcheckError


class Triple(torch.autograd.Function):  # 3 x, whose backward says 2
    @staticmethod
    def forward(ctx, x):
        return 3 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class SlightlyOff(torch.autograd.Function):  # sin, whose backward is 5e-4 off: torch's rtol holds
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos() * (1 + 5e-4)


def point():
    return torch.linspace(0.1, 1.0, 4, dtype=torch.float64, requires_grad=True)


def test_correct():
    assert gradcheck(torch.sin, (point(),))


def test_planted_bug():
    assert gradcheck(Triple.apply, (point(),))


def test_detached_output_fails():
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: (2 * x).detach(), (point(),))


def test_slightly_off():
    assert gradcheck(SlightlyOff.apply, (point(),))


def test_unknown_keyword_falls_back():
    with pytest.raises(TypeError):
        gradcheck(torch.sin, (point(),), no_such_option=True)
"""

SUITE_TORCH_ATTRIBUTE = """
import torch


class Double(torch.autograd.Function):  # 2 x, whose backward says 3
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 3 * grad


class Square(torch.autograd.Function):  # x ** 2: right first derivative, wrong second
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * Double.apply(x)


def point():
    return torch.linspace(0.1, 1.0, 4, dtype=torch.float64, requires_grad=True)


def test_second_derivative_correct():
    assert torch.autograd.gradgradcheck(lambda x: (x ** 3).sum(), (point(),))


def test_second_derivative_planted_bug():
    assert torch.autograd.gradgradcheck(Square.apply, (point(),))
"""

SUITE_JAX_BOUND = """
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402


@jax.custom_vjp
def sine(x):
    return jnp.sin(x)


sine.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (2 * g * jnp.cos(x),))  # twice too large


def test_jax_correct():
    check_grads(jnp.sin, (jnp.linspace(0.1, 1.0, 4),), order=1)


def test_jax_planted_bug():
    check_grads(sine, (jnp.linspace(0.1, 1.0, 4),), order=1, modes=("rev",))
"""

try:
    import jax  # noqa: F401
    HAS_JAX = True
except ImportError:
    HAS_JAX = False


def make_suite(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(SUITE_CONFTEST)
    pytester.makepyfile(test_torch_bound=SUITE_TORCH_BOUND,
                        test_torch_attribute=SUITE_TORCH_ATTRIBUTE)
    if HAS_JAX:
        pytester.makepyfile(test_jax_bound=SUITE_JAX_BOUND)


def suite_outcomes(**outcomes: int) -> dict:
    """The suite's outcomes, the jax module's (one pass, one failure) added when it runs."""
    if HAS_JAX:
        outcomes["passed"] = outcomes.get("passed", 0) + 1
        outcomes["failed"] = outcomes.get("failed", 0) + 1
    else:
        outcomes["skipped"] = outcomes.get("skipped", 0) + 1
    return outcomes


ROUTED_NAMES = ["module.gradcheck", "module.gradgradcheck", "test_torch_bound.gradcheck",
                "torch.autograd.gradcheck", "torch.autograd.gradgradcheck"]
JAX_ROUTED_NAMES = ["jax.test_util.check_grads", "public_test_util.check_grads",
                    "test_jax_bound.check_grads"]


def restored(pytester: pytest.Pytester) -> dict:
    record = json.loads((pytester.path / "restored.json").read_text())
    assert all(record["restored"].values()), record["restored"]
    return record


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_replace_routes_every_check_of_a_suite_to_fastgrad(pytester: pytest.Pytester,
                                                          monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FASTGRAD_STRICT", raising=False)
    make_suite(pytester)
    # a bare flag followed by a path: the path stays a path
    result = pytester.runpytest_subprocess(*plugin_args(), "-ra", "--fastgrad-gradcheck",
                                           str(pytester.path), "--fastgrad-gradcheck-json",
                                           "calls.json")
    result.assert_outcomes(**suite_outcomes(passed=5, failed=2))
    output = result.stdout.str()
    # fastgrad's checker ran: its tables, not torch's "Jacobian mismatch"
    result.stdout.fnmatch_lines([
        "*test_planted_bug*",
        "*assert gradcheck(Triple.apply, (point(),))*",
        "fastgrad Jacobian check FAILED*",
        "test_torch_bound.py:*: gradient check failed in 'input0/output0' (4 of 16 checked "
        "failed)",
    ])
    assert "Jacobian mismatch" not in output
    # test_slightly_off passed, with fastgrad's warning shown at the test's line
    result.stdout.fnmatch_lines(["test_torch_bound.py::test_slightly_off",
                                 "*test_torch_bound.py:47: GradcheckWarning: *",
                                 "    assert gradcheck(SlightlyOff.apply, (point(),))"])
    result.stdout.fnmatch_lines(["fastgrad gradcheck: * calls routed to fastgrad "
                                 "(1 fallbacks to the original): *"])
    calls = json.loads((pytester.path / "calls.json").read_text())["calls"]
    by_test = {call["node"].split("::")[-1]: call for call in calls}
    assert by_test["test_correct"]["fastgrad"]["verdict"] == "pass"
    assert by_test["test_planted_bug"]["fastgrad"]["verdict"] == "fail"
    assert by_test["test_detached_output_fails"]["fastgrad"]["verdict"] == "fail"
    assert by_test["test_slightly_off"]["fastgrad"]["verdict"] == "pass with warning"
    assert by_test["test_second_derivative_planted_bug"]["checker"] == "gradgradcheck"
    assert by_test["test_second_derivative_planted_bug"]["fastgrad"]["verdict"] == "fail"
    fallback = by_test["test_unknown_keyword_falls_back"]
    assert fallback["fallback"].startswith("fallback: ") and "no_such_option" in \
        fallback["fallback"]
    assert fallback["fastgrad"] is None and fallback["original"]["verdict"].startswith(
        "error: TypeError")
    assert all(call["original"] is None for call in calls if not call["fallback"])
    record = restored(pytester)
    expected = ROUTED_NAMES + (JAX_ROUTED_NAMES if HAS_JAX else [])
    assert record["routed_during"] == sorted(expected)
    assert record["strict"] is None
    if HAS_JAX:
        assert by_test["test_jax_planted_bug"]["checker"] == "check_grads"
        assert by_test["test_jax_planted_bug"]["fastgrad"]["verdict"] == "fail"
        assert "check_grads: VJP (order 1, rev mode)" in output


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_compare_keeps_the_original_outcomes_and_reports_both(pytester: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("FASTGRAD_STRICT", raising=False)
    make_suite(pytester)
    # --fastgrad-strict: fastgrad fails test_slightly_off, torch passes it (a disagreement)
    result = pytester.runpytest_subprocess(*plugin_args(), "--fastgrad-gradcheck=compare",
                                           "--fastgrad-strict",
                                           "--fastgrad-gradcheck-json", "out.json")
    result.assert_outcomes(**suite_outcomes(passed=5, failed=2))
    output = result.stdout.str()
    assert "Jacobian mismatch" in output  # torch's own failure messages
    assert "GradcheckWarning" not in output
    result.stdout.fnmatch_lines([
        "*= fastgrad gradcheck comparison =*",
        "* calls, * compared, 1 fallbacks to the original checker only",
        "original: * runs, *passed, *failed, *errors; * s in total, median * s (+ * s of full garbage *",
        "fastgrad: * runs, *passed, *failed, *errors; * s in total, median * s (+ * s of full garbage *",
        "time fastgrad / original: *",
        "disagreements: 1",
        "  test_torch_bound.py::test_slightly_off: gradcheck: original pass, fastgrad fail",
        "    fastgrad:",
        "      fastgrad Jacobian check FAILED*",
        "    original:",
        "      passed",
    ])
    data = json.loads((pytester.path / "out.json").read_text())
    calls = data["calls"]
    names = {call["node"].split("::")[-1] for call in calls}
    assert {"test_correct", "test_planted_bug", "test_detached_output_fails",
            "test_slightly_off", "test_unknown_keyword_falls_back",
            "test_second_derivative_correct", "test_second_derivative_planted_bug"} <= names
    for call in calls:
        if call["fallback"]:
            assert call["fastgrad"] is None
            continue
        for side in ("original", "fastgrad"):
            assert call[side]["verdict"] in ("pass", "fail", "pass with warning")
            assert call[side]["seconds"] > 0
        slightly_off = call["node"].endswith("test_slightly_off")
        assert call["agree"] is not slightly_off
    summary = data["summary"]
    assert summary["calls"] == len(calls) and summary["fallbacks"] == 1
    assert summary["disagreements"] == [{"node": "test_torch_bound.py::test_slightly_off",
                                         "checker": "gradcheck", "original": "pass",
                                         "fastgrad": "fail"}]
    assert summary["ratio_fastgrad_to_original"] > 0
    assert summary["order"] == "original-first"
    assert not any(call.get("fastgrad_first") for call in calls)
    record = restored(pytester)
    assert record["strict"] is None  # --fastgrad-strict undone too
    assert record["routed_during"] == sorted(ROUTED_NAMES + (JAX_ROUTED_NAMES if HAS_JAX
                                                             else []))


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_compare_in_alternate_order_keeps_the_outcomes(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch):
    """--fastgrad-gradcheck-order=alternate: fastgrad's checker runs first on every second
    compared call; the tests' outcomes are still torch's, the disagreement the same."""
    monkeypatch.delenv("FASTGRAD_STRICT", raising=False)
    make_suite(pytester)
    result = pytester.runpytest_subprocess(*plugin_args(), "--fastgrad-gradcheck=compare",
                                           "--fastgrad-gradcheck-order=alternate",
                                           "--fastgrad-strict",
                                           "--fastgrad-gradcheck-json", "out.json")
    result.assert_outcomes(**suite_outcomes(passed=5, failed=2))
    result.stdout.fnmatch_lines(["time fastgrad / original: * (each first on every second call)",
                                 "disagreements: 1"])
    data = json.loads((pytester.path / "out.json").read_text())
    compared = [call for call in data["calls"] if not call["fallback"]]
    assert [call["fastgrad_first"] for call in compared] == [
        j % 2 == 1 for j in range(len(compared))]
    assert data["summary"]["order"] == "alternate"
    assert [d["node"] for d in data["summary"]["disagreements"]] == [
        "test_torch_bound.py::test_slightly_off"]
    bad = pytester.runpytest_subprocess(*plugin_args(), "--fastgrad-gradcheck=compare",
                                        "--fastgrad-gradcheck-order=sideways")
    assert bad.ret != 0
    assert "invalid choice: 'sideways'" in bad.stderr.str()


def test_without_the_flag_nothing_is_routed(pytester: pytest.Pytester):
    pytester.makepyfile(test_light="""
        import sys

        def test_frameworks_not_imported():
            assert "torch" not in sys.modules and "jax" not in sys.modules
        """)
    result = pytester.runpytest_subprocess(*plugin_args(), "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    assert "fastgrad gradcheck" not in result.stdout.str()


def test_router_alternate_order_draws_what_the_original_draws_alone(
        monkeypatch: pytest.MonkeyPatch):
    """In alternate order fastgrad's checker runs first on every second compared call, and the
    original still draws from the global generators what it would draw without fastgrad."""
    import random

    from fastgrad.errors import InvalidValue
    from fastgrad.testing import routing

    ran: list[str] = []

    def original(f, inputs):
        ran.append("original")
        return random.random()  # what the original draws

    def fastgrad_side(f, inputs):
        ran.append("fastgrad")
        random.random()
        random.random()  # consumes the global generator: the router must undo it
        return True

    fake = types.ModuleType("fake_fastgrad_torch")
    fake.gradcheck = fastgrad_side
    monkeypatch.setitem(sys.modules, "fake_fastgrad_torch", fake)
    monkeypatch.setitem(routing._FASTGRAD, "gradcheck", "fake_fastgrad_torch")
    router = routing.Router("compare", order="alternate")
    routed = router._replacement(original, "gradcheck")
    random.seed(5)
    alone = [random.random() for _ in range(4)]
    random.seed(5)
    drawn = [routed("f", ()) for _ in range(4)]
    assert drawn == alone
    assert ran == ["original", "fastgrad", "fastgrad", "original"] * 2
    assert [c["fastgrad_first"] for c in router.log.calls] == [False, True, False, True]
    assert router.log.summary()["order"] == "alternate"
    assert any("each first on every second call" in line
               for line in router.log.summary_lines())
    with pytest.raises(InvalidValue, match="order: expected one of original-first, alternate"):
        routing.Router("compare", order="sideways")
    # fastgrad-first: on every call, the original's draws still its own
    router = routing.Router("compare", order="fastgrad-first")
    routed = router._replacement(original, "gradcheck")
    ran.clear()
    random.seed(5)
    assert [routed("f", ()) for _ in range(3)] == alone[:3]
    assert ran == ["fastgrad", "original"] * 3
    assert [c["fastgrad_first"] for c in router.log.calls] == [True, True, True]
    assert any("fastgrad first on every call" in line for line in router.log.summary_lines())


def test_router_verdicts_outcomes_and_summary(monkeypatch: pytest.MonkeyPatch):
    import random
    import warnings

    from fastgrad.errors import GradcheckWarning
    from fastgrad.testing import routing

    def original(f, inputs, *, fast_mode=False):
        if f == "torch fails":
            raise AssertionError("torch: mismatch")
        return f != "torch returns False"

    def fastgrad_side(f, inputs, *, fast_mode=False):
        random.random()  # consumes the global generator: compare mode must undo it
        if f == "fastgrad errors":
            raise RuntimeError("boom\nsecond line")
        if f == "fastgrad warns":
            warnings.warn(GradcheckWarning("beyond fastgrad's band"), stacklevel=2)
        return f != "torch returns False"

    fake = types.ModuleType("fake_fastgrad_torch")
    fake.gradcheck = fastgrad_side
    monkeypatch.setitem(sys.modules, "fake_fastgrad_torch", fake)
    monkeypatch.setitem(routing._FASTGRAD, "gradcheck", "fake_fastgrad_torch")
    router = routing.Router("compare")
    routed = router._replacement(original, "gradcheck")
    router.node = "test_x.py::test_y"

    state = random.getstate()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # compare mode shows none of fastgrad's warnings
        assert routed("fastgrad errors", (), fast_mode=True) is True
        assert routed("fastgrad warns", ()) is True
    assert random.getstate() == state
    assert routed("torch returns False", ()) is False
    with pytest.raises(AssertionError, match="torch: mismatch"):
        routed("torch fails", ())
    with pytest.raises(TypeError):  # fastgrad does not know the keyword: the original runs
        routed("ok", (), unknown=1)
    errored, warned, returned_false, failed, fallback = router.log.calls
    assert errored["fast_mode"] is True and errored["node"] == "test_x.py::test_y"
    assert errored["original"]["verdict"] == "pass"
    assert errored["fastgrad"]["verdict"] == "error: RuntimeError: boom"
    assert errored["agree"] is False and errored["fastgrad"]["message"].startswith("boom")
    assert errored["original"]["message"] == "passed"
    assert warned["fastgrad"]["verdict"] == "pass with warning" and warned["agree"] is True
    assert warned["fastgrad"]["warnings"] == ["beyond fastgrad's band"]
    assert returned_false["original"]["verdict"] == "fail" == returned_false["fastgrad"]["verdict"]
    assert failed["original"]["verdict"] == "fail" and failed["agree"] is False
    assert fallback["fallback"] == ("fallback: got an unexpected keyword argument 'unknown'")
    summary = router.log.summary()
    assert summary["calls"] == 5 and summary["compared"] == 4 and summary["fallbacks"] == 1
    assert summary["original"]["errors"] == 1 and summary["fastgrad"]["errors"] == 1
    assert summary["fastgrad"]["passed_with_warning"] == 1
    assert [d["fastgrad"] for d in summary["disagreements"]] == ["error: RuntimeError: boom",
                                                                 "pass"]
    lines = "\n".join(router.log.summary_lines())
    assert "disagreements: 2" in lines and "fallback: got an unexpected keyword" in lines
    json.dumps(router.log.as_dict())  # JSON-ready

    # replace mode: fastgrad's warning reaches the caller's line, its outcome is the call's
    router = routing.Router("replace")
    routed = router._replacement(original, "gradcheck")
    with pytest.warns(GradcheckWarning) as caught:
        assert routed("fastgrad warns", ()) is True
    assert caught[0].filename == __file__
    with pytest.raises(RuntimeError, match="boom"):
        routed("fastgrad errors", ())
    assert [c["original"] for c in router.log.calls] == [None, None]
    router.restore()  # closed: a replacement still referenced calls the original, unrecorded
    with pytest.raises(AssertionError):
        routed("torch fails", ())
    assert len(router.log.calls) == 2


def test_a_checkers_time_leaves_out_the_full_garbage_collections_that_ran_meanwhile():
    """A full collection costs the whole heap's size (0.2-0.4 s in a large suite) and lands on
    whichever checker allocates at the threshold: compare mode records it apart, so it cannot
    decide which checker looks faster. A scripted clock: the accounting, not this machine's
    speed, is under test."""
    import gc

    from fastgrad.testing.compare import run_checker

    def scripted(*readings):
        times = iter(readings)
        return lambda: next(times)

    def collects():
        gc.collect()  # a full (generation 2) collection inside the checker
        return True

    enabled = gc.isenabled()
    gc.disable()  # no collection of our own making lands in ``plain``
    try:
        # the call starts at 10.0, the collection runs from 11.0 to 13.5, the call ends at 14.0
        collected = run_checker(collects, (), {}, catch=False,
                                clock=scripted(10.0, 11.0, 13.5, 14.0))
        quiet = run_checker(lambda: True, (), {}, catch=False, clock=scripted(20.0, 21.25))
        failed = run_checker(lambda: False, (), {}, catch=False, clock=scripted(30.0, 30.5))
    finally:
        if enabled:
            gc.enable()
    assert collected.verdict == "pass"
    assert collected.collector_seconds == 2.5 and collected.seconds == 1.5
    assert collected.as_dict()["collector_seconds"] == 2.5
    assert quiet.verdict == "pass" and quiet.collector_seconds == 0.0 and quiet.seconds == 1.25
    assert failed.verdict == "fail" and failed.seconds == 0.5
    assert not any(type(c).__name__ == "FullCollections" for c in gc.callbacks)  # removed
    # the callback is removed after each call
    assert not any(type(cb).__name__ == "FullCollections" for cb in gc.callbacks)
