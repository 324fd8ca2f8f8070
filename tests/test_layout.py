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


# each layer may import only the layers below it (segments -> sampling -> steps -> engine ->
# judge -> results -> checks -> adapters / cli / monitor)
LAYERS = {
    "fastgrad.errors": 0, "fastgrad.arguments": 0, "fastgrad.progress": 0,
    "fastgrad._numba_cache": 0, "fastgrad.tuning": 0, "fastgrad.segments": 1, "fastgrad.sampling": 2,
    "fastgrad.steps": 2, "fastgrad.engine": 3, "fastgrad.judge": 4, "fastgrad.results": 5,
    "fastgrad.checks": 6,
}


def _layer(module):
    for prefix, level in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if module == prefix or module.startswith(prefix + "."):
            return level
    return None


def test_data_flows_one_way_through_the_layers():
    upward = []
    for name, path in _modules():
        own = _layer(name)
        if own is None:
            continue  # adapters, cli, monitor, examples: on top of everything
        for module, _ in _imports(name, path):
            other = _layer(module)
            if other is not None and other > own:
                upward.append(f"{name} (layer {own}) imports {module} (layer {other})")
    assert upward == []


def _engine_imports() -> dict[str, set[str]]:
    """Module of fastgrad.engine -> the modules of fastgrad.engine it imports, every import
    counted (those under ``if TYPE_CHECKING:`` too: a cycle hidden there is still a cycle)."""
    engine = {name: path for name, path in _modules() if name.startswith("fastgrad.engine.")}
    graph: dict[str, set[str]] = {name: set() for name in engine}
    for name, path in engine.items():
        for module, names in _imports(name, path):
            # `from . import planner` imports the module fastgrad.engine.planner
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in engine]
            graph[name].update(targets or ([module] if module in engine else []))
    return graph


def test_no_import_cycle_inside_the_engine():
    graph = _engine_imports()
    assert "fastgrad.engine.planner" in graph["fastgrad.engine.evaluator"]  # the walk sees it
    cycles = []

    def visit(name, path):
        for other in sorted(graph[name]):
            if other in path:
                cycles.append(" -> ".join(path[path.index(other):] + [other]))
            elif other not in done:
                visit(other, path + [other])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert cycles == []
