"""Routing the frameworks' gradient checkers to fastgrad (``--fastgrad-gradcheck``): torch's
``gradcheck``/``gradgradcheck`` and jax's ``check_grads`` are patched where they live and where
modules bound them, each call runs as the mode says (fastgrad's drop-in instead of the original,
or both) and is recorded in a CallLog; everything is restored at the end of the session."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import itertools
import random
import sys
import threading
import warnings
from collections.abc import Callable, Generator
from typing import Any

from ..errors import InvalidValue
from .compare import CallLog, run_checker
from .render import first_line

__all__ = ["ORDERS", "Router"]

# compare mode's orders of the two checkers on a call (Router's ``order``)
ORDERS = ("original-first", "alternate", "fastgrad-first")

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


class Router:
    """The patched checkers of one session, and the record of every call routed through them.

    Parameters
    ----------
    mode : str
        "replace" (fastgrad's drop-in runs instead of the original) or "compare" (both run,
        the original's outcome is the call's).
    order : str
        Compare mode: "original-first" (default: the original checker runs first on every
        call, so it sees exactly what it would see without fastgrad), "alternate"
        (fastgrad's runs first on every second compared call, so the costs of a first use, an
        op's first backward or a lazy import, fall on both checkers alike) or "fastgrad-first"
        (on every call: a second run in that order beside one in "original-first" gives each
        checker every call's first and second place once).

    Raises
    ------
    InvalidValue
        When ``order`` is not one of those.
    """

    def __init__(self, mode: str, order: str = "original-first"):
        if order not in ORDERS:
            raise InvalidValue(f"order: expected one of {', '.join(ORDERS)}, got {order!r}")
        self.mode, self.order = mode, order
        self.node = ""  # the running test's node id ("" outside tests)
        self.log = CallLog(mode, order)  # every routed call, for the summary and the JSON
        # compare mode: numbers the calls both checkers run (next() on a count is atomic in
        # CPython, so calls routed from several threads still alternate)
        self._compared = itertools.count(1)
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
                                  "original": None, "fastgrad": None, "agree": None,
                                  "fastgrad_first": None}
        self.log.calls.append(record)
        fastgrad_checker, reason = _fastgrad_checker(checker, args, kwargs)
        if fastgrad_checker is None:
            record["fallback"] = f"fallback: {reason}"
        if self.mode == "replace" and fastgrad_checker is not None:
            outcome = run_checker(fastgrad_checker, args, kwargs, catch=True)
            record["fastgrad"] = outcome.as_dict()
            for caught in outcome.caught:  # let pytest (and -W) see them
                filename, lineno = caught.filename, caught.lineno
                if filename == run_checker.__code__.co_filename and where[0]:
                    filename, lineno = where  # fastgrad's stacklevel pointed at the plugin
                warnings.warn_explicit(caught.message, caught.category, filename, lineno,
                                       source=caught.source)
            return outcome.returned()
        ours = None
        if fastgrad_checker is not None and self.mode == "compare":
            number = next(self._compared)
            record["fastgrad_first"] = self.order == "fastgrad-first" or (
                self.order == "alternate" and number % 2 == 0)
            if record["fastgrad_first"]:
                with _random_states_kept():  # the original draws what it would draw alone
                    ours = run_checker(fastgrad_checker, args, kwargs, catch=True)
        reference = run_checker(original, args, kwargs, catch=False)
        record["original"] = reference.as_dict()
        if fastgrad_checker is not None:  # compare
            if ours is None:
                with _random_states_kept():  # the suite goes on as if fastgrad had not run
                    ours = run_checker(fastgrad_checker, args, kwargs, catch=True)
            record["fastgrad"] = ours.as_dict()
            record["agree"] = ours.kind == reference.kind
            if not record["agree"]:
                record["original"]["message"] = reference.message()
                record["fastgrad"]["message"] = ours.message()
        return reference.returned()


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


def _fastgrad_checker(checker: str, args: tuple, kwargs: dict) -> tuple[Callable | None, str]:
    """fastgrad's drop-in for ``checker`` if it accepts this call, else (None, why not)."""
    try:
        replacement = getattr(importlib.import_module(_FASTGRAD[checker]), checker)
    except Exception as error:  # fastgrad's drop-in cannot be imported here
        return None, f"fastgrad unavailable: {type(error).__name__}: {first_line(str(error))}"
    try:
        inspect.signature(replacement).bind(*args, **kwargs)
    except TypeError as error:
        return None, str(error)
    return replacement, ""
