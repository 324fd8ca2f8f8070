"""pytest plugin: a failing gradient check reads as its report table, not a traceback.

Installed with fastgrad through the ``pytest11`` entry point (``-p fastgrad.testing.plugin``
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
    the original first unless ``--fastgrad-gradcheck-order`` says otherwise, and keeps the
    original's outcome (the suite behaves as before); the terminal summary then lists the
    calls, each checker's verdicts and time, and every disagreement. Frameworks that are not
    installed are left alone; everything is restored at the end of the session.
``--fastgrad-gradcheck-order``
    ``--fastgrad-gradcheck-order=original-first|alternate|fastgrad-first``, with ``compare``:
    which checker runs first on a call. ``original-first`` (the default): the original on
    every call, so it sees exactly what it would see alone (and pays the costs of a first use:
    an op's first backward, a lazy import). ``alternate``: fastgrad's first on every second
    compared call (the random generators are still put back, so the original draws what it
    would draw alone), so those costs fall on both checkers' times alike. ``fastgrad-first``:
    fastgrad's first on every call (a run in this order beside one in ``original-first``
    gives each checker each call's first place once: a TorchScript function's second call,
    which compiles it, lands on each alike). Each call records ``fastgrad_first``.
``--fastgrad-gradcheck-json``
    ``--fastgrad-gradcheck-json PATH``, with ``--fastgrad-gradcheck``: write every call (node
    id, checker, fast_mode, both verdicts and times, a disagreement's messages) and the summary
    to PATH as JSON: ``{"calls": [...], "summary": {...}}``.
``-p no:fastgrad``
    pytest's own switch: do not load the plugin at all.

Only failures whose exception is a ``fastgrad.GradientCheckError`` (what
``fastgrad.assert_gradients`` and the ``fastgrad.testing`` assertions raise) are rewritten; any
other failure, and a passing test, is reported as pytest reports it; rendering never breaks a
run (a report it cannot render keeps pytest's traceback). The plugin does not import fastgrad's
checks (nor numba) at pytest start-up, only the package's light top level (``fastgrad.testing``
loads its assertions on first use): it only looks at exceptions raised after the tests ran a
check; torch and jax are imported at start-up only with ``--fastgrad-gradcheck``, and fastgrad
at the first check it routes.

The hooks are here; what they do is in ``render`` (the failure report), ``routing`` (the
checkers swapped) and ``compare`` (the record of routed calls, its summary and JSON).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Generator
from typing import Any

import pytest

from .render import rewrite
from .routing import ORDERS, Router

STRICT_ENV = "FASTGRAD_STRICT"  # read by the drop-ins at call time (fastgrad.arguments)
MODES = ("replace", "compare")


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
        "--fastgrad-gradcheck-order",
        default="original-first",
        choices=ORDERS,
        help="with --fastgrad-gradcheck=compare: 'original-first' (default) runs the original "
             "checker first on every call; 'alternate' runs fastgrad's first on every second "
             "call, so the costs of a first use (an op's first backward, a lazy import) fall "
             "on both checkers' times alike; 'fastgrad-first' runs fastgrad's first on every "
             "call",
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
    router = Router(mode, config.getoption("fastgrad_gradcheck_order", "original-first"))
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
                    json.dump(router.log.as_dict(), out, indent=2)
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
    lines = router.log.summary_lines()
    if router.mode == "compare":
        terminalreporter.write_sep("=", "fastgrad gradcheck comparison")
    for line in lines:
        terminalreporter.write_line(line)


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
        rewrite(item, call, outcome.get_result())
    except Exception:  # never break the run: what cannot be rendered keeps pytest's traceback
        return


_ROUTER: pytest.StashKey[Router] = pytest.StashKey()
_STRICT_BEFORE: pytest.StashKey[str | None] = pytest.StashKey()


def _plugin_modules(config: pytest.Config) -> list:
    return [p for p in config.pluginmanager.get_plugins() if inspect.ismodule(p)]
