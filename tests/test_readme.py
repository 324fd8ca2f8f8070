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


def _block(starts_with):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (found,) = [b for b in blocks if b.startswith(starts_with)]
    return found


def _run(code, capsys):
    exec(compile(code, "README", "exec"), {})
    return capsys.readouterr().out


def test_torch_example(capsys):
    import pytest

    pytest.importorskip("torch", reason='the torch example needs torch: pip install -e ".[test,torch]"')
    out = _run(_block("import torch"), capsys)
    assert "PASSED" in out and "0.weight" in out and "2.bias" in out


def test_jax_example(capsys):
    import pytest

    pytest.importorskip("jax", reason='the jax example needs jax: pip install -e ".[test,jax]"')
    out = _run(_block("import jax"), capsys)
    assert "PASSED" in out and "layers/0/w" in out


def test_numpy_layer_example(capsys):
    out = _run(_block("import numpy as np, fastgrad\n"), capsys)
    assert "PASSED" in out and all(f"\n  {name} " in out for name in ("x", "w", "b"))


def test_audit_example(capsys):
    out = _run(_block("import numpy as np, fastgrad as fg\nn = 200_000"), capsys)
    assert "12345" in out and "150000" in out
    assert "['W[30, 345]', 'W[375, 0]']" in out
