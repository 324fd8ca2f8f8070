"""pytest plugin: a failing gradient check reads as its report table, not a traceback.

Installed with fastgrad through the ``pytest11`` entry point (``-p fastgrad.pytest_plugin``
loads it by hand). When a test fails with ``fastgrad.GradientCheckError``, the failure shows the
line of the test that ran the check and the report table (one row per segment, then the worst
coordinates) instead of a traceback through fastgrad's kernels:

    tests/test_layers.py:42: gradient check failed in 'b1' (16 of 16 checked failed)
    fastgrad check FAILED: max rel. error 1.0e+00 over 64 coordinates, 16 failed, ...

Options (``pytest --help`` lists them under "fastgrad gradient checks"):

``--fastgrad-traceback``
    Show pytest's usual traceback for a failed gradient check instead of the report table.
``--fastgrad-strict``
    Set ``FASTGRAD_STRICT=1`` for the session (restored at its end): the drop-ins
    (``fastgrad.torch.gradcheck``/``gradgradcheck``, ``fastgrad.jax.check_grads``) then fail
    elements within the caller's tolerance but beyond fastgrad's own band instead of warning
    (``fastgrad.GradcheckWarning``).
``--fastgrad-gradcheck``, ``--fastgrad-gradcheck=replace|compare``
    Route every gradient check of the suite to fastgrad without editing it: torch's
    ``torch.autograd.gradcheck``/``gradgradcheck`` (in ``torch.autograd`` and in the module
    ``torch.autograd.gradcheck``), jax's ``check_grads`` (``jax.test_util`` and
    ``jax._src.public_test_util``), and the names test modules bound to them at import
    (``from torch.autograd import gradcheck``). torch's internal wrappers
    (``torch.testing._internal.common_utils.gradcheck``) fill their defaults and call
    ``torch.autograd.gradcheck`` by attribute, so they are routed too, defaults kept.
    ``replace`` (the default) runs fastgrad's drop-in instead of the original; a call with a
    keyword fastgrad does not know runs the original (a "fallback"). ``compare`` runs both,
    the original first, and keeps the original's outcome (the suite behaves as before); the
    terminal summary then lists the calls, each checker's verdicts and time, and every
    disagreement. Frameworks that are not installed are left alone; everything is restored
    at the end of the session.
``--fastgrad-gradcheck-json``
    ``--fastgrad-gradcheck-json PATH``, with ``--fastgrad-gradcheck``: write every call (node
    id, checker, fast_mode, both verdicts and times, a disagreement's messages) and the summary
    to PATH as JSON: ``{"calls": [...], "summary": {...}}``.
``-p no:fastgrad``
    pytest's own switch: do not load the plugin at all.

Only failures whose exception is a ``fastgrad.GradientCheckError`` (what
``fastgrad.assert_gradients`` and the ``fastgrad.testing`` assertions raise) are rewritten; any
other failure, and a passing test, is reported as pytest reports it; rendering never breaks a
run (a report it cannot render keeps pytest's traceback). The plugin does not import fastgrad
(nor numba) at pytest start-up: it only looks at exceptions raised after fastgrad was imported by
the tests; torch and jax are imported at start-up only with ``--fastgrad-gradcheck``, and fastgrad
at the first check it routes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import json
import os
import random
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import pytest

STRICT_ENV = "FASTGRAD_STRICT"  # read by the drop-ins at call time (fastgrad.arguments)
MODES = ("replace", "compare")
MESSAGE_LINES = 60  # a disagreement's messages are cut to this many lines


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the plugin's options in the option group "fastgrad gradient checks".

    Parameters
    ----------
    parser : pytest.Parser
        pytest's command-line parser.
    """
    group = parser.getgroup("fastgrad", "fastgrad gradient checks")
    group.addoption(
        "--fastgrad-traceback",
        action="store_true",
        default=False,
        help="show pytest's usual traceback for failed gradient checks instead of the report",
    )
    group.addoption(
        "--fastgrad-strict",
        action="store_true",
        default=False,
        help="set FASTGRAD_STRICT=1 for the session: fastgrad's drop-ins fail elements beyond "
             "fastgrad's band that the caller's tolerance accepts (instead of warning)",
    )
    # no `choices`: a bare --fastgrad-gradcheck followed by a path is rewritten before parsing
    # (pytest_load_initial_conftests); the value is checked in pytest_configure
    group.addoption(
        "--fastgrad-gradcheck",
        nargs="?",
        const="replace",
        default=None,
        metavar="replace|compare",
        help="route torch's gradcheck/gradgradcheck and jax's check_grads to fastgrad: "
             "'replace' (default) runs fastgrad's drop-in instead, 'compare' runs both and "
             "keeps the original's outcome, then summarizes verdicts and times",
    )
    group.addoption(
        "--fastgrad-gradcheck-json",
        default=None,
        metavar="PATH",
        help="with --fastgrad-gradcheck: write every routed call and the summary to PATH as JSON",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    """Read a bare ``--fastgrad-gradcheck`` as ``--fastgrad-gradcheck=replace``.

    An option with an optional value would otherwise take the next argument (a test path) as
    its value; ``--fastgrad-gradcheck compare`` keeps working.

    Parameters
    ----------
    early_config : pytest.Config
        The configuration being built; its early namespace gets the same correction.
    parser : pytest.Parser
        pytest's command-line parser (unused).
    args : list of str
        The command line (with addopts), rewritten in place.
    """
    rewritten = []
    for k, arg in enumerate(args):
        if arg == "--":
            rewritten.extend(args[k:])
            break
        following = args[k + 1] if k + 1 < len(args) else None
        if arg == "--fastgrad-gradcheck" and following not in MODES:
            arg = "--fastgrad-gradcheck=replace"
        rewritten.append(arg)
    args[:] = rewritten
    namespace = early_config.known_args_namespace
    value = getattr(namespace, "fastgrad_gradcheck", None)
    if value is not None and value not in MODES:  # it took a path: give it back
        namespace.fastgrad_gradcheck = "replace"
        getattr(namespace, "file_or_dir", []).append(value)


def pytest_configure(config: pytest.Config) -> None:
    """Set ``FASTGRAD_STRICT`` and route the gradient checkers, as the options ask.

    Parameters
    ----------
    config : pytest.Config
        The session's configuration; what is changed is remembered in ``config.stash`` and
        undone by ``pytest_unconfigure``.

    Raises
    ------
    pytest.UsageError
        When ``--fastgrad-gradcheck`` is given another value than "replace" or "compare".
    """
    mode = config.getoption("fastgrad_gradcheck", None)
    if mode is not None and mode not in MODES:
        raise pytest.UsageError(
            f"--fastgrad-gradcheck: expected 'replace' or 'compare', got {mode!r}")
    if config.getoption("fastgrad_strict", False):
        config.stash[_STRICT_BEFORE] = os.environ.get(STRICT_ENV)
        os.environ[STRICT_ENV] = "1"
    if mode is None:
        return
    router = _Router(mode)
    config.stash[_ROUTER] = router
    router.patch_frameworks()
    router.patch_globals(_plugin_modules(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Write the JSON record, restore the original checkers and ``FASTGRAD_STRICT``.

    Parameters
    ----------
    config : pytest.Config
        The session's configuration (what ``pytest_configure`` changed is in its stash).
    """
    router = config.stash.get(_ROUTER, None)
    if router is not None:
        del config.stash[_ROUTER]
        try:
            path = config.getoption("fastgrad_gradcheck_json", None)
            if path:
                target = os.path.join(str(config.invocation_params.dir), path)
                worker = getattr(config, "workerinput", {}).get("workerid")
                if worker:  # pytest-xdist: one file per worker process
                    target = f"{target}.{worker}"
                with open(target, "w", encoding="utf-8") as out:
                    json.dump(router.as_dict(), out, indent=2)
        finally:
            router.restore()
    if _STRICT_BEFORE in config.stash:
        before = config.stash[_STRICT_BEFORE]
        del config.stash[_STRICT_BEFORE]
        if before is None:
            os.environ.pop(STRICT_ENV, None)
        else:
            os.environ[STRICT_ENV] = before


def pytest_plugin_registered(plugin: object, manager: pytest.PytestPluginManager) -> None:
    """Route the names a conftest module bound to a checker (``from torch.autograd import ...``).

    Parameters
    ----------
    plugin : object
        The plugin just registered; only modules are looked at.
    manager : pytest.PytestPluginManager
        pytest's plugin manager (the session's config is registered in it as "pytestconfig").
    """
    config = manager.get_plugin("pytestconfig")
    router = config.stash.get(_ROUTER, None) if isinstance(config, pytest.Config) else None
    if router is not None and inspect.ismodule(plugin):
        router.patch_globals([plugin])


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Route the names test modules (and helpers beside them) bound to a checker at import.

    Parameters
    ----------
    session : pytest.Session
        The session (unused).
    config : pytest.Config
        The session's configuration.
    items : list of pytest.Item
        The collected tests; each one's module is looked at.
    """
    router = config.stash.get(_ROUTER, None)
    if router is None:
        return
    modules = {id(m): m for m in (getattr(item, "module", None) for item in items)
               if inspect.ismodule(m)}
    root = os.path.join(os.path.abspath(str(config.rootpath)), "")
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if (path and os.path.abspath(path).startswith(root) and "-packages" not in path
                and name.split(".")[0] != "fastgrad"):
            modules.setdefault(id(module), module)
    router.patch_globals(modules.values())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, Any, None]:
    """Attribute routed checks to the running test (its node id).

    Parameters
    ----------
    item : pytest.Item
        The test about to run.
    nextitem : pytest.Item or None
        The next one (unused).

    Yields
    ------
    None
        Once, while the test runs.
    """
    router = item.config.stash.get(_ROUTER, None)
    if router is not None:
        router.node = item.nodeid
    try:
        yield
    finally:
        if router is not None:
            router.node = ""


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Print the routed checks: one line with ``replace``, a comparison section with ``compare``.

    Parameters
    ----------
    terminalreporter : _pytest.terminal.TerminalReporter
        pytest's terminal reporter.
    exitstatus : int
        The session's exit status (unused).
    config : pytest.Config
        The session's configuration.
    """
    router = config.stash.get(_ROUTER, None)
    if router is None:
        return
    lines = router.summary_lines()
    if router.mode == "compare":
        terminalreporter.write_sep("=", "fastgrad gradcheck comparison")
    for line in lines:
        terminalreporter.write_line(line)


_ROUTER: pytest.StashKey[_Router] = pytest.StashKey()
_STRICT_BEFORE: pytest.StashKey[str | None] = pytest.StashKey()


def _plugin_modules(config: pytest.Config) -> list:
    return [p for p in config.pluginmanager.get_plugins() if inspect.ismodule(p)]


# ---------------------------------------------------------------------------------------------
# routing the frameworks' checkers to fastgrad

# (module that owns the checker, its attribute, the checker's name)
_TORCH_TARGETS = (
    ("torch.autograd", "gradcheck", "gradcheck"),
    ("torch.autograd", "gradgradcheck", "gradgradcheck"),
    ("torch.autograd.gradcheck", "gradcheck", "gradcheck"),
    ("torch.autograd.gradcheck", "gradgradcheck", "gradgradcheck"),
)
_JAX_TARGETS = (
    ("jax.test_util", "check_grads", "check_grads"),
    ("jax._src.public_test_util", "check_grads", "check_grads"),
)
_FASTGRAD = {"gradcheck": "fastgrad.torch", "gradgradcheck": "fastgrad.torch",
             "check_grads": "fastgrad.jax"}


def _text(value: object) -> str:
    """``str(value)``, or a placeholder when its ``__str__`` raises."""
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _cut(text: str, lines: int = MESSAGE_LINES) -> str:
    kept = text.splitlines()
    if len(kept) <= lines:
        return text
    return "\n".join(kept[:lines] + [f"... ({len(kept) - lines} more lines)"])


def _failure_classes() -> tuple[type, ...]:
    """What counts as a failed check (not an error): torch's, fastgrad's and jax's exceptions."""
    classes: list[type] = [AssertionError]  # jax; fastgrad's GradientCheckError is one too
    torch_gradcheck = sys.modules.get("torch.autograd.gradcheck")
    torch_error = getattr(torch_gradcheck, "GradcheckError", None)
    if isinstance(torch_error, type):
        classes.append(torch_error)
    return tuple(classes)


@dataclass
class _Outcome:
    """One checker's run of a call: its verdict, time, and what it returned or raised."""

    verdict: str  # pass | pass with warning | fail | error: <ExcType>: <first line>
    seconds: float
    result: Any = None
    error: BaseException | None = None
    warnings: tuple[str, ...] = ()  # first lines of fastgrad's GradcheckWarnings
    caught: tuple = ()  # every warning caught (warnings.WarningMessage), to re-emit

    @property
    def kind(self) -> str:
        """pass, fail or error: what two checkers must share to agree."""
        return self.verdict.split(":")[0].split(" ")[0]

    def message(self) -> str:
        if self.error is not None:
            return _cut(_text(self.error))
        if self.verdict == "fail":
            return "returned False"
        return "\n".join(self.warnings) if self.warnings else "passed"

    def as_dict(self) -> dict:
        return {"verdict": self.verdict, "seconds": self.seconds,
                "warnings": list(self.warnings)}


def _run(checker: Callable, args: tuple, kwargs: dict, *, catch: bool) -> _Outcome:
    """Call a checker, timed; its exception is kept in the outcome, never raised."""
    caught: list = []
    start = time.perf_counter()
    try:
        if catch:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = checker(*args, **kwargs)
        else:
            result = checker(*args, **kwargs)
    except Exception as error:
        seconds = time.perf_counter() - start
        if isinstance(error, _failure_classes()):
            verdict = "fail"
        else:
            verdict = f"error: {type(error).__name__}: {_first_line(_text(error))}"
        return _Outcome(verdict, seconds, error=error, caught=tuple(caught))
    seconds = time.perf_counter() - start
    # imported lazily, and it may not exist yet in an older fastgrad
    warning_class = getattr(sys.modules.get("fastgrad.errors"), "GradcheckWarning", None)
    ours = tuple(_first_line(_text(w.message)) for w in caught
                 if warning_class is not None and issubclass(w.category, warning_class))
    if result is False:
        verdict = "fail"
    else:
        verdict = "pass with warning" if ours else "pass"
    return _Outcome(verdict, seconds, result=result, warnings=ours, caught=tuple(caught))


class _Router:
    """The patched checkers of one session, and the record of every call routed through them.

    Parameters
    ----------
    mode : str
        "replace" (fastgrad's drop-in runs instead of the original) or "compare" (both run,
        the original's outcome is the call's).
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.node = ""  # the running test's node id ("" outside tests)
        self.calls: list[dict] = []
        self.routed: dict[int, Callable] = {}  # id(original) -> its replacement
        self.originals: dict[int, Callable] = {}  # id(original) -> original (kept alive)
        self.patches: list[tuple[Any, str, Callable, Callable]] = []  # owner, name, old, new
        self._local = threading.local()  # depth of routed calls on this thread
        self.closed = False  # restored: the replacements call the originals, unrecorded

    # -- patching --------------------------------------------------------------------------

    def patch_frameworks(self) -> None:
        """Patch torch's and jax's checkers, importing only the frameworks that are installed."""
        for top, targets in (("torch", _TORCH_TARGETS), ("jax", _JAX_TARGETS)):
            if top not in sys.modules and importlib.util.find_spec(top) is None:
                continue
            for module_name, attribute, checker in targets:
                try:
                    importlib.import_module(module_name)
                except Exception:  # a broken install: leave that framework alone
                    continue
                # sys.modules: torch.autograd.gradcheck the attribute is the function
                owner = sys.modules[module_name]
                original = getattr(owner, attribute, None)
                if callable(original):
                    self._patch(owner, attribute, self._replacement(original, checker))

    def patch_globals(self, modules) -> None:
        """Replace, in each module's globals, every value that is an original checker."""
        for module in modules:
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                if id(value) in self.originals and self.originals[id(value)] is value:
                    self._patch(module, name, self.routed[id(value)])

    def _patch(self, owner: Any, name: str, new: Callable) -> None:
        old = getattr(owner, name)
        setattr(owner, name, new)
        self.patches.append((owner, name, old, new))

    def restore(self) -> None:
        """Put every original back (where the replacement is still in place), last patch first.

        Modules imported while the checkers were routed bound the replacements themselves
        (``from torch.autograd import gradcheck``): every module's globals are swept too.
        """
        self.closed = True  # a replacement still referenced somewhere calls its original
        originals = {id(new): new.__fastgrad_original__ for new in self.routed.values()}
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                if id(value) in originals and self.routed.get(
                        id(originals[id(value)])) is value:
                    namespace[name] = originals[id(value)]
        while self.patches:
            owner, name, old, new = self.patches.pop()
            if getattr(owner, name, None) is new:
                setattr(owner, name, old)

    def _replacement(self, original: Callable, checker: str) -> Callable:
        if id(original) in self.routed:
            return self.routed[id(original)]

        @functools.wraps(original)
        def routed(*args, **kwargs):
            caller = sys._getframe(1)  # where fastgrad's warnings are shown
            return self.call(checker, original, args, kwargs,
                             where=(caller.f_code.co_filename, caller.f_lineno))

        routed.__fastgrad_original__ = original  # type: ignore[attr-defined]
        self.routed[id(original)] = routed
        self.originals[id(original)] = original
        return routed

    # -- calls -----------------------------------------------------------------------------

    def call(self, checker: str, original: Callable, args: tuple, kwargs: dict,
             where: tuple[str, int] = ("", 0)) -> Any:
        """Run one routed call as the mode says, and record it.

        Parameters
        ----------
        checker : str
            "gradcheck", "gradgradcheck" or "check_grads".
        original : callable
            The framework's own checker.
        args : tuple
            The call's positional arguments.
        kwargs : dict
            The call's keyword arguments.
        where : tuple of (str, int)
            The caller's file and line: fastgrad's warnings, re-emitted in replace mode, point
            there rather than into the plugin.

        Returns
        -------
        object
            What the checker whose outcome counts returned.

        Raises
        ------
        Exception
            What that checker raised.
        """
        depth = getattr(self._local, "depth", 0)
        if depth or self.closed:  # a checker calling a checker, or after the session
            return original(*args, **kwargs)
        self._local.depth = depth + 1
        try:
            return self._call(checker, original, args, kwargs, where)
        finally:
            self._local.depth = depth

    def _call(self, checker: str, original: Callable, args: tuple, kwargs: dict,
              where: tuple[str, int]) -> Any:
        record: dict[str, Any] = {"node": self.node, "checker": checker,
                                  "fast_mode": kwargs.get("fast_mode"), "fallback": None,
                                  "original": None, "fastgrad": None, "agree": None}
        self.calls.append(record)
        fastgrad_checker, reason = _fastgrad_checker(checker, args, kwargs)
        if fastgrad_checker is None:
            record["fallback"] = f"fallback: {reason}"
        if self.mode == "replace" and fastgrad_checker is not None:
            outcome = _run(fastgrad_checker, args, kwargs, catch=True)
            record["fastgrad"] = outcome.as_dict()
            for caught in outcome.caught:  # let pytest (and -W) see them
                filename, lineno = caught.filename, caught.lineno
                if filename == _run.__code__.co_filename and where[0]:
                    filename, lineno = where  # fastgrad's stacklevel pointed at the plugin
                warnings.warn_explicit(caught.message, caught.category, filename, lineno,
                                       source=caught.source)
            return _outcome_of(outcome)
        reference = _run(original, args, kwargs, catch=False)
        record["original"] = reference.as_dict()
        if fastgrad_checker is not None:  # compare
            with _random_states_kept():  # the suite goes on as if fastgrad had not run
                ours = _run(fastgrad_checker, args, kwargs, catch=True)
            record["fastgrad"] = ours.as_dict()
            record["agree"] = ours.kind == reference.kind
            if not record["agree"]:
                record["original"]["message"] = reference.message()
                record["fastgrad"]["message"] = ours.message()
        return _outcome_of(reference)

    # -- the record ------------------------------------------------------------------------

    def summary(self) -> dict:
        """Counts and times per checker, and the disagreements (compare mode)."""
        out: dict[str, Any] = {"mode": self.mode, "calls": len(self.calls),
                               "fallbacks": sum(1 for c in self.calls if c["fallback"])}
        for side in ("original", "fastgrad"):
            runs = [c[side] for c in self.calls if c[side] is not None]
            seconds = [r["seconds"] for r in runs]
            verdicts = [r["verdict"] for r in runs]
            out[side] = {
                "runs": len(runs),
                "passed": sum(v.startswith("pass") for v in verdicts),
                "passed_with_warning": sum(v == "pass with warning" for v in verdicts),
                "failed": sum(v == "fail" for v in verdicts),
                "errors": sum(v.startswith("error") for v in verdicts),
                "total_seconds": sum(seconds),
                "median_seconds": statistics.median(seconds) if seconds else None,
            }
        compared = [c for c in self.calls if c["agree"] is not None]
        original_time = sum(c["original"]["seconds"] for c in compared)
        fastgrad_time = sum(c["fastgrad"]["seconds"] for c in compared)
        out["compared"] = len(compared)
        out["ratio_fastgrad_to_original"] = (fastgrad_time / original_time
                                             if compared and original_time > 0 else None)
        out["disagreements"] = [{"node": c["node"], "checker": c["checker"],
                                 "original": c["original"]["verdict"],
                                 "fastgrad": c["fastgrad"]["verdict"]}
                                for c in compared if not c["agree"]]
        return out

    def as_dict(self) -> dict:
        """``{"calls": [one dict per call], "summary": summary()}``, JSON-ready."""
        return {"calls": self.calls, "summary": self.summary()}

    def summary_lines(self) -> list[str]:
        """The terminal summary: one line in replace mode, a section in compare mode."""
        summary = self.summary()
        ours = summary["fastgrad"]
        if self.mode == "replace":
            return [f"fastgrad gradcheck: {summary['calls']} calls routed to fastgrad "
                    f"({summary['fallbacks']} fallbacks to the original): "
                    f"{_counts(ours)}; {_times(ours)}"]
        theirs = summary["original"]
        lines = [f"{summary['calls']} calls, {summary['compared']} compared, "
                 f"{summary['fallbacks']} fallbacks to the original checker only",
                 f"original: {_counts(theirs)}; {_times(theirs)}",
                 f"fastgrad: {_counts(ours)}; {_times(ours)}"]
        ratio = summary["ratio_fastgrad_to_original"]
        if ratio is not None:
            lines.append(f"time fastgrad / original: {ratio:.2f}")
        lines.append(f"disagreements: {len(summary['disagreements'])}")
        for call in self.calls:
            if call["agree"] is False:
                lines.append(f"  {call['node'] or '(outside tests)'}: {call['checker']}: "
                             f"original {call['original']['verdict']}, "
                             f"fastgrad {call['fastgrad']['verdict']}")
                for side in ("fastgrad", "original"):
                    lines.append(f"    {side}:")
                    lines += [f"      {line}" for line in call[side]["message"].splitlines()]
        for call in self.calls:
            if call["fallback"]:
                lines.append(f"  {call['node'] or '(outside tests)'}: {call['checker']}: "
                             f"{call['fallback']}")
        return lines


def _counts(side: dict) -> str:
    warned = side["passed_with_warning"]
    return (f"{side['runs']} runs, {side['passed']} passed" + (f" ({warned} with warning)" if warned else "")
            + f", {side['failed']} failed, {side['errors']} errors")


def _times(side: dict) -> str:
    if not side["runs"]:
        return "no runs"
    return f"{side['total_seconds']:.3f} s in total, median {side['median_seconds']:.4f} s"


@contextlib.contextmanager
def _random_states_kept() -> Generator[None, None, None]:
    """Restore the global random generators (Python's, numpy's, torch's CPU one) on exit."""
    numpy = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    python_state = random.getstate()
    numpy_state = numpy.random.get_state() if numpy is not None else None
    torch_state = torch.get_rng_state() if hasattr(torch, "get_rng_state") else None
    try:
        yield
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)
        if torch_state is not None:
            torch.set_rng_state(torch_state)


def _outcome_of(outcome: _Outcome) -> Any:
    if outcome.error is not None:
        raise outcome.error
    return outcome.result


def _fastgrad_checker(checker: str, args: tuple, kwargs: dict) -> tuple[Callable | None, str]:
    """fastgrad's drop-in for ``checker`` if it accepts this call, else (None, why not)."""
    try:
        replacement = getattr(importlib.import_module(_FASTGRAD[checker]), checker)
    except Exception as error:  # fastgrad's drop-in cannot be imported here
        return None, f"fastgrad unavailable: {type(error).__name__}: {_first_line(str(error))}"
    try:
        inspect.signature(replacement).bind(*args, **kwargs)
    except TypeError as error:
        return None, str(error)
    return replacement, ""


# ---------------------------------------------------------------------------------------------
# rendering a failed check


def _gradient_check_error(value: BaseException) -> Any:
    fastgrad = sys.modules.get("fastgrad")  # not imported: the exception cannot be ours
    error_class = getattr(fastgrad, "GradientCheckError", None)
    if error_class is not None and isinstance(value, error_class):
        return value
    return None


@dataclass
class _Crash:
    """What pytest's short summary (``-ra``) and JUnit XML read from a failure."""

    path: str
    lineno: int
    message: str


class GradientCheckFailure:
    """The failure representation (``report.longrepr``) of a test that failed a gradient check.

    Parameters
    ----------
    path : str
        The test file, relative to pytest's root directory.
    lineno : int
        The 1-based line of the statement that ran the check.
    statement : str
        That statement's source ("" when the source is not available).
    summary : str
        One line naming the failing segments, for ``-ra`` and JUnit XML.
    table : str
        The report table (``str(report)``).
    """

    def __init__(self, path: str, lineno: int, statement: str, summary: str, table: str):
        self.reprcrash = _Crash(path, lineno, summary)
        self.statement = statement
        self.table = table

    def toterminal(self, tw: Any) -> None:
        """Write the statement, the table and the location line to pytest's terminal writer.

        Parameters
        ----------
        tw : _pytest._io.TerminalWriter
            pytest's terminal writer (its ``line(text, red=..., bold=...)`` is used).
        """
        if self.statement:
            tw.line(f"    {self.statement}")
        tw.line("")
        for line in self.table.splitlines():
            headline = line.lstrip()  # fastgrad check / Jacobian check / audit FAILED: ...
            tw.line(line, red=headline.startswith("fastgrad ") and " FAILED" in headline)
        tw.line("")
        crash = self.reprcrash
        tw.line(f"{crash.path}:{crash.lineno}: {crash.message}", red=True, bold=True)

    def __str__(self) -> str:
        head = f"    {self.statement}\n\n" if self.statement else ""
        crash = self.reprcrash
        return f"{head}{self.table}\n\n{crash.path}:{crash.lineno}: {crash.message}"


def _summary(report: Any, error: BaseException | None = None) -> str:
    """One line naming what failed, for ``-ra`` and JUnit XML, from any report type.

    ``Report`` and ``JacobianReport`` rows count failed coordinates (``'b1' (3 of 16 checked
    failed)``); an ``AuditReport``'s rows count wrong coordinates (``'b1' (2 of 16 wrong,
    localized)``); without a report (an error raised before one existed) or with another
    object, the error's first line.
    """
    segments = getattr(report, "segments", None) if report is not None else None
    if not isinstance(segments, dict):
        return _first_line(str(error)) if error is not None else "gradient check failed"
    failed = [s for s in segments.values() if not getattr(s, "passed", True)]
    if getattr(report, "status", "failed") == "inconclusive":
        # nothing failed: the noise of f (or the budget) left segments unjudged
        return "gradient check inconclusive in " + ", ".join(
            _segment_summary(s, "inconclusive") for s in failed)
    if not failed:
        return "gradient check failed"
    return "gradient check failed in " + ", ".join(
        _segment_summary(s, "failed") for s in failed)


def _segment_summary(segment: Any, outcome: str) -> str:
    """``'b1' (3 of 16 checked failed)`` for a check's row, ``'b1' (2 of 16 wrong,
    localized)`` for an audit's (a ``SegmentAudit``: suspects and blocks, no counts checked)."""
    name = getattr(segment, "name", "?")
    if hasattr(segment, "checked"):
        count = getattr(segment, outcome, "?")
        return f"{name!r} ({count} of {segment.checked} checked {outcome})"
    wrong = (getattr(segment, "suspects", 0) or 0) + (getattr(segment, "wrong_in_blocks", 0)
                                                      or 0)
    status = getattr(segment, "status", outcome)
    if wrong:
        return f"{name!r} ({wrong} of {getattr(segment, 'size', '?')} wrong, {status})"
    return f"{name!r} ({status})"


def _test_frame(item: pytest.Item, excinfo: pytest.ExceptionInfo) -> tuple[str, int, str]:
    """The innermost traceback entry in the test's own file: the line that ran the check."""
    entries = list(excinfo.traceback)
    item_path = os.path.abspath(str(getattr(item, "path", "")))
    chosen = None
    for entry in entries:
        if os.path.abspath(str(entry.path)) == item_path:
            chosen = entry
    if chosen is None:
        chosen = next((e for e in reversed(entries) if "fastgrad" not in str(e.path)), entries[-1])
    try:
        statement = str(chosen.statement).strip()
    except Exception:  # source not available
        statement = ""
    try:
        path = os.path.relpath(str(chosen.path), str(item.config.rootpath))
    except ValueError:  # another drive on Windows
        path = str(chosen.path)
    return path, chosen.lineno + 1, statement


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, None]:
    """Replace the traceback of a failed gradient check by its report table.

    Parameters
    ----------
    item : pytest.Item
        The test.
    call : pytest.CallInfo
        The phase's outcome; only a ``fastgrad.GradientCheckError`` in a failing phase is
        rewritten, and nothing is with ``--fastgrad-traceback``.

    Yields
    ------
    None
        Once, while pytest builds the report, whose ``longrepr`` becomes a
        ``GradientCheckFailure``.
    """
    outcome = yield
    try:
        _rewrite(item, call, outcome.get_result())
    except Exception:  # never break the run: what cannot be rendered keeps pytest's traceback
        return


def _rewrite(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport) -> None:
    """Set ``report.longrepr`` to the report table when the phase failed a gradient check."""
    excinfo = call.excinfo
    if excinfo is None or not report.failed or item.config.getoption("fastgrad_traceback"):
        return
    error = _gradient_check_error(excinfo.value)
    if error is not None:
        # built in full before it is assigned: a failure leaves the longrepr untouched
        report.longrepr = _failure(item, excinfo, error)


def _failure(item: pytest.Item, excinfo: pytest.ExceptionInfo,
             error: BaseException) -> GradientCheckFailure:
    check_report = getattr(error, "report", None)
    message = str(error)
    if check_report is None:
        table = message
    else:
        # the drop-ins' message is a sentence, then the table: keep both
        table = str(check_report)
        if table in message:
            table = message
    path, lineno, statement = _test_frame(item, excinfo)
    return GradientCheckFailure(path, lineno, statement, _summary(check_report, error), table)
