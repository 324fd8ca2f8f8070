"""help() is documentation: every public name carries a numpy-style docstring.

For each name in DOCUMENTED and HELPERS (and, for a class, each public method and property it
defines):

- a docstring;
- a ``Parameters`` section that names every parameter of the signature (``*inputs`` and
  ``**check_options`` too) and nothing else, when there are parameters (a class documents its
  constructor's; a dataclass may name its fields in an ``Attributes`` section instead);
- a ``Returns`` (or ``Yields``) section when the return annotation is not ``None``; a public
  function must have a return annotation;
- for the names in DOCUMENTED (not their methods, not HELPERS): an ``Examples`` section with
  ``>>>`` lines, and for functions a ``Raises`` section.

Every public name (``__all__`` of the modules in PUBLIC_MODULES) is in DOCUMENTED or in
ON_OTHER_BRANCHES, so a new public name cannot go undocumented unnoticed.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import pytest

# The names whose docstrings follow the rules above.
DOCUMENTED = [
    "fastgrad.Segment",
    "fastgrad.SegmentMap",
    "fastgrad.flatten",
    "fastgrad.unflatten",
    "fastgrad.check_layer",
    "fastgrad.check_model",
    "fastgrad.torch.check_module",
    "fastgrad.torch.check_function",
    "fastgrad.jax.check",
    "fastgrad.torch.audit_module",
    "fastgrad.torch.module_problem",
    "fastgrad.jax.audit",
    "fastgrad.jax.pytree_problem",
    "fastgrad.jax.check_grads",
    "fastgrad.jax.CheckGradsError",
    "fastgrad.torch.gradcheck",
    "fastgrad.torch.gradgradcheck",
    "fastgrad.torch.GradcheckError",
    "fastgrad.testing.assert_passed",
    "fastgrad.testing.assert_audit",
    "fastgrad.testing.assert_module",
    "fastgrad.testing.assert_function",
    "fastgrad.testing.assert_jax",
    "fastgrad.testing.assert_model",
    "fastgrad.testing.assert_layer",
    "fastgrad.check",
    "fastgrad.assert_gradients",
    "fastgrad.audit",
    "fastgrad.Problem",
    "fastgrad.Tuning",
    "fastgrad.Report",
    "fastgrad.SegmentReport",
    "fastgrad.CoordRecord",
    "fastgrad.AuditReport",
    "fastgrad.GradientCheckError",
    "fastgrad.NondeterminismError",
    "fastgrad.LossError",
    "fastgrad.LossTimeout",
    "fastgrad.GradcheckWarning",
]

# Helpers outside the public API (pytest's hooks, the built-in example problems, the progress
# bar): Parameters and Returns as above, no Raises or Examples required. The plugin's
# user-facing part is its options, checked against its module docstring below.
HELPERS = [
    "fastgrad.testing.plugin.pytest_addoption",
    "fastgrad.testing.plugin.pytest_runtest_makereport",
    "fastgrad.testing.render.GradientCheckFailure",
    "fastgrad.examples.two_layer_data",
    "fastgrad.examples.two_layer_loss",
    "fastgrad.examples.two_layer_grad",
    "fastgrad.examples.two_layer_problem",
    "fastgrad.examples.buggy_two_layer_problem",
    "fastgrad.examples.problems.relu_parts",
    "fastgrad.examples.problems.relu_loss",
    "fastgrad.examples.problems.relu_grad",
    "fastgrad.examples.problems.relu_mask_signature",
    "fastgrad.examples.problems.relu_problem",
    "fastgrad.examples.problems.near_kink_count",
    "fastgrad.examples.problems.svm_loss",
    "fastgrad.examples.problems.svm_grad",
    "fastgrad.examples.problems.svm_problem",
    "fastgrad.examples.problems.pool_forward",
    "fastgrad.examples.problems.pool_loss",
    "fastgrad.examples.problems.pool_grad",
    "fastgrad.examples.problems.pool_problem",
    "fastgrad.examples.problems.logcosh_loss",
    "fastgrad.examples.problems.plant",
    "fastgrad.examples.problems.weighted_logcosh_data",
    "fastgrad.examples.problems.weighted_logcosh",
    "fastgrad.examples.problems.weighted_logcosh_grad",
    "fastgrad.progress.Progress",
]

# Public names whose docstrings are being written on other branches: move a name from here to
# DOCUMENTED once its docstring follows the rules.
ON_OTHER_BRANCHES = [
    "fastgrad.monitor.TrainingMonitor",
    "fastgrad.monitor.Finding",
    "fastgrad.monitor.filter_grid",
    "fastgrad.monitor.filter_smoothness",
    "fastgrad.monitor.filter_smoothness_scores",
]

# the modules whose __all__ is the public API
PUBLIC_MODULES = ["fastgrad", "fastgrad.torch", "fastgrad.jax", "fastgrad.testing", "fastgrad.monitor"]

# optional frameworks: their modules are skipped when the framework is not installed
_NEEDS = {"fastgrad.torch": "torch", "fastgrad.jax": "jax"}


def _module(name: str):
    if name in _NEEDS:
        pytest.importorskip(_NEEDS[name])
    return importlib.import_module(name)


def _resolve(dotted: str):
    module_name, _, attribute = dotted.rpartition(".")
    return getattr(_module(module_name), attribute)


def _sections(doc: str) -> dict[str, str]:
    """numpy-style sections: a title line underlined with dashes -> the text below it."""
    lines = doc.splitlines()
    starts = [i for i in range(len(lines) - 1)
              if lines[i].strip() and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1])]
    sections = {}
    for k, i in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        sections[lines[i].strip()] = "\n".join(lines[i + 2 : end])
    return sections


def _documented_parameters(section: str) -> list[str]:
    """The names of a Parameters section: unindented lines ``name : type`` or ``a, b : type``."""
    names = []
    for line in section.splitlines():
        if not line or line[0].isspace():
            continue
        head = line.split(" : ")[0] if " : " in line else line
        names += [part.strip().lstrip("*") for part in head.split(",")]
    return names


def _members(cls) -> list[tuple[str, object]]:
    """The public methods and properties a class defines itself (inherited ones are not its own)."""
    found = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            found.append((f"{cls.__module__}.{cls.__qualname__}.{name}", value))
    return found


def _problems(where: str, obj, top_level: bool) -> list[str]:
    doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj)
    if not doc or not doc.strip():
        return [f"{where}: no docstring"]
    if isinstance(obj, property):
        return []
    problems = []
    sections = _sections(doc)
    signature = inspect.signature(obj)
    parameters = [p for p in signature.parameters if p not in ("self", "cls")]
    # a dataclass documents its fields (its constructor's parameters) as Attributes
    title = ("Attributes" if dataclasses.is_dataclass(obj) and "Parameters" not in sections
             else "Parameters")
    if parameters:
        if title not in sections:
            problems.append(f"{where}: no Parameters section for {parameters}")
        else:
            documented = _documented_parameters(sections[title])
            missing = [p for p in parameters if p not in documented]
            extra = [p for p in documented if p not in parameters]
            if missing:
                problems.append(f"{where}: Parameters does not describe {missing}")
            if extra:
                problems.append(f"{where}: Parameters describes {extra}, not in the signature")
    if not inspect.isclass(obj):
        returns = signature.return_annotation
        if returns is inspect.Signature.empty:
            problems.append(f"{where}: no return annotation")
        elif returns not in (None, "None") and not {"Returns", "Yields"} & set(sections):
            problems.append(f"{where}: returns {returns} but has no Returns section")
        if top_level and "Raises" not in sections:
            problems.append(f"{where}: no Raises section")
    if top_level and ">>>" not in sections.get("Examples", ""):
        problems.append(f"{where}: no Examples section with >>> lines")
    return problems


@pytest.mark.parametrize("dotted", DOCUMENTED + HELPERS)
def test_numpy_style_docstring(dotted):
    obj = _resolve(dotted)
    problems = _problems(dotted, obj, top_level=dotted not in HELPERS)
    if inspect.isclass(obj):
        for where, member in _members(obj):
            problems += _problems(where, member, top_level=False)
    assert not problems, "\n".join(problems)


def test_every_public_name_is_listed():
    listed = {id(_resolve(name)) for name in DOCUMENTED + ON_OTHER_BRANCHES}
    unlisted = []
    for module_name in PUBLIC_MODULES:
        module = _module(module_name)
        for name in module.__all__:
            if id(getattr(module, name)) not in listed:
                unlisted.append(f"{module_name}.{name}")
    assert not unlisted, f"public names in neither DOCUMENTED nor ON_OTHER_BRANCHES: {unlisted}"


def test_plugin_docstring_names_every_option_it_adds():
    from fastgrad.testing import plugin

    added = []

    class Group:
        def addoption(self, *names, **attributes):
            assert attributes.get("help"), f"{names}: no help text for pytest --help"
            added.extend(names)

    class Parser:
        def getgroup(self, name, description=""):
            return Group()

    plugin.pytest_addoption(Parser())
    assert added
    for name in [*added, "-p no:fastgrad"]:
        assert f"``{name}``" in plugin.__doc__, name


def test_the_checker_finds_an_undocumented_parameter():
    def described(a: int, *rest: int, **options: int) -> int:
        """Add.

        Parameters
        ----------
        a : int
            The first.
        *rest : int
            The others.

        Returns
        -------
        int
        """
        return a

    assert _problems("described", described, top_level=False) == [
        "described: Parameters does not describe ['options']"]
