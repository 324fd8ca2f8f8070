"""The shape of the package: no module imports another module's private names, no public
function shadows a module of the same name, and data flows one way through the layers."""

import ast
import importlib
import pkgutil
from pathlib import Path

import fastgrad

PACKAGE = Path(fastgrad.__file__).resolve().parent


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(name, path):
    """(imported module, imported names) of every `from X import a, b` in the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, [alias.name for alias in node.names]


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for name, path in _modules():
        for module, names in _imports(name, path):
            if not module.startswith("fastgrad"):
                continue
            for imported in names:
                # a private module of the package may be imported (it is the module's own
                # business what it exposes); a private name from inside a module may not
                if imported.startswith("_") and not (PACKAGE.parent / module.replace(".", "/")
                                                     / f"{imported}.py").exists() \
                        and not (PACKAGE.parent / module.replace(".", "/") / imported).is_dir():
                    offences.append(f"{name} imports {module}.{imported}")
    assert offences == []


def test_no_public_function_shadows_a_module():
    submodules = {m.name for m in pkgutil.iter_modules(fastgrad.__path__)}
    shadowed = [name for name in fastgrad.__all__ if name in submodules]
    assert shadowed == []
    # the public functions are reachable by their dotted module paths, for patching
    for dotted in ("fastgrad.checks.coordinates", "fastgrad.checks.audit",
                   "fastgrad.engine.evaluator", "fastgrad.judge.rechecks",
                   "fastgrad.results.report"):
        assert importlib.import_module(dotted).__name__ == dotted


# Each layer may import only the layers below it. Every module of the package has a layer (the
# root ``fastgrad/__init__.py``, the public facade that loads names lazily, is above them all);
# docs/design/layout.md lists the tree in this order.
LAYERS = {
    # 0: the vocabulary every layer shares
    "fastgrad.errors": 0, "fastgrad.arguments": 0, "fastgrad.progress": 0,
    "fastgrad.tuning": 0, "fastgrad._numba_cache": 0,
    # 1-2: the flat vector, its sample and its steps
    "fastgrad.segments": 1, "fastgrad.sampling": 2, "fastgrad.steps": 2,
    # 3-6: the core: evaluate, decide, report, drive
    "fastgrad.engine": 3, "fastgrad.judge": 4, "fastgrad.results": 5, "fastgrad.checks": 6,
    # 7: the adapters (numpy, torch, jax), the shipped example problems, the monitor
    "fastgrad._adapt": 7, "fastgrad.numpy_models": 7, "fastgrad.torch": 7, "fastgrad.jax": 7,
    "fastgrad.examples": 7, "fastgrad.monitor": 7,
    # 8-9: what users run: the test-suite assertions and pytest plugin, the command line
    "fastgrad.testing": 8, "fastgrad.cli": 9,
}
ADAPTERS = ("fastgrad.torch", "fastgrad.jax", "fastgrad.numpy_models", "fastgrad._adapt")


def _layer(module):
    for prefix, level in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


def test_every_module_has_a_layer():
    assert [name for name, _ in _modules() if name != "fastgrad" and _layer(name) is None] == []


def test_data_flows_one_way_through_the_layers():
    upward = []
    for name, path in _modules():
        own = _layer(name)
        if own is None:
            continue  # the root: the public names, loaded lazily
        for module, _ in _imports(name, path):
            other = _layer(module)
            if other is not None and other > own:
                upward.append(f"{name} (layer {own}) imports {module} (layer {other})")
    assert upward == []


def _within(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_frameworks_never_import_each_other_and_adapters_use_the_public_core():
    offences = []
    for name, path in _modules():
        for module, _ in _imports(name, path):
            if _within("fastgrad.torch", name) and _within("fastgrad.jax", module) or \
                    _within("fastgrad.jax", name) and _within("fastgrad.torch", module):
                offences.append(f"{name} imports {module}")
            # the adapters stand on check/audit/the Jacobian core, never on the engine or judge
            if any(_within(a, name) for a in ADAPTERS) and \
                    any(_within(core, module) for core in ("fastgrad.engine", "fastgrad.judge")):
                offences.append(f"{name} imports {module}")
    assert offences == []


def _graph(prefix: str = "fastgrad.") -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, every import counted (those inside
    functions and under ``if TYPE_CHECKING:`` too: a cycle hidden there is still a cycle)."""
    modules = {name: path for name, path in _modules() if name.startswith(prefix)}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(name, path):
            # `from . import planner` imports the module fastgrad.engine.planner
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            graph[name].update(targets or ([module] if module in modules else []))
        graph[name].discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles: list[str] = []
    done: set[str] = set()

    def visit(name, path):
        for other in sorted(graph[name]):
            if other in path:
                cycles.append(" -> ".join(path[path.index(other):] + [other]))
            elif other not in done:
                visit(other, path + [other])
        done.add(name)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    return cycles


def test_no_import_cycle_anywhere_in_the_package():
    graph = _graph()  # every module but the root (its lazy names point down only)
    assert "fastgrad.engine.planner" in graph["fastgrad.engine.evaluator"]  # the walk sees it
    assert _cycles(graph) == []


def test_the_cycle_search_finds_a_planted_cycle():
    graph = _graph()
    graph["fastgrad.engine.planner"] = graph["fastgrad.engine.planner"] | {
        "fastgrad.engine.evaluator"}
    assert any("fastgrad.engine.evaluator -> fastgrad.engine.planner" in c
               for c in _cycles(graph))


def _layout_tree() -> list[str]:
    """The paths of docs/design/layout.md's tree, in its order: one line per file or folder,
    ``name  what it holds``, indented two spaces per folder level."""
    page = (PACKAGE.parent / "docs" / "design" / "layout.md").read_text()
    tree = page.split("```text", 1)[1].split("```", 1)[0].strip("\n").splitlines()
    assert tree[0].strip() == "fastgrad/"
    folders, paths = [], []
    for line in tree[1:]:
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        del folders[depth - 1:]
        paths.append("/".join(folders + [name]))
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
    return paths


def test_the_layout_page_lists_every_module_in_layer_order():
    tree = _layout_tree()
    modules = {path.relative_to(PACKAGE).as_posix() for _, path in _modules()}
    files = {p for p in tree if not p.endswith("/")}
    assert sorted(modules - files) == [], "modules missing from docs/design/layout.md"
    assert sorted(files - modules) == [], "docs/design/layout.md lists files that do not exist"
    # the top level reads bottom-up: each entry's layer is at least the one before it
    top = [p for p in tree if p.count("/") == 0 or p.count("/") == 1 and p.endswith("/")]
    dotted = ["fastgrad." + p.rstrip("/").removesuffix(".py") for p in top
              if p != "__init__.py"]
    layers = [_layer(name) for name in dotted]
    assert None not in layers and layers == sorted(layers), list(zip(dotted, layers))
