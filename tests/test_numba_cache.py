"""Numba's cache of fastgrad's kernels lives in a per-user folder, never in the installed package;
the user's own cache=True functions are left where Numba puts them."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastgrad
from fastgrad import _numba_cache

PACKAGE = Path(fastgrad.__file__).resolve().parent

# a check on the JIT kernel path, then what it learned about the caches, as JSON on the last line
CHECK_SCRIPT = textwrap.dedent("""
    import json, sys
    finders = list(sys.meta_path)
    locators = None
    if sys.argv[1] == "numba-first":
        import numba  # the user imported numba before fastgrad
        from numba.core import caching
        locators = list(caching.CompileResultCacheImpl._locator_classes)
    import numpy as np
    import fastgrad as fg
    installed = {"after_import": sys.meta_path != finders}
    from fastgrad.engine.kernels import centered_losses as _centered_losses
    from user_loss import loss, user_cached

    theta = np.linspace(-1.0, 1.0, 6)
    report = fg.check(loss, theta, 2.0 * theta, samples="all")
    user_cached(theta)
    installed["after_check"] = sys.meta_path != finders
    from numba.core import caching
    after = caching.CompileResultCacheImpl._locator_classes
    print(json.dumps({"path": report.path, "passed": report.passed,
                      "kernel_dir": _centered_losses.stats.cache_path,
                      "kernel_hits": sum(_centered_losses.stats.cache_hits.values()),
                      "user_dir": user_cached.stats.cache_path,
                      "finder_installed": installed,
                      "locators_unchanged": locators is None or after == locators,
                      "locators": [cls.__module__ for cls in after]}))
""")

USER_MODULE = textwrap.dedent("""
    import numpy as np
    from numba import njit

    @njit
    def loss(theta):
        return np.sum(theta * theta)

    @njit(cache=True)
    def user_cached(theta):
        return theta.sum()
""")


def cache_files(folder):
    """{path: mtime} of Numba's index and data files under folder."""
    return {p: p.stat().st_mtime_ns for p in Path(folder).rglob("*") if p.suffix in (".nbi", ".nbc")}


@pytest.fixture
def user_dir(tmp_path):
    folder = tmp_path / "user"
    folder.mkdir()
    (folder / "check_script.py").write_text(CHECK_SCRIPT)
    (folder / "user_loss.py").write_text(USER_MODULE)
    return folder


def run_check(user_dir, env_updates, order="fastgrad-first"):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    # the subprocess imports the fastgrad under test and the user's module
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE.parent), str(user_dir)])
    env.update(env_updates)
    done = subprocess.run([sys.executable, str(user_dir / "check_script.py"), order],
                          capture_output=True, text=True, cwd=user_dir, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    # importing fastgrad and checking installs nothing process-wide: no import hook, and numba's
    # own list of cache locators is numba's alone
    assert found["finder_installed"] == {"after_import": False, "after_check": False}
    assert found["locators_unchanged"]
    assert set(found["locators"]) == {"numba.core.caching"}
    return found


def under(path, folder):
    return Path(path).resolve().is_relative_to(Path(folder).resolve())


def test_kernels_cached_per_user_and_loaded_by_the_next_process(user_dir, tmp_path):
    package_before = cache_files(PACKAGE)
    xdg = tmp_path / "xdg"
    first = run_check(user_dir, {"XDG_CACHE_HOME": str(xdg)})
    assert first["path"] == "jit" and first["passed"]
    assert under(first["kernel_dir"], xdg / "fastgrad" / "numba")
    written = cache_files(xdg)
    assert any(p.suffix == ".nbi" and p.name.startswith("kernels.") for p in written)
    assert cache_files(PACKAGE) == package_before  # nothing written into the package
    # the user's own cache=True function stays where Numba puts it: next to its source
    assert under(first["user_dir"], user_dir) and cache_files(user_dir / "__pycache__")

    second = run_check(user_dir, {"XDG_CACHE_HOME": str(xdg)}, order="numba-first")
    assert second["kernel_dir"] == first["kernel_dir"]
    assert second["kernel_hits"] >= 1  # loaded, not compiled again
    assert cache_files(xdg) == written
    assert cache_files(PACKAGE) == package_before


def test_numba_cache_dir_set_by_the_user_is_honoured(user_dir, tmp_path):
    package_before = cache_files(PACKAGE)
    xdg, numba_dir = tmp_path / "xdg", tmp_path / "numba-cache"
    found = run_check(user_dir, {"XDG_CACHE_HOME": str(xdg), "NUMBA_CACHE_DIR": str(numba_dir)})
    assert under(found["kernel_dir"], numba_dir) and under(found["user_dir"], numba_dir)
    assert any(p.name.startswith("kernels.") for p in cache_files(numba_dir))
    assert not xdg.exists()
    assert cache_files(PACKAGE) == package_before


# Without compiling anything: every cached kernel in fastgrad's sources points to the per-user
# folder (a module added later with @cached_per_user is covered without a change here), and the
# folder is made when a kernel first needs it, not when its module is imported.
PATHS_SCRIPT = textwrap.dedent("""
    import importlib, json, os, sys
    from numba.core.caching import NullCache
    from numba.core.dispatcher import Dispatcher
    modules = [importlib.import_module(name) for name in sys.argv[2:]]
    made_at_import = os.path.exists(sys.argv[1])
    paths = {}
    for module in modules:
        for attr, value in vars(module).items():
            if isinstance(value, Dispatcher) and value.__module__ == module.__name__ \
                and not isinstance(value._cache, NullCache):
                paths[module.__name__ + "." + attr] = value.stats.cache_path
    print(json.dumps({"made_at_import": made_at_import, "paths": paths}))
""")


def _python_files():
    return sorted(PACKAGE.rglob("*.py"))


def modules_with_cached_kernels():
    names = []
    for path in _python_files():
        if "@cached_per_user" in path.read_text():
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts))
    return names


def test_no_kernel_uses_numbas_cache_true():
    """cache=True would put the kernel's cache next to its source, inside the package."""
    offences = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and any(
                    kw.arg == "cache" and isinstance(kw.value, ast.Constant) and kw.value.value
                    for kw in node.keywords):
                offences.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offences == []


@pytest.mark.parametrize("case", ["writable", "unwritable"])
def test_every_cached_kernel_points_outside_the_package(tmp_path, case):
    modules = modules_with_cached_kernels()
    assert {"fastgrad.engine.kernels", "fastgrad.examples.two_layer",
            "fastgrad.examples.problems", "fastgrad.monitor.monitor"} <= set(modules)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = str(PACKAGE.parent)
    if case == "writable":
        env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
        expected = tmp_path / "xdg" / "fastgrad" / "numba"
    else:  # the user cache folder cannot be made (a file is in the way): a private temp folder
        (tmp_path / "not-a-folder").write_text("")
        env["XDG_CACHE_HOME"] = str(tmp_path / "not-a-folder")
        env["TMPDIR"] = str(tmp_path / "tmp")
        (tmp_path / "tmp").mkdir()
        owner = os.getuid() if hasattr(os, "getuid") else None
        expected = tmp_path / "tmp" / f"fastgrad-{owner}" / "numba"
        if owner is None:
            pytest.skip("the private temp folder is keyed by the POSIX uid")
    done = subprocess.run([sys.executable, "-c", PATHS_SCRIPT, str(expected), *modules],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert not found["made_at_import"]
    paths = found["paths"]
    assert len(paths) >= len(modules)
    for name, path in paths.items():
        assert under(path, expected), (name, path)
        assert not under(path, PACKAGE), (name, path)


def test_private_temp_folder_refused_when_others_can_write(tmp_path, monkeypatch):
    if not hasattr(os, "getuid"):
        pytest.skip("POSIX permissions")
    monkeypatch.setattr(_numba_cache.tempfile, "gettempdir", lambda: str(tmp_path))
    root = _numba_cache._private_temp_root()
    assert root == str(tmp_path / f"fastgrad-{os.getuid()}" / "numba")
    os.chmod(tmp_path / f"fastgrad-{os.getuid()}", 0o777)  # cache files are pickles: not shared
    assert _numba_cache._private_temp_root() is None


def test_folder_chosen_at_first_compile_for_that_function_only(tmp_path, monkeypatch):
    from numba.core import caching, config

    monkeypatch.setattr(config, "CACHE_DIR", "")
    monkeypatch.setattr(_numba_cache, "user_cache_root", lambda: str(tmp_path / "user"))
    finders = list(sys.meta_path)
    locators = list(caching.CompileResultCacheImpl._locator_classes)

    @_numba_cache.cached_per_user(nogil=True)
    def total(x):
        return x.sum()

    assert not (tmp_path / "user").exists()  # decorating chooses nothing
    assert total(np.arange(4.0)) == 6.0
    assert under(total.stats.cache_path, tmp_path / "user")
    written = cache_files(tmp_path / "user")
    assert any(p.name.startswith("test_numba_cache.") and p.suffix == ".nbi" for p in written)
    beside_source = cache_files(Path(__file__).parent / "__pycache__")
    assert not [p for p in beside_source if ".total-" in p.name]  # not beside its source
    # nothing process-wide: the import machinery and numba's own locators are as they were
    assert sys.meta_path == finders
    assert caching.CompileResultCacheImpl._locator_classes == locators
