"""Where Numba caches fastgrad's compiled kernels: a per-user cache folder, never the package.

Numba's default for ``@njit(cache=True)`` writes ``*.nbi``/``*.nbc`` files into ``__pycache__``
next to the source, i.e. into the installed package. pip does not know those files: uninstalling
leaves the folder behind, and the empty ``fastgrad/`` that remains shadows a later editable
install (``import fastgrad`` then finds a namespace package without ``Segment``).

So fastgrad registers one more Numba cache locator, first in Numba's list, that claims only source
files inside this package and puts their cache in

1. ``$NUMBA_CACHE_DIR`` (``numba.config.CACHE_DIR``) when the user set it, laid out as Numba
   itself would;
2. otherwise the platform's user cache folder: ``$XDG_CACHE_HOME/fastgrad/numba`` or
   ``~/.cache/fastgrad/numba`` on Linux, ``~/Library/Caches/fastgrad/numba`` on macOS,
   ``%LOCALAPPDATA%\\fastgrad\\Cache\\numba`` on Windows;
3. when that is not writable, a private folder in the temp dir (``fastgrad-<uid>/numba``).

Below the root, Numba's own sub-folder scheme (``<folder>_<sha1 of the source folder>``) keeps
installs apart, and Numba's index keeps each entry tied to the source file's content hash and the
Numba version, so a cache survives reinstalls and never serves stale code. Every other function,
the user's own ``cache=True`` functions included, is left to Numba's own locators.

``import fastgrad`` does not import Numba, so the locator is registered the moment
``numba.core.caching`` is first imported (by fastgrad or anyone), or at once when it already is:
either way before any fastgrad kernel is decorated.
"""

from __future__ import annotations

import getpass
import importlib.abc
import os
import stat
import sys
import tempfile

_CACHING = "numba.core.caching"
_LOCATOR_NAME = "FastgradCacheLocator"
PACKAGE_DIR = os.path.dirname(os.path.realpath(__file__))


def user_cache_root() -> str:
    """The folder fastgrad's kernels are cached in when NUMBA_CACHE_DIR is not set (may not exist yet)."""
    from numba.misc.appdirs import AppDirs  # the same platform rules Numba uses for its own folder

    return os.path.join(AppDirs("fastgrad", appauthor=False).user_cache_dir, "numba")


def _private_temp_root() -> str | None:
    """fastgrad-<uid>/numba in the temp dir, or None when that folder is not this user's alone
    (cache files are pickles: loading one that another user could write would run their code)."""
    owner = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    base = os.path.join(tempfile.gettempdir(), f"fastgrad-{owner}")
    try:
        os.makedirs(base, mode=0o700, exist_ok=True)
        info = os.lstat(base)
    except OSError:
        return None
    if hasattr(os, "getuid") and (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                                  or info.st_mode & 0o022):
        return None
    return os.path.join(base, "numba")


def _cache_roots():
    """Candidate roots, best first."""
    from numba.core import config

    if config.CACHE_DIR:
        yield config.CACHE_DIR
    yield user_cache_root()
    temp_root = _private_temp_root()
    if temp_root is not None:
        yield temp_root


def _in_package(py_file: str) -> bool:
    path = os.path.realpath(py_file)
    try:
        return os.path.commonpath([path, PACKAGE_DIR]) == PACKAGE_DIR
    except ValueError:  # another drive (Windows)
        return False


def _make_locator_class(caching):
    class FastgradCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """Numba cache locator for fastgrad's own kernels (see fastgrad._numba_cache)."""

        def __init__(self, py_func, py_file, cache_path):
            self._py_file = py_file  # the mixin's source stamp and disambiguator read these two
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = cache_path

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if not (os.path.exists(py_file) and _in_package(py_file)):
                return None
            subpath = cls.get_suitable_cache_subpath(py_file)
            for root in _cache_roots():
                locator = cls(py_func, py_file, os.path.join(root, subpath))
                try:
                    locator.ensure_cache_path()  # makes the folder and tries writing a file in it
                except OSError:
                    continue
                return locator
            return None  # nothing writable: Numba's own locators decide, as for any package

    FastgradCacheLocator.__name__ = FastgradCacheLocator.__qualname__ = _LOCATOR_NAME
    return FastgradCacheLocator


def register(caching) -> None:
    """Put fastgrad's locator first in Numba's list (once; Numba's implementation classes share
    that list)."""
    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.59
    locators = impl._locator_classes
    if not any(cls.__name__ == _LOCATOR_NAME for cls in locators):
        locators.insert(0, _make_locator_class(caching))


class _RegisterAfterExec(importlib.abc.Loader):
    """Runs numba.core.caching's own loader, then registers the locator."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        register(module)

    def __getattr__(self, name):  # get_source, get_filename, ...: the original loader's
        return getattr(self._loader, name)


class _WatchForNumbaCaching(importlib.abc.MetaPathFinder):
    """Waits in sys.meta_path for the import of numba.core.caching, then leaves."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _CACHING:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def install() -> None:
    """Register the locator now if Numba's caching module is loaded, else when it is imported."""
    if _CACHING in sys.modules:
        register(sys.modules[_CACHING])
    elif not any(isinstance(finder, _WatchForNumbaCaching) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WatchForNumbaCaching())


install()
