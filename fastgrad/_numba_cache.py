"""Where Numba caches fastgrad's compiled kernels: a per-user cache folder, never the package.

Numba's default for ``@njit(cache=True)`` writes ``*.nbi``/``*.nbc`` files into ``__pycache__``
next to the source, i.e. into the installed package. pip does not know those files: uninstalling
leaves the folder behind, and the empty ``fastgrad/`` that remains shadows a later editable
install (``import fastgrad`` then finds a namespace package without ``Segment``).

So fastgrad's kernels are decorated with ``cached_per_user`` instead of ``njit(cache=True)``; their
cache goes to

1. ``$NUMBA_CACHE_DIR`` (``numba.config.CACHE_DIR``) when the user set it, laid out as Numba
   itself would;
2. otherwise the platform's user cache folder: ``$XDG_CACHE_HOME/fastgrad/numba`` or
   ``~/.cache/fastgrad/numba`` on Linux, ``~/Library/Caches/fastgrad/numba`` on macOS,
   ``%LOCALAPPDATA%\\fastgrad\\Cache\\numba`` on Windows;
3. when that is not writable, a private folder in the temp dir (``fastgrad-<uid>/numba``);
4. when nothing is writable, wherever Numba's own locators put it.

Below the root, Numba's own sub-folder scheme (``<folder>_<sha1 of the source folder>``) keeps
installs apart, and Numba's index keeps each entry tied to the source file's content hash and the
Numba version, so a cache survives reinstalls and never serves stale code.

Numba has no public API for a library to choose where its own functions are cached (numba issue
#9350): ``NUMBA_CACHE_DIR`` and ``NUMBA_CACHE_LOCATOR_CLASSES`` are process-wide and belong to the
user. So each kernel carries its own cache object in its dispatcher's cache slot (the one numba's
own ``enable_caching()`` fills; set at decoration, it concerns that function alone): numba's
``FunctionCache`` with one more locator class in front of numba's own. That object is built, and
numba's non-public caching classes are imported and subclassed, at the kernel's first compile (or
when its ``stats.cache_path`` is first read). Nothing process-wide is touched: no import hook, no
change to numba's own locator list, and the user's own ``cache=True`` functions are cached where
Numba puts them.
"""

from __future__ import annotations

import functools
import getpass
import os
import stat
import tempfile
import threading

from numba import njit
from numba.extending import is_jitted


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


@functools.cache
def _function_cache_class():
    """numba's FunctionCache whose locators are fastgrad's per-user one, then numba's own.

    Built at the first compile of a fastgrad kernel: the only place that uses numba's
    non-public caching classes."""
    from numba.core import caching

    class PerUserCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """The first writable folder of ``_cache_roots()``, laid out as Numba's own."""

        def __init__(self, py_func, py_file, cache_path):
            self._py_file = py_file  # the mixin's source stamp and disambiguator read these two
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = cache_path

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if not os.path.exists(py_file):
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

    class PerUserCacheImpl(caching.CompileResultCacheImpl):
        _locator_classes = [PerUserCacheLocator, *caching.CompileResultCacheImpl._locator_classes]

    class PerUserFunctionCache(caching.FunctionCache):
        _impl_class = PerUserCacheImpl

    return PerUserFunctionCache


class _CacheChosenAtFirstCompile:
    """A kernel's cache: numba's dispatcher calls it as its own ``FunctionCache``; the folder is
    chosen (and made) the first time the dispatcher loads, saves or reports its cache path."""

    def __init__(self, py_func) -> None:
        self._py_func = py_func
        self._cache = None
        self._lock = threading.Lock()

    def _chosen(self):
        with self._lock:
            if self._cache is None:
                self._cache = _function_cache_class()(self._py_func)
            return self._cache

    @property
    def cache_path(self) -> str:
        return self._chosen().cache_path

    def load_overload(self, sig, target_context):
        return self._chosen().load_overload(sig, target_context)

    def save_overload(self, sig, data) -> None:
        self._chosen().save_overload(sig, data)

    def enable(self) -> None:
        self._chosen().enable()

    def disable(self) -> None:
        self._chosen().disable()

    def flush(self) -> None:
        self._chosen().flush()


def cached_per_user(py_func=None, /, **options):
    """``numba.njit(**options)`` whose compiled code is cached in fastgrad's per-user folder.

    Use it instead of ``njit(cache=True)`` for fastgrad's own kernels; the folder is chosen at
    the kernel's first compile, never at import.

    >>> @cached_per_user(nogil=True)
    ... def total(x):
    ...     return x.sum()
    """
    if py_func is None:
        return functools.partial(cached_per_user, **options)
    dispatcher = njit(**options)(py_func)
    if not is_jitted(dispatcher):  # NUMBA_DISABLE_JIT: the plain function
        return dispatcher
    # the slot numba's own enable_caching() fills with a FunctionCache
    dispatcher._cache = _CacheChosenAtFirstCompile(py_func)
    return dispatcher
