"""One error vocabulary: bad input is an ``InputError`` (``InvalidValue``/``InvalidType``, still a
``ValueError``/``TypeError``), the command line exits 2 for it however it arrives, and the shape
rules for loss values, theta and grad are stated and enforced rather than guessed."""

from __future__ import annotations

import ast
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.cli import main
from fastgrad.errors import InputError, InvalidType, InvalidValue

PACKAGE = Path(fg.__file__).resolve().parent

# Files allowed to hold bare `raise TypeError/ValueError` (none: every file uses errors.py's
# classes); a listed file may hold fewer than listed, never more.
ALLOWED_BARE_RAISES: dict[str, int] = {}


def _bare_raises(path: Path) -> list[tuple[int, str]]:
    """(line, name) of each ``raise TypeError(...)``/``raise ValueError`` in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            target = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(target, ast.Name) and target.id in ("TypeError", "ValueError"):
                found.append((node.lineno, target.id))
    return sorted(found)


def test_fastgrad_raises_no_bare_type_or_value_error():
    remaining, excess = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        raises = _bare_raises(path)
        remaining += [f"fastgrad/{name}:{line}: raise {error}" for line, error in raises]
        if len(raises) > ALLOWED_BARE_RAISES.get(name, 0):
            excess.append(f"fastgrad/{name}: {len(raises)} bare raises, "
                          f"{ALLOWED_BARE_RAISES.get(name, 0)} allowed")
    if remaining:  # the lead's list (pytest -s shows it)
        print("bare raises still to convert:\n" + "\n".join(remaining))
    assert not excess, ("raise InvalidType/InvalidValue (fastgrad.errors) for bad input:\n"
                        + "\n".join(excess) + "\n\nall remaining:\n" + "\n".join(remaining))


def test_the_scan_sees_every_form_of_a_bare_raise(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(textwrap.dedent("""
        def f(x):
            if x:
                raise TypeError("x: wrong")
            try:
                pass
            except KeyError:
                raise ValueError from None
            raise InvalidValue("x: fine")
    """))
    assert _bare_raises(source) == [(4, "TypeError"), (8, "ValueError")]


def test_converted_errors_keep_the_builtin_types_and_their_messages():
    with pytest.raises(InvalidType, match="segments: expected a SegmentMap") as caught:
        fg.unflatten(np.ones(3), [("W", 0, 3, (3,))])
    assert isinstance(caught.value, TypeError)
    with pytest.raises(InvalidValue, match="segment 'b': non-positive size") as caught:
        fg.flatten({"W": np.ones(3), "b": np.zeros(0)})
    assert isinstance(caught.value, ValueError)
    with pytest.raises(InvalidValue, match="samples: expected an int, a mapping or 'all'"):
        fg.check(lambda t: float(t @ t), np.ones(3), 2 * np.ones(3), samples="some")
    with pytest.raises(InvalidType, match="forward: expected a callable"):
        fg.check_layer(3, lambda dout, cache: dout, np.ones(3))


# --- the rules for loss values, theta and grad --------------------------------------------------

THETA = np.array([0.5, -1.0, 2.0])


def _sq(t):
    return float(t @ t)


@pytest.mark.parametrize("run", [fg.check, fg.audit], ids=["check", "audit"])
@pytest.mark.parametrize("shape", [(), (1,), (1, 1)])
def test_a_loss_value_with_one_element_is_accepted(run, shape):
    report = run(lambda t: np.full(shape, t @ t), THETA, 2 * THETA)
    assert report.passed


@pytest.mark.parametrize("run", [fg.check, fg.audit], ids=["check", "audit"])
def test_a_loss_value_with_more_elements_is_refused(run):
    with pytest.raises(fg.LossError, match=r"shape \(1, 2\); the loss must be a scalar"):
        run(lambda t: np.full((1, 2), t @ t), THETA, 2 * THETA)


@pytest.mark.parametrize("run", [fg.check, fg.audit], ids=["check", "audit"])
@pytest.mark.parametrize("shape", [(3, 1), (1, 3)])
def test_a_column_or_row_grad_is_refused_with_the_fix(run, shape):
    with pytest.raises(InvalidValue, match=rf"grad: expected shape \(3,\) like theta, got "
                                           rf"\({shape[0]}, {shape[1]}\): pass np.ravel\(grad\)"):
        run(_sq, THETA, (2 * THETA).reshape(shape))
    with pytest.raises(InvalidValue, match=r"grad: expected shape \(3,\)"):
        run(_sq, THETA, lambda t: (2 * t).reshape(shape))  # a callable grad too


def test_a_grad_of_another_size_still_names_both_sizes():
    with pytest.raises(InvalidValue, match=r"grad: has 4 values \(shape \(4, 1\)\) but theta has 3"):
        fg.check(_sq, THETA, np.ones((4, 1)))


@pytest.mark.parametrize("run", [fg.check, fg.audit], ids=["check", "audit"])
def test_a_list_theta_or_grad_is_a_float64_vector(run):
    seen = []

    def loss(t):
        seen.append((type(t), t.dtype))
        return float(t @ t)

    assert run(loss, [1, 2, 3], [2.0, 4.0, 6.0]).passed  # ints too: a list is converted
    assert set(seen) == {(np.ndarray, np.dtype(np.float64))}
    assert run(_sq, (0.5, -1.0), (1.0, -2.0)).passed


@pytest.mark.parametrize("run", [fg.check, fg.audit], ids=["check", "audit"])
def test_theta_must_be_flat(run):
    with pytest.raises(InvalidValue, match=r"theta: expected a flat 1-D vector, got shape "
                                           r"\(3, 1\).*theta.ravel\(\)"):
        run(_sq, THETA.reshape(3, 1), 2 * THETA)
    with pytest.raises(InvalidValue, match=r"theta: expected a flat 1-D vector, got shape \(\)"):
        run(lambda t: float(t) ** 2, np.float64(1.5), np.array([3.0]))
    with pytest.raises(InvalidValue, match=r"got shape \(2, 2\)"):
        run(_sq, [[1.0, 2.0], [3.0, 4.0]], np.ones(4))
    with pytest.raises(InvalidType, match="theta: expected a flat list of numbers"):
        run(_sq, ["a", "b"], np.ones(2))
    with pytest.raises(InvalidType, match="theta: dtype int64"):
        run(_sq, np.arange(3), np.ones(3))  # an int array is the caller's array: not converted


# --- the command line: exit 2 for every bad input, 70 only for fastgrad's own bugs ---------------

FACTORIES = """
    import numpy as np
    import fastgrad as fg
    from fastgrad.errors import InvalidValue

    def sq(t):
        return float(np.sum(np.asarray(t) ** 2))

    def string_loss():
        return fg.Problem(lambda t: "abc", np.ones(3), np.ones(3))

    def list_theta():
        return fg.Problem(sq, [1.0, 2.0], [2.0, 4.0])

    def strings_theta():
        return fg.Problem(sq, ["a", "b"], np.ones(2))

    def matrix_theta():
        return fg.Problem(sq, np.ones((2, 3)), 2 * np.ones((2, 3)))

    def column_grad():
        return fg.Problem(sq, np.ones(3), 2 * np.ones((3, 1)))

    def raises_input_error():
        raise InvalidValue("width: expected a positive int, got -1")

    def raises():
        return {}["missing"]

    def wrong_keyword():
        return fg.Problem(sq, np.ones(3), 2 * np.ones(3), samples=4)

    def bad_segments():
        return fg.Problem(sq, np.ones(3), 2 * np.ones(3), segments=[("a", 3)])

    def bad_args():
        return fg.Problem(sq, np.ones(3), 2 * np.ones(3), args=5)

    def unknown_option():
        return fg.Problem(sq, np.ones(3), 2 * np.ones(3), options={"sampels": 4})

    def options_not_a_dict():
        return fg.Problem(sq, np.ones(3), 2 * np.ones(3), options=["samples"])

    def seeded():
        return fg.Problem(sq, np.ones(3), 2 * np.ones(3),
                          options={"seed": 3, "budget": 40, "samples": "all"})

    def flattens():
        theta, segs = fg.flatten({"w": np.ones(3)})
        return fg.Problem(sq, theta, 2 * theta, segments=segs)
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "vocab_factories.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


BAD_INPUT = [
    ("string_loss", "f: at theta returned 'abc', which is not a number"),
    ("strings_theta", "theta: expected a flat list of numbers"),
    ("matrix_theta", "theta: expected a flat 1-D vector, got shape (2, 3)"),
    ("column_grad", "grad: expected shape (3,) like theta, got (3, 1): pass np.ravel(grad)"),
    ("raises_input_error", "width: expected a positive int, got -1"),
    ("raises", "vocab_factories:raises() raised KeyError: 'missing'"),
    ("wrong_keyword", "raised TypeError: Problem.__init__() got an unexpected keyword"),
    ("bad_segments", "segments: expected a SegmentMap or a {name: shape} mapping, got list"),
    ("bad_args", "args: expected a tuple of extra arguments, got int"),
    ("unknown_option", "Problem.options: ['sampels'] are not options of fastgrad.check"),
    ("options_not_a_dict", "Problem.options: expected a dict of check() options, got list"),
]


@pytest.mark.parametrize("audit", [False, True], ids=["check", "audit"])
@pytest.mark.parametrize("factory, words", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_through_a_factory_exits_2_with_its_message(factories, capsys, factory, words,
                                                              audit):
    argv = ["check", f"vocab_factories:{factory}"] + (["--audit"] if audit else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and "internal error" not in err
    if factory in ("raises", "wrong_keyword"):  # the user's code raised: show where
        assert "Traceback" in err and "vocab_factories.py" in err


def test_accepted_inputs_through_a_factory(factories, capsys):
    assert main(["check", "vocab_factories:list_theta"]) == 0
    assert main(["check", "vocab_factories:seeded", "--json", "-"]) == 0
    assert '"seed": 3' in capsys.readouterr().out  # the Problem's seed, when --seed is not given
    assert main(["check", "vocab_factories:seeded", "--seed", "5", "--json", "-"]) == 0
    assert '"seed": 5' in capsys.readouterr().out
    assert main(["check", "vocab_factories:seeded", "--audit"]) == 0


def test_a_bug_in_fastgrad_reached_through_a_factory_still_exits_70(factories, monkeypatch,
                                                                     capsys):
    import fastgrad.segments

    # a builtin that fails inside fastgrad's own frame (no frame of this test on top of it)
    monkeypatch.setattr(fastgrad.segments, "math", types.SimpleNamespace(prod=divmod))
    assert main(["check", "vocab_factories:flattens"]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "segments.py" in err and "bad input" not in err


def test_a_bug_in_fastgrad_during_the_check_exits_70(factories, monkeypatch, capsys):
    import fastgrad.checks.coordinates as coordinates

    def broken(*args, **kwargs):
        raise KeyError("an internal bug")

    monkeypatch.setattr(coordinates, "sample_coordinates", broken)
    assert main(["check", "vocab_factories:list_theta"]) == 70
    assert "internal error" in capsys.readouterr().err


def test_input_errors_are_the_only_exit_2_exceptions():
    # every class the CLI maps to exit 2 is an InputError, or the loss failing (LossError)
    assert issubclass(InvalidValue, InputError) and issubclass(InvalidType, InputError)
    assert issubclass(fg.NondeterminismError, InputError)
