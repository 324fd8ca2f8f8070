"""The README's examples run as written and say what the README says."""

import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_ten_line_numba_example(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    script = tmp_path / "example.py"  # a real file: @njit(cache=True) needs one
    script.write_text(blocks[0])
    namespace = runpy.run_path(str(script))
    report = namespace["report"]
    assert not report.passed
    assert report.segments["b"].failed == 3 and report.segments["W"].passed
    assert report.path == "jit"


def test_readme_shows_the_two_setup_commands():
    text = README.read_text()
    assert "pip install . && fastgrad demo" in text
    assert 'pip install -e ".[test]" && pytest' in text
