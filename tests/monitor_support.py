"""Helpers shared by the monitor tests."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == {package!r} or name.startswith({package!r} + "."):
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
"""


def run_without(package: str, code: str) -> str:
    """Run ``code`` in a fresh interpreter where importing ``package`` fails; its stdout.

    >>> run_without("json", "import fastgrad.monitor; print('ok')")
    'ok\\n'
    """
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(package=package) + code],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout
