"""fastgrad.torch.gradcheck calls the function as torch's gradcheck does, judges what torch
judges (outputs that lost their gradient path included), takes the caller's tolerance as the
contract, survives a function that rejects one step, and spends torch's evaluations in fast mode.

Each detection test plants a real bug and asserts where it is named; each passes-test uses a
correct derivative."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError  # noqa: E402

import fastgrad  # noqa: E402
import fastgrad.torch as ft  # noqa: E402
import fastgrad.torch.dropin.fast as fast_mode_module  # noqa: E402

F64 = torch.float64


def leaf(*shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=F64).requires_grad_(True)


@pytest.fixture(autouse=True)
def not_strict(monkeypatch):
    monkeypatch.delenv("FASTGRAD_STRICT", raising=False)


# ---------------------------------------------------------------- outputs without a gradient


@pytest.mark.parametrize("fast_mode", [False, True])
def test_an_output_that_lost_its_gradient_path_fails(fast_mode):
    x = leaf(4, seed=1)
    with pytest.raises(TorchGradcheckError):  # torch's verdict
        torch.autograd.gradcheck(lambda x: (2 * x).detach(), (x,), fast_mode=fast_mode)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(lambda x: (2 * x).detach(), (x,), fast_mode=fast_mode)
    assert str(info.value).startswith("output0 does not require grad")
    assert not ft.gradcheck(lambda x: (2 * x).detach(), (x,), fast_mode=fast_mode,
                            raise_exception=False)


@pytest.mark.parametrize("fast_mode", [False, True])
def test_a_detached_second_output_warns_by_name_and_fails_when_strict(fast_mode):
    """torch's gradcheck ignores an output that does not require grad when another one does
    (native_layer_norm's mean and rstd are such outputs): fastgrad judges it anyway, warns by
    name when its numeric Jacobian is not zero, and fails it with strict=True."""
    x = leaf(3, seed=2)

    def f(x):
        return x.sin(), x.exp().detach()

    assert torch.autograd.gradcheck(f, (x,), fast_mode=fast_mode)  # torch's verdict
    with pytest.warns(fastgrad.GradcheckWarning, match=r"output1: does not require grad"):
        assert ft.gradcheck(f, (x,), fast_mode=fast_mode)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(f, (x,), fast_mode=fast_mode, strict=True)
    assert str(info.value).startswith("output1 does not require grad")
    if not fast_mode:
        report = info.value.report
        assert [n for n, s in report.segments.items() if not s.passed] == ["input0/output1"]


def test_an_auxiliary_output_torch_ignores_passes_with_a_warning_and_a_real_bug_still_fails():
    x = leaf(2, 6, seed=4)
    w, b = leaf(6, seed=5), leaf(6, seed=6)

    def layer_norm(x, w, b):  # (out, mean, rstd): mean and rstd do not require grad
        return torch.native_layer_norm(x, [6], w, b, 1e-5)

    assert torch.autograd.gradcheck(layer_norm, (x, w, b))
    with pytest.warns(fastgrad.GradcheckWarning, match=r"output1, output2: does not require"):
        assert ft.gradcheck(layer_norm, (x, w, b))

    class WrongScale(torch.autograd.Function):  # x * 2 with its backward 3% off
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2.06

    def buggy(x, w, b):
        out, mean, rstd = layer_norm(WrongScale.apply(x), w, b)
        return out, mean, rstd

    with pytest.raises(ft.GradcheckError, match=r"input0"):
        ft.gradcheck(buggy, (x, w, b))


def test_outputs_without_a_gradient_that_are_constant_pass():
    # an integer output (indices) is not judged; a float output that does not depend on the
    # input (a constant mask) has a zero numeric Jacobian
    x = leaf(5, seed=3)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0], dtype=F64)
    assert ft.gradcheck(lambda x: x.max(0), (x,))
    assert ft.gradcheck(lambda x: (x * mask, mask.clone()), (x,))
    assert ft.gradcheck(lambda x: (x * mask, mask.clone()), (x,), fast_mode=True)


# ---------------------------------------------------------------- what the function sees


def test_the_function_sees_the_callers_parameters_requires_grad_and_grad_mode():
    seen = []

    def f(w):
        seen.append((type(w), w.requires_grad, torch.is_grad_enabled()))
        return (w * 2).sum(0)

    w = torch.nn.Parameter(torch.randn(3, 2, dtype=F64))
    for fast_mode in (False, True):
        seen.clear()
        torch.autograd.gradcheck(f, (w,), fast_mode=fast_mode)
        theirs = set(seen)
        seen.clear()
        assert ft.gradcheck(f, (w,), fast_mode=fast_mode)
        # every call outside a vmap'd batch sees what torch's calls see
        assert {s for s in seen if s[0] is not torch.Tensor} == theirs == {
            (torch.nn.Parameter, True, True)}


def module_from(weight, bias, x):
    """A function building an nn.Module from its Parameter inputs (as some libraries' tests do):
    a plain tensor would be wrapped in a new Parameter, a new leaf without a gradient path."""
    layer = torch.nn.Linear(3, 2, dtype=F64)
    layer.weight = weight if isinstance(weight, torch.nn.Parameter) else torch.nn.Parameter(weight)
    layer.bias = bias if isinstance(bias, torch.nn.Parameter) else torch.nn.Parameter(bias)
    return torch.tanh(layer(x))


class WrongWeightGrad(torch.autograd.Function):
    """x @ w.T with the weight's gradient transposed the wrong way round (a square weight)."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w, (g.t() @ x).t()  # bug: should be g.t() @ x


class BuggyLayer(torch.nn.Module):
    def __init__(self, weight):
        super().__init__()
        self.weight = weight

    def forward(self, x):
        return WrongWeightGrad.apply(x, self.weight)


def test_a_function_building_a_module_from_parameters_passes_and_a_planted_bug_is_named():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, generator=gen, dtype=F64)
    weight = torch.nn.Parameter(torch.randn(2, 3, generator=gen, dtype=F64))
    bias = torch.nn.Parameter(torch.randn(2, generator=gen, dtype=F64))
    args = (weight, bias, x)
    assert torch.autograd.gradcheck(module_from, args)
    assert ft.gradcheck(module_from, args)
    assert ft.gradcheck(module_from, args, fast_mode=True)

    square = torch.nn.Parameter(torch.randn(3, 3, generator=gen, dtype=F64))
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(lambda w, x: BuggyLayer(w)(x), (square, x.requires_grad_(False)))
    failing = [n for n, s in info.value.report.segments.items() if not s.passed]
    assert failing == ["input0/output0"]  # the weight, not x
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(lambda w, x: BuggyLayer(w)(x), (square, x), fast_mode=True)
    assert "input0" in str(info.value)
    assert all(int(i) < square.numel() for i in info.value.report.suspects)


def forces(positions, charges):
    """A Jacobian helper as some libraries write it: gradients only for inputs that require
    grad, indexed by position (an IndexError when an input is passed without requires_grad)."""
    squared = ((positions[:, None] - positions[None, :]) ** 2).sum(-1)
    energy = (charges[:, None] * charges[None, :] / (1 + squared)).sum()
    wanted = [t for t in (positions, charges) if t.requires_grad]
    grads = torch.autograd.grad(energy, wanted, create_graph=True)
    return -grads[0], grads[1]


def test_a_function_indexing_a_per_requires_grad_result():
    positions, charges = leaf(4, 3, seed=5), leaf(4, seed=6)
    assert torch.autograd.gradcheck(forces, (positions, charges))
    assert ft.gradcheck(forces, (positions, charges))
    assert ft.gradcheck(forces, (positions, charges), fast_mode=True)


def test_the_callers_tensors_are_restored_bitwise_even_when_func_raises():
    x = leaf(6, seed=7)
    before = x.detach().clone()
    calls = []

    def fails_once_perturbed(x):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("solver diverged")
        return x.sin()

    with pytest.raises(RuntimeError, match="solver diverged"):
        ft.gradcheck(fails_once_perturbed, (x,))
    assert torch.equal(x, before) and x.grad is None and x.requires_grad


def _inputs_of_every_shape():
    """A transposed float32 matrix, a 0-d scalar and one tensor passed twice."""
    gen = torch.Generator().manual_seed(11)
    a = torch.randn(3, 4, generator=gen).t().requires_grad_(True)  # non-contiguous, float32
    s = torch.tensor(0.7, dtype=F64, requires_grad=True)
    b = leaf(5, seed=12)
    return a, s, b


def _mixed(a, s, b, b_again):
    return (a.double().sum(0) * s).sum() + (b * b_again.cos()).sum(), (a.double() * s).exp()


def test_a_one_coordinate_perturbation_gives_the_whole_input_paths_values_bitwise():
    """A Jacobian's column writes one element of the caller's tensor and writes it back
    (torch's way); the values equal those of writing whole inputs, on float32, strided, 0-d
    and repeated inputs, and the caller's tensors are bitwise unchanged afterwards. So do
    rows that move many coordinates (fast mode's random directions): along one input, two,
    or all of them."""
    from fastgrad.torch.dropin.flatten import TorchFunction

    a, s, b = _inputs_of_every_shape()
    inputs = (a, s, b, b)
    before = [t.detach().clone() for t in (a, s, b)]
    fn = TorchFunction(_mixed, inputs, ["a", "s", "b", "b_again"], needs_grad=True)
    _, outputs, positions = fn.reference()
    fn.set_outputs(outputs, positions)
    assert fn.elements is not None
    rows = []
    for i in range(fn.x.size):
        for sign in (1.0, -1.0):
            row = fn.x.copy()
            row[i] += sign * 1e-3 * max(1.0, abs(row[i]))
            rows.append(row)
    columns = len(rows)
    rng = np.random.default_rng(5)
    starts = fn.layout.starts
    for moved in ([0], [2], [3], [0, 1], [1, 3], [0, 1, 2, 3]):  # inputs a random row moves
        row = fn.x.copy()
        for p in moved:
            row[starts[p]:starts[p + 1]] += 1e-3 * rng.uniform(size=starts[p + 1] - starts[p])
        rows.append(row)
    in_place = [fn.call_one(row) for row in rows]
    fn.elements = None  # every evaluation writes whole inputs
    whole = [fn.call_one(row) for row in rows]
    assert all(np.array_equal(x, y) for x, y in zip(in_place, whole))
    # each column moved something, but b and b_again are one tensor, perturbed once (as torch
    # does): b_again's columns are b's
    assert len({r.tobytes() for r in whole[:columns]}) == columns - 2 * b.numel()
    # a row that moves b_again only moves the tensor: b's unchanged values are not written
    # over it
    assert not np.array_equal(in_place[columns + 2], fn.call_one(fn.x))
    assert all(torch.equal(t, t0) for t, t0 in zip((a, s, b), before))


def test_a_function_writing_into_its_input_is_undone_after_each_perturbed_call():
    """A perturbed call writes one element and restores it; a func that also writes into its
    input (under no_grad: autograd does not see it) gets its whole input restored, so the next
    call starts from the caller's values again."""
    from fastgrad.torch.dropin.flatten import TorchFunction

    x = leaf(6, seed=13)
    before = x.detach().clone()
    scribble = []

    def scribbles(x):
        out = x.sin()
        if scribble:
            with torch.no_grad():
                x.mul_(2.0)
        return out

    fn = TorchFunction(scribbles, (x,), ["x"], needs_grad=True)
    _, outputs, positions = fn.reference()
    fn.set_outputs(outputs, positions)
    row = fn.x.copy()
    row[2] += 1e-3
    clean = fn.call_one(row)
    scribble.append(True)
    assert np.array_equal(fn.call_one(row), clean) and torch.equal(x.detach(), before)
    assert np.array_equal(fn.call_one(row), clean) and torch.equal(x.detach(), before)


def test_a_planted_bug_in_a_strided_float32_input_is_named():
    a, s, b = _inputs_of_every_shape()

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a.sin()

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            grad = g * a.cos()
            grad[1, 2] *= 1.1  # the bug: one element 10% off
            return grad

    with pytest.raises(ft.GradcheckError, match=r"input0\[1, 2\]|input 0.*\(1, 2\)"):
        ft.gradcheck(Wrong.apply, (a.double().detach().t().contiguous().t()
                                   .requires_grad_(True),))


# ---------------------------------------------------------------- a step the function rejects


def solver(x0, radius):
    """sin(x), from an iteration that gives up ("Jacobian inversion yielded zero vector") when
    the point is farther than ``radius`` from where it was set up."""

    def f(x):
        if float((x.detach() - x0).abs().max()) > radius:
            raise RuntimeError("Jacobian inversion yielded zero vector")
        return x.sin()

    return f


def test_a_solver_that_rejects_fastgrads_step_is_checked_at_the_callers_eps():
    x = leaf(5, seed=8)
    f = solver(x.detach().clone(), radius=3e-6)  # fastgrad's automatic step is >= 6e-6
    assert torch.autograd.gradcheck(f, (x,))
    assert ft.gradcheck(f, (x,))
    assert ft.gradcheck(f, (x,), fast_mode=True)


def test_a_solver_that_rejects_both_steps_names_the_coordinate_and_step():
    x = leaf(5, seed=9)
    f = solver(x.detach().clone(), radius=1e-7)
    with pytest.raises(RuntimeError, match="Jacobian inversion") as info:
        ft.gradcheck(f, (x,))
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "input0[0] + 1e-06" in notes and "also at fastgrad's automatic step" in notes


# ---------------------------------------------------------------- the caller's tolerance


class SolverTolerance(torch.autograd.Function):
    """An implicit-function gradient 9e-4 off (the solver's tolerance, not a wrong formula)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.exp() * (1 + 9e-4)


@pytest.mark.parametrize("fast_mode", [False, True])
def test_a_gradient_within_torchs_tolerance_warns_and_fails_when_strict(fast_mode):
    x = leaf(8, seed=10)
    assert torch.autograd.gradcheck(SolverTolerance.apply, (x,), fast_mode=fast_mode)
    with pytest.warns(fastgrad.GradcheckWarning, match="beyond fastgrad's relative band"):
        assert ft.gradcheck(SolverTolerance.apply, (x,), fast_mode=fast_mode)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(SolverTolerance.apply, (x,), fast_mode=fast_mode, strict=True)
    assert "input0" in str(info.value)


def test_a_real_bug_beyond_the_callers_tolerance_fails_without_strict():
    class OnePercent(SolverTolerance):
        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.exp() * 1.01

    x = leaf(8, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failure, not a warning
        with pytest.raises(ft.GradcheckError):
            ft.gradcheck(OnePercent.apply, (x,))


class OffByAtol(torch.autograd.Function):
    """A quadratic at its minimum (every derivative 0) whose backward adds 1e-8 to element 3:
    within the caller's atol (torch's rule holds at every element), beyond any relative band."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return ((x - torch.linspace(0.5, 1.5, x.numel(), dtype=F64)) ** 2).sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = 2 * (x - torch.linspace(0.5, 1.5, x.numel(), dtype=F64))
        d[3] += 1e-8
        return g * d


MINIMUM = torch.linspace(0.5, 1.5, 12, dtype=F64)


def costly(x):
    """OffByAtol called one at a time (``float`` keeps vmap out); the tests that use it make
    the columns of its 60 coordinates cost more than the audit (``SETTLE_BUDGET_CALLS`` 0), so
    fast mode's question goes to the audit after a sample of them."""
    float(x.sum())
    return OffByAtol.apply(x)


@pytest.fixture
def audit_settles(monkeypatch):
    """Fast mode's questions go to the audit after a sample of columns: every column would
    cost more than the audit (as on an expensive function)."""
    monkeypatch.setattr(fast_mode_module, "SETTLE_BUDGET_CALLS", 0)


@pytest.fixture
def columns_settle(monkeypatch):
    """Fast mode's questions are settled on every column (as on a cheap function)."""
    monkeypatch.setattr(fast_mode_module, "SETTLE_BUDGET_CALLS", 10**6)


def test_a_fast_mode_question_within_the_callers_rule_is_settled_as_full_mode_settles_it(
        columns_settle):
    """The direction is within torch's rule but 100% off relatively. Its 12 columns cost less
    than the audit, so the caller's rule judges every element, as full mode does: input0[3] is
    1e-8 off where atol is 1e-5, and the check passes as full mode's does, without a warning.
    strict=True judges fastgrad's band, and fails it."""
    x = MINIMUM.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(OffByAtol.apply, (x,), fast_mode=True)
    assert torch.autograd.gradcheck(OffByAtol.apply, (x,), fast_mode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastgrad.GradcheckWarning)
        assert ft.gradcheck(OffByAtol.apply, (x,), fast_mode=False)
        assert ft.gradcheck(OffByAtol.apply, (x,), fast_mode=True)
    with pytest.raises(ft.GradcheckError, match=r"input0\[3\]"):
        ft.gradcheck(OffByAtol.apply, (x,), fast_mode=True, strict=True)


def test_a_fast_mode_audit_failure_within_the_callers_rule_element_by_element_warns(
        audit_settles):
    """The same on 60 coordinates whose columns cost more than the audit: a sample of them is
    judged (it passes) and the audit finds the block around input0[3]
    wrong by its band (the zeros in it found right); the caller's rule on the block's Jacobian
    columns accepts it: a warning naming it."""
    x = torch.linspace(0.5, 1.5, 60, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(costly, (x,), fast_mode=True)
    with pytest.warns(fastgrad.GradcheckWarning,
                      match=r"audit found input0\[0\] \.\. input0\[59\] \(a block\)"):
        assert ft.gradcheck(costly, (x,), fast_mode=True)


def test_the_callers_rule_element_by_element_leaves_out_outputs_torch_ignores(audit_settles):
    """Beside OffByAtol's output, a detached one (torch ignores it, fastgrad warns by name):
    the element-by-element judgment covers output0 only, so the check still passes with
    warnings instead of failing on output1's nonzero numeric Jacobian."""
    x = torch.linspace(0.5, 1.5, 60, dtype=F64).requires_grad_(True)

    def f(t):
        return costly(t), (2 * t).detach()

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert ft.gradcheck(f, (x,), fast_mode=True)
    text = " ".join(str(w.message) for w in caught)
    assert "audit found input0[0] .. input0[59]" in text
    assert "output1: does not require grad" in text


class HiddenInDirection(torch.autograd.Function):
    """A quadratic at its minimum over 400 coordinates whose backward adds ``ctx.extra`` to
    element 3: 1e-3 is 100x torch's atol at that element, and hidden along a random direction
    (torch's fast mode, whose rule there allows atol x sum(u), passes it)."""

    @staticmethod
    def forward(ctx, x, extra):
        ctx.save_for_backward(x)
        ctx.extra = extra
        return ((x - torch.linspace(0.5, 1.5, x.numel(), dtype=F64)) ** 2).sum()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = 2 * (x - torch.linspace(0.5, 1.5, x.numel(), dtype=F64))
        d[3] += ctx.extra
        return g * d, None


@pytest.mark.parametrize("settled_by", ["columns_settle", "audit_settles"])
def test_an_element_error_hidden_in_the_direction_fails_whichever_settles_it(settled_by,
                                                                             request):
    """torch's fast mode misses it; fastgrad's fails it naming input0[3], whether every column
    is judged (a cheap function) or a sample and then the audit (an expensive one), and the
    right backward passes both ways without a warning."""
    request.getfixturevalue(settled_by)
    x = torch.linspace(0.5, 1.5, 400, dtype=F64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: HiddenInDirection.apply(t, 1e-3), (x,),
                                    fast_mode=True)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(lambda t: HiddenInDirection.apply(t, 1e-3), (x,), fast_mode=True)
    assert list(info.value.report.suspects) == [3]
    assert re.search(r"input0\[3\] -> output0\[\] .* WRONG", str(info.value))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastgrad.GradcheckWarning)
        assert ft.gradcheck(lambda t: HiddenInDirection.apply(t, 0.0), (x,), fast_mode=True)


W_DESCRIPTOR = torch.randn(128, 256, generator=torch.Generator().manual_seed(3), dtype=F64) / 16


def descriptor(x, detached=True):
    """HardNet's shape of bug: the input normalised by statistics taken after .detach(), so
    autograd's gradient is not the function's derivative; 256 outputs (2 x 128)."""
    m, s = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)
    if detached:
        m, s = m.detach(), s.detach()
    y = torch.relu((x - m) / s @ W_DESCRIPTOR.T)
    return y / y.norm(dim=1, keepdim=True)


def test_a_fast_mode_failure_torch_misses_is_shown_element_by_element_by_the_callers_rule():
    """torch's fast mode passes the detached normalisation (its full mode fails it); fastgrad's
    fast mode fails it with the elements that break the caller's rule on the Jacobian columns
    of 2 random coordinates (4 sampled rows of 256): both are wrong, the error is spread. The
    same function without the detach passes."""
    x = torch.rand(2, 256, generator=torch.Generator().manual_seed(4), dtype=F64,
                   requires_grad=True)
    options = dict(eps=1e-4, atol=1e-4, fast_mode=True)
    assert torch.autograd.gradcheck(descriptor, (x,), **options)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(descriptor, (x,), **options)
    text = str(info.value)
    assert "element by element fails on the Jacobian columns of 2 of 2 random coordinates of " \
           "input0 (512 coordinates, over 4 of 256 output elements): every one sampled is " \
           "wrong" in text
    assert re.search(r"input0\[\d+, \d+\] -> output0\[\d+, \d+\] .* WRONG", text)
    failing = info.value.report.failures
    assert failing and all(r.input_where.startswith("input0[") for r in failing)
    assert info.value.report.suspects.size == 2  # the 2 sampled coordinates, each wrong
    assert ft.gradcheck(lambda t: descriptor(t, detached=False), (x,), **options)


def test_a_fast_mode_failure_says_what_each_part_cost_and_the_total_is_every_call():
    """The failure shows the sampled columns' own evaluations and a Jacobian report whose
    count is the whole check's: that total is every call of the function that returned
    (.item() keeps vmap out: its one batched try raises, and is no evaluation), and the
    columns' part fits inside it."""
    calls = []

    def f(t):
        float(t.sum())  # raises under vmap
        calls.append(1)
        return descriptor(t)

    x = torch.rand(2, 256, generator=torch.Generator().manual_seed(4), dtype=F64,
                   requires_grad=True)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(f, (x,), eps=1e-4, atol=1e-4, fast_mode=True)
    text = str(info.value)
    columns = int(re.search(r"\((\d+) evaluations; the count below is the whole check's\)",
                            text).group(1))
    total = int(re.findall(r"(\d+) loss evaluations", text)[-1])
    assert total == len(calls)
    assert 2 * 2 <= columns < total, (columns, total)


# ---------------------------------------------------------------- a jump crossed by the step

STEP = 6.055454452393343e-06  # fastgrad's float64 step at |x| <= 1: eps^(1/3)


class Stepped(torch.autograd.Function):
    """sin(x) plus a jump of 1 where x passes ``at``: the derivative is cos(x) wherever it
    exists, and a backward scaled by ``factor`` (1: right) returns factor * cos(x)."""

    @staticmethod
    def forward(ctx, x, at, factor):
        ctx.save_for_backward(x)
        ctx.factor = factor
        return torch.sin(x) + (x > at).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.factor * torch.cos(x), None, None


@pytest.mark.parametrize("distance", [0.4, 0.7])
def test_fast_mode_clears_a_jump_its_step_crosses_and_torchs_does_not(distance):
    """A jump 0.4 (crossed by the first and the second step) or 0.7 (the first only) of
    fastgrad's step away, beyond torch's eps=1e-6: torch's fast mode passes the right backward,
    and so does fastgrad's, whose smaller re-measured steps no longer cross it. The same with a
    backward 10% off fails: past the jump the disagreement stays. (Before, the direction went
    to the audit, which cleared it, and the check passed with a GradcheckWarning naming it,
    which strict=True turns into a failure.)"""
    x = torch.tensor([0.5], dtype=F64, requires_grad=True)
    at = 0.5 + distance * STEP
    assert torch.autograd.gradcheck(lambda t: Stepped.apply(t, at, 1.0), (x,), fast_mode=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastgrad.GradcheckWarning)
        assert ft.gradcheck(lambda t: Stepped.apply(t, at, 1.0), (x,), fast_mode=True)
        # beside a smooth output that agrees at every step
        assert ft.gradcheck(lambda t: (t * t, Stepped.apply(t, at, 1.0)), (x,), fast_mode=True)
    with pytest.raises(ft.GradcheckError, match="input0"):
        ft.gradcheck(lambda t: Stepped.apply(t, at, 1.1), (x,), fast_mode=True)
    with pytest.raises(ft.GradcheckError, match="input0"):
        ft.gradcheck(lambda t: (t * t, Stepped.apply(t, at, 1.1)), (x,), fast_mode=True)


# ---------------------------------------------------------------- fast mode's cost


def counted(fn):
    calls = []

    def f(*args):
        calls.append(1)
        float(args[0].sum())  # .item(): no vmap, one call per evaluation
        return fn(*args)

    return f, calls


@pytest.mark.parametrize("fast_mode", [True, False])
def test_a_passing_check_spends_torchs_evaluations(fast_mode):
    """One call at x and two per direction (fast mode) or coordinate (full mode), as torch's:
    the nondeterminism check's second call at x is made only once the first step leaves
    something in question. A function that changes between calls still fails as such."""
    a, b = leaf(3, 4, seed=12), leaf(4, seed=13)
    f, calls = counted(lambda a, b: torch.tanh(a @ b))
    torch.autograd.gradcheck(f, (a, b), fast_mode=fast_mode)
    theirs = len(calls)
    calls.clear()
    assert ft.gradcheck(f, (a, b), fast_mode=fast_mode)
    assert len(calls) <= theirs, (len(calls), theirs)
    drifting = iter(range(1, 1000))
    g, _ = counted(lambda a, b: torch.tanh(a @ b) * (1 + 1e-3 * next(drifting)))
    with pytest.raises(ft.GradcheckError, match="different values for the same inputs"):
        ft.gradcheck(g, (a, b), fast_mode=fast_mode)


def test_rows_cheaper_one_by_one_than_a_vmap_call_go_one_by_one_with_the_same_values():
    """Fast mode's few rows of a cheap function cost less as plain calls than one vmap call
    (its overhead, ~0.15 ms, is several calls of an elementwise op): they go one by one, the
    path says why, and the values are the batched call's bit for bit. A function timed as
    expensive is batched."""
    from fastgrad.torch.dropin.flatten import TorchFunction

    a, b = leaf(3, 4, seed=12), leaf(4, seed=13)
    values = {}
    for seconds in (1e-6, 1e-3):
        fn = TorchFunction(lambda a, b: torch.tanh(a @ b), (a, b), ["a", "b"], needs_grad=True)
        _, outputs, positions = fn.reference()
        fn.set_outputs(outputs, positions)
        fn.at_x = fn.flat_outputs(outputs, None)
        fn.call_seconds = seconds
        rows = fn.x + np.random.default_rng(3).uniform(-1e-3, 1e-3, size=(4, fn.x.size))
        values[seconds] = fn.many(rows)
        assert fn.evaluations == 4
        if seconds == 1e-6:  # 4 calls of 1 us < 150 us
            assert not fn.batched and not fn.verified
            assert "4 calls of 1 us cost less than one torch.func.vmap call" in fn.why_serial
        else:
            assert fn.batched and fn.probed
    assert np.array_equal(values[1e-6], values[1e-3])


def test_a_relu_network_with_kinks_passes_fast_mode():
    gen = torch.Generator().manual_seed(14)
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3),
                              torch.nn.MaxPool1d(1)).double()
    x = torch.randn(8, 6, generator=gen, dtype=F64, requires_grad=True)
    assert ft.gradcheck(lambda x: net(x), (x,), fast_mode=True)
    assert ft.gradcheck(lambda *p: torch.func.functional_call(
        net, dict(zip([n for n, _ in net.named_parameters()], p)), (x,)),
        tuple(p.detach().requires_grad_() for p in net.parameters()), fast_mode=True)


class ScaledSecond(torch.autograd.Function):
    """(a * b).sum(1) of three inputs' worth: a right, b's gradient 0.05% off (beyond fastgrad's
    band, within torch's rtol): fast mode measures b's direction again at half the step."""

    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, b, c)
        return (a * b).sum(1) + c

    @staticmethod
    def backward(ctx, g):
        a, b, c = ctx.saved_tensors
        return g[:, None] * b, g[:, None] * a * 1.0005, g


def test_fast_mode_remeasures_one_direction_among_several_inputs(columns_settle):
    a, b, c = leaf(3, 4, seed=15), leaf(3, 4, seed=16), leaf(3, seed=17)
    # b's 12 columns are judged element by element, as full mode judges them: each is named
    # 0.05% off
    with pytest.warns(fastgrad.GradcheckWarning, match=(
            r"12 element\(s\) .* input1\[\d, \d\] -> output0\[\d\] \(rel. error 5.0e-04\)")):
        assert ft.gradcheck(ScaledSecond.apply, (a, b, c), fast_mode=True)


class ForwardOff(torch.autograd.Function):
    """exp(x) with a right backward and a forward-mode jvp 0.05% off: beyond fastgrad's band,
    within torch's rtol."""

    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * y * 1.0005


def test_a_forward_ad_question_is_not_settled_by_the_backwards_columns(columns_settle):
    """Only the forward-AD direction is questioned: the backward's Jacobian columns (right)
    cannot answer it, so it is warned about by name, as before columns settled questions."""
    x = leaf(6, seed=21)
    assert torch.autograd.gradcheck(ForwardOff.apply, (x,), fast_mode=True,
                                    check_forward_ad=True)
    with pytest.warns(fastgrad.GradcheckWarning, match=r"input0 -> output0 \(forward AD\)"):
        assert ft.gradcheck(ForwardOff.apply, (x,), fast_mode=True, check_forward_ad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastgrad.GradcheckWarning)
        assert ft.gradcheck(ForwardOff.apply, (x,), fast_mode=True)  # the backward is right
