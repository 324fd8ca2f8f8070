"""fastgrad.torch.gradcheck / gradgradcheck: planted bugs are caught where they are, correct
gradients (with kinks, masked entries, complex values) pass."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError  # noqa: E402

import fastgrad  # noqa: E402
import fastgrad.torch as ft  # noqa: E402

F64 = torch.float64


def leaf(*shape, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(True)


class TwoOutputs(torch.autograd.Function):
    """(a * b, a + sin(b)); ``scale`` plants a bug in d output1 / d b."""

    scale = 1.0

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b, a + b.sin()

    @staticmethod
    def backward(ctx, g1, g2):
        a, b = ctx.saved_tensors
        return g1 * b + g2, g1 * a + TwoOutputs.scale * g2 * b.cos()


@pytest.fixture
def buggy_two_outputs():
    TwoOutputs.scale = 1.01
    yield TwoOutputs
    TwoOutputs.scale = 1.0


@pytest.fixture
def always_vmap(monkeypatch):
    """For tests of the vmap path itself: a batched call is tried however cheap the function
    (rows that cost less one by one than a vmap call's overhead otherwise go one by one, by
    the timing of a plain call)."""
    from fastgrad.torch.dropin.flatten import TorchFunction

    monkeypatch.setattr(TorchFunction, "batch_call_seconds", 0.0)


def test_wrong_backward_of_one_output_names_that_output_and_input(buggy_two_outputs):
    a, b = leaf(4, seed=1), leaf(4, seed=2)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(buggy_two_outputs.apply, (a, b))
    report = info.value.report
    failing = [name for name, s in report.segments.items() if not s.passed]
    assert failing == ["input1/output1"]
    assert {c.where.split(" -> ")[1][:7] for c in report.failures} == {"output1"}
    assert "input1[0] -> output1[0]" in str(info.value)
    # existing suites catch torch's class, and fastgrad's pytest plugin its own
    assert isinstance(info.value, TorchGradcheckError)
    assert isinstance(info.value, AssertionError)


def test_correct_backward_passes_and_caller_tensors_untouched():
    a, b = leaf(3, 2, seed=3), leaf(3, 2, seed=4)
    before = (a.detach().clone(), b.detach().clone())
    assert ft.gradcheck(TwoOutputs.apply, (a, b)) is True
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])
    assert a.grad is None and b.grad is None


def test_raise_exception_false_returns_false(buggy_two_outputs):
    a, b = leaf(4, seed=1), leaf(4, seed=2)
    assert ft.gradcheck(buggy_two_outputs.apply, (a, b), raise_exception=False) is False


def test_torch_class_in_pytest_raises(buggy_two_outputs):
    with pytest.raises(TorchGradcheckError):
        ft.gradcheck(buggy_two_outputs.apply, (leaf(4, seed=1), leaf(4, seed=2)))


class Scaled(torch.autograd.Function):
    """x ** 2 with a backward 0.05% off: torch's rtol 1e-3 lets it through, fastgrad's band
    (1e-4) does not: a warning by the caller's tolerance, a failure with strict=True."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g * 1.0005


def test_a_small_error_torch_passes_warns_and_fails_when_strict(monkeypatch):
    monkeypatch.delenv("FASTGRAD_STRICT", raising=False)
    x = leaf(6, seed=5)
    assert torch.autograd.gradcheck(Scaled.apply, (x,))
    with pytest.warns(fastgrad.GradcheckWarning) as caught:
        assert ft.gradcheck(Scaled.apply, (x,)) is True
    (warning,) = caught
    assert len(warning.message.elements) == 6
    assert "input0[3] -> output0[3] (rel. error 5.0e-04)" in str(warning.message)
    assert not ft.gradcheck(Scaled.apply, (x,), raise_exception=False, strict=True)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(Scaled.apply, (x,), strict=True)
    assert [n for n, s in info.value.report.segments.items() if not s.passed] == ["input0/output0"]
    # the suite's default, as pytest --fastgrad-strict sets it
    monkeypatch.setenv("FASTGRAD_STRICT", "1")
    assert not ft.gradcheck(Scaled.apply, (x,), raise_exception=False)


class Cube(torch.autograd.Function):
    """x ** 3 whose backward detaches x: first order right, second order missing."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x ** 3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x.detach() ** 2


def test_wrong_double_backward_fails_gradgradcheck_only():
    x = leaf(5, seed=6)
    assert ft.gradcheck(Cube.apply, (x,))
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradgradcheck(Cube.apply, (x,))
    failing = [name for name, s in info.value.report.segments.items() if not s.passed]
    assert failing == ["input0/grad_input0"]
    assert ft.gradgradcheck(lambda x: x ** 3, (x,))


class Exp(torch.autograd.Function):
    """exp with a correct backward and a jvp that forgets the exp."""

    @staticmethod
    def forward(x):
        return x.exp()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y

    @staticmethod
    def jvp(ctx, t):
        return t  # bug: should be t * exp(x)


def test_wrong_jvp_fails_only_with_check_forward_ad():
    x = leaf(4, seed=7)
    assert ft.gradcheck(Exp.apply, (x,))
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(Exp.apply, (x,), check_forward_ad=True)
    failing = [name for name, s in info.value.report.segments.items() if not s.passed]
    assert failing == ["input0/output0 (forward AD)"]
    assert ft.gradcheck(torch.exp, (x,), check_forward_ad=True)


class Square(torch.autograd.Function):
    """z * z on complex z; ``conj`` False plants the missing conjugate of torch's convention."""

    conj = True

    @staticmethod
    def forward(ctx, z):
        ctx.save_for_backward(z)
        return z * z

    @staticmethod
    def backward(ctx, g):
        (z,) = ctx.saved_tensors
        d = 2 * z
        return g * (d.conj() if Square.conj else d)


def test_complex_missing_conjugate_is_caught_in_named_parts():
    z = leaf(3, seed=8, dtype=torch.complex128)
    assert ft.gradcheck(Square.apply, (z,))
    Square.conj = False
    try:
        with pytest.raises(ft.GradcheckError) as info:
            ft.gradcheck(Square.apply, (z,))
    finally:
        Square.conj = True
    wheres = {c.where for c in info.value.report.failures}
    assert any(".imag[" in w for w in wheres)
    assert all(w.startswith("input0.") and "output0." in w for w in wheres)


def test_complex_builtin_ops_pass():
    z = leaf(4, seed=9, dtype=torch.complex128)
    assert ft.gradcheck(lambda z: (z * z.conj() + z.exp(), z.abs(), z.angle()), (z,))


def test_sgn_zero_tensor_gradient():
    assert ft.gradcheck(torch.sgn, (leaf(5, seed=10),))


def test_masked_minus_inf_entries_are_skipped():
    x = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(11))
    x[0, 2] = x[1, 0] = -float("inf")
    x.requires_grad_(True)
    assert ft.gradcheck(lambda x: torch.softmax(x, -1), (x,))
    # the report says which were skipped
    ft_wrong = ft.gradcheck(lambda x: torch.softmax(x, -1) * (1 + 1e-3 * x.detach().isfinite()
                                                             * x.detach().clamp(-1, 1)),
                            (x,), raise_exception=False)
    assert ft_wrong is False


def test_masked_report_lists_skipped_coordinates(buggy_two_outputs):
    a, b = leaf(3, seed=12), leaf(3, seed=13)
    with torch.no_grad():
        a[1] = float("-inf")
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(buggy_two_outputs.apply, (a, b))
    assert info.value.report.skipped == ("input0[1]",)
    assert "skipped" in str(info.value)


def test_kinks_and_pass_through_arguments():
    # x near the ReLU's and abs's kinks (torch's fixed step of 1e-6 crosses them), an integer
    # index tensor and a float passed through, an integer output that is not differentiable
    x = torch.tensor([1e-7, -3e-7, 0.5, -0.8, 2e-7], dtype=F64, requires_grad=True)
    idx = torch.tensor([4, 0, 2])

    def fn(x, idx, scale):
        y = torch.relu(x) * scale + x.abs()
        return y[idx], y.argmax()

    assert ft.gradcheck(fn, (x, idx, 3.0))
    assert not torch.autograd.gradcheck(fn, (x, idx, 3.0), raise_exception=False)


class _Cube(Cube):
    """Cube's x^3 with its backward ``scale`` times off at element 1 (no vmap rule: vmap
    raises)."""

    scale = 1.0

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        grad = 3 * x ** 2 * g
        grad[1] = grad[1] * _Cube.scale
        return grad


class _CubeLayer(torch.nn.Module):
    calls = 0

    def forward(self, x):
        _CubeLayer.calls += 1
        return _Cube.apply(x)


def test_a_vmap_refusal_is_remembered_for_the_next_check_of_the_same_module_class(
        monkeypatch, always_vmap):
    """A suite checks one module class on many inputs: vmap raises at the first check; later
    checks of that class (new instances) go one by one at once, one call fewer, the same
    verdict, and say why. Another module class still gets vmap, and so does the same class in
    eval mode."""
    from fastgrad.checks.jacobian import columns

    monkeypatch.setattr(columns, "_REFUSED", type(columns._REFUSED)())
    monkeypatch.setattr(_Cube, "scale", 1.05)
    reports, calls = [], []
    for seed in (1, 1):
        _CubeLayer.calls = 0
        with pytest.raises(ft.GradcheckError, match=r"input0\[1\]|\(1,\)|\[1\]") as info:
            ft.gradcheck(_CubeLayer(), (leaf(3, seed=seed),))
        reports.append(info.value.report)
        calls.append(_CubeLayer.calls)
    first, second = reports
    assert first.path == "per-call" and "vmap raised" in first.path_reason
    assert "not tried again" not in first.path_reason
    assert second.path == "per-call" and "not tried again" in second.path_reason
    assert calls[1] == calls[0] - 1
    assert [r.max_rel_error for r in reports][0] == [r.max_rel_error for r in reports][1]
    assert ft.gradcheck(torch.nn.Tanh(), (leaf(3, seed=2),))  # another class: batched as before
    assert ("module", (torch.nn.Tanh, True)) not in columns._REFUSED
    assert ("module", (_CubeLayer, True)) in columns._REFUSED
    # the same class in eval mode is another function (batch norm vmaps there): tried again
    with pytest.raises(ft.GradcheckError, match=r"input0\[1\]|\(1,\)|\[1\]") as info:
        ft.gradcheck(_CubeLayer().eval(), (leaf(3, seed=1),))
    assert "vmap raised" in info.value.report.path_reason
    assert "not tried again" not in info.value.report.path_reason


def test_a_functions_identity_never_matches_a_new_object_at_a_dead_ones_address():
    """The memory of vmap refusals keys a function by what it is: one autograd.Function class's
    apply is not another's, a wrapper closing over one object is not one closing over another,
    and an object that died is not matched by a new one that reuses its address (a local
    class refused in one test once sent a later test's class one by one)."""
    import gc

    from fastgrad.torch.dropin.flatten import function_identity

    def make_class():
        class Local(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 2

            @staticmethod
            def backward(ctx, g):
                return g * 2
        return Local

    one, two = make_class(), make_class()
    assert function_identity(one.apply) != function_identity(two.apply)
    assert function_identity(one.apply) == function_identity(one.apply)

    class Box:
        pass

    def wrapper_of(obj):
        return lambda x: x * 2 if obj else x

    first = Box()
    key = function_identity(wrapper_of(first))
    assert key == function_identity(wrapper_of(first))
    del first
    gc.collect()
    for _ in range(200):  # new objects, some at the dead one's address
        assert function_identity(wrapper_of(Box())) != key


def test_functions_of_one_shape_over_different_objects_are_different_functions():
    """PyTorch's op_db harness wraps every op in one closure over the op's OpInfo (a dataclass
    with eq=True: unhashable) and its sample in lists. Such functions were one function to the
    memory of vmap refusals: batch norm's refusal sent every later op's check one by one (300
    checks, op_db's gradcheck time 2x). They differ now; an object that cannot be told apart
    from another leaves the function without an identity (no memory)."""
    import dataclasses

    from fastgrad.torch.dropin.flatten import function_identity

    @dataclasses.dataclass
    class Info:  # eq=True: unhashable, as OpInfo
        name: str

    def harness(info, items):
        return lambda *x: (info.name, items, x)

    norm, pool = Info("batch_norm"), Info("fractional_max_pool3d")
    t1, t2 = torch.zeros(1), torch.zeros(1)
    assert function_identity(harness(norm, [t1])) != function_identity(harness(pool, [t1]))
    assert function_identity(harness(norm, [t1])) != function_identity(harness(norm, [t2]))
    assert function_identity(harness(norm, [t1, 2])) == function_identity(harness(norm, [t1, 2]))
    assert function_identity(harness(norm, [object()])) is None  # no weak reference to it


def test_vmap_fallback_is_reported(buggy_two_outputs, always_vmap):
    a, b = leaf(2, seed=1), leaf(2, seed=2)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(buggy_two_outputs.apply, (a, b))
    report = info.value.report
    assert report.path == "per-call" and "vmap raised" in report.path_reason

    class Sin(torch.autograd.Function):  # functorch-ready (vmap rule generated), backward 1% off
        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x.sin()

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * x.cos() * 1.01

    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(Sin.apply, (leaf(6, seed=3),))
    assert info.value.report.path == "vmap"


def test_fast_mode_localizes_the_wrong_coordinates():
    x = leaf(40, seed=14)

    class OneWrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.tanh()

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            d = 1 - x.tanh() ** 2
            d[17] *= 1.05
            return g * d

    assert ft.gradcheck(torch.tanh, (x,), fast_mode=True)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(OneWrong.apply, (x,), fast_mode=True)
    assert list(info.value.report.suspects) == [17]


def test_batched_grad_and_dtypes_options():
    x = leaf(3, 2, seed=15)
    assert ft.gradcheck(lambda x: x.sin().sum(0), (x,), check_batched_grad=True,
                        check_grad_dtypes=True, check_batched_forward_grad=True,
                        check_forward_ad=True)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="requires_grad"):
        ft.gradcheck(torch.sin, (torch.randn(3, dtype=F64),))
    with pytest.raises(ValueError, match="atol"):
        ft.gradcheck(torch.sin, (leaf(3),), atol=-1.0)


def test_safe_softmax_with_a_fully_masked_row():
    safe_softmax = getattr(torch, "_safe_softmax", None)
    if safe_softmax is None:
        pytest.skip("this torch has no _safe_softmax")
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(16))
    x[1, :] = -float("inf")  # a fully masked row: _safe_softmax gives zeros there
    x[0, 3] = -float("inf")
    x.requires_grad_(True)
    assert ft.gradcheck(lambda x: safe_softmax(x, -1), (x,))


def test_non_finite_value_at_a_perturbed_point_names_input_and_output():
    x = torch.tensor([1e-9, 0.5, 2.0], dtype=F64, requires_grad=True)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(torch.log, (x,))
    (failure,) = info.value.report.failures
    assert failure.verdict == "nan" and failure.where == "input0[0] -> output0[0]"


def test_a_float32_test_tuned_for_torch_keeps_passing():
    x = leaf(6, seed=17, dtype=torch.float32)

    def fn(x):
        return (x.sin() * x.exp()).cumsum(0)

    options = {"eps": 1e-3, "atol": 1e-2, "rtol": 1e-2}
    assert torch.autograd.gradcheck(fn, (x,), **options)
    assert ft.gradcheck(fn, (x,), **options)
    assert ft.gradcheck(fn, (x,))  # float32 steps and tolerance by default


def _storage_view(size, offset, seed):
    """A 1-d input that is a view at ``offset`` into a larger storage (as op_db's
    as_strided partial_views sample)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(size + 2 * offset, generator=gen, dtype=F64)[offset:offset + size]


def test_as_strided_of_a_view_with_an_offset_checks_one_geometry():
    # as_strided with storage_offset=0 reads the storage from its start: the function depends on
    # where the input lives. The analytic passes (backward and forward AD) and the perturbed
    # evaluations must all use the same geometry, or forward AD reads zeros where the numeric
    # Jacobian sees the input (op_db's as_strided partial_views sample 1 failed this way).
    x = _storage_view(10, 5, seed=18).requires_grad_(True)

    def fn(t):
        return torch.as_strided(t, (2, 2), (1, 2), storage_offset=0)

    assert ft.gradcheck(fn, (x,), check_forward_ad=True)
    # and a transposed (non-contiguous) input through as_strided
    y = leaf(3, 3, seed=19).detach().t().requires_grad_(True)
    assert ft.gradcheck(fn, (y,), check_forward_ad=True)


def test_checks_in_sequence_do_not_leak_into_each_other():
    # two different functions with the same shapes, in alternation: a wrong jvp is caught after a
    # correct check and a correct one passes after the failure (nothing remembered per shape,
    # per id() or per fallback decision flips a verdict)
    x = leaf(4, seed=20)
    y = _storage_view(4, 3, seed=21).requires_grad_(True)
    for _ in range(2):
        assert ft.gradcheck(torch.exp, (x,), check_forward_ad=True)
        assert not ft.gradcheck(Exp.apply, (x,), check_forward_ad=True, raise_exception=False)
        assert ft.gradcheck(lambda t: torch.as_strided(t, (2, 2), (1, 2)), (y,),
                            check_forward_ad=True)
        assert not ft.gradcheck(Exp.apply, (y,), check_forward_ad=True, raise_exception=False)


class Doubles(torch.autograd.Function):
    """2 x in torch.func's style (forward without ctx, setup_context): the base of the test
    Functions below, which plant their bugs in backward or in a vmap rule."""

    @staticmethod
    def forward(x):
        return x * 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass


class WrongBatchingRule(Doubles):
    """2 x with a vmap rule that computes 3 x; ``scale`` plants a bug in the backward."""

    scale = 1.0

    @staticmethod
    def backward(ctx, g):
        return g * 2 * WrongBatchingRule.scale

    @staticmethod
    def vmap(info, in_dims, x):
        return x * 3, in_dims[0]


def test_vmap_that_changes_the_values_is_not_trusted(always_vmap):
    # the vmap'd batch is probed at the unperturbed input against a plain call: a batching rule
    # that changes the values sends every evaluation one by one (else the numeric Jacobian would
    # read 3 where the function's derivative is 2: a false alarm)
    x = leaf(5, seed=22)
    assert ft.gradcheck(WrongBatchingRule.apply, (x,))
    WrongBatchingRule.scale = 1.01
    try:
        with pytest.raises(ft.GradcheckError) as info:  # a failing check's report says why
            ft.gradcheck(WrongBatchingRule.apply, (x,))
    finally:
        WrongBatchingRule.scale = 1.0
    report = info.value.report
    assert report.path == "per-call" and "vmap changed the values" in report.path_reason
    assert {c.where for c in report.failures} == {f"input0[{i}] -> output0[{i}]" for i in range(5)}


class VmapCube(torch.autograd.Function):
    """x ** 3 for torch.func (setup_context, a generated vmap rule); the backward detaches x:
    the second derivative is missing."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x.detach() ** 2


def test_gradgradcheck_batches_the_backward_with_vmap_and_falls_back(always_vmap):
    # the backward, written with torch.func.vjp, is vmap'd over the perturbed inputs; a wrong
    # double backward is caught on that path, and on the per-call one when vmap cannot run the
    # function (an old-style autograd.Function)
    x, y = leaf(6, seed=23), leaf(6, seed=24)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradgradcheck(lambda a, b: VmapCube.apply(a) * b, (x, y))
    report = info.value.report
    assert report.path == "vmap"
    assert [n for n, s in report.segments.items() if not s.passed] == ["input0/grad_input0"]
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradgradcheck(lambda a, b: Cube.apply(a) * b, (x, y))
    report = info.value.report
    assert report.path == "per-call" and "vmap raised" in report.path_reason
    assert [n for n, s in report.segments.items() if not s.passed] == ["input0/grad_input0"]
    # correct second derivatives pass on the batched path, with an input the backward does not
    # reach (its None gradient dropped, as torch does)
    assert ft.gradgradcheck(lambda a, b, c: (a.sin() * b, b.exp()), (x, y, leaf(2, seed=25)))


def test_a_function_that_changes_between_calls_is_refused_with_the_reason():
    # random ops (vmap refuses them: the plain second call shows them) and state kept between
    # calls (vmap runs it, the probe at x disagrees, the plain second call shows it). The
    # second call comes before any re-check: dropout's random one-sided slopes would otherwise
    # pass its 48 columns as kinks crossed (they did when it came after)
    x = leaf(5, seed=26)
    wide = leaf(48, seed=26)  # two dropout masks of 48 elements are equal with chance 2^-48
    with pytest.raises(ft.GradcheckError, match="different values for the same inputs"):
        ft.gradcheck(lambda t: torch.nn.functional.dropout(t, 0.5, training=True), (wide,))
    calls = iter(range(1, 1000))
    with pytest.raises(ft.GradcheckError, match="different values for the same inputs"):
        ft.gradcheck(lambda t: t * next(calls), (x,))
    assert ft.gradcheck(lambda t: torch.nn.functional.dropout(t, 0.5, training=False), (x,))


class SparseTimes(torch.autograd.Function):
    """a.to_dense() @ w for a sparse COO ``a``: the gradient of ``a`` is masked to a's pattern
    (``dense`` False, masked semantics) or the whole dense gradient; ``bug`` scales it at (1, 2)."""

    bug, dense = 1.0, False

    @staticmethod
    def forward(ctx, a, w):
        ctx.save_for_backward(a, w)
        return a.to_dense() @ w

    @staticmethod
    def backward(ctx, g):
        a, w = ctx.saved_tensors
        full = g @ w.t()
        full[1, 2] *= SparseTimes.bug
        grad_a = full.to_sparse() if SparseTimes.dense else full.sparse_mask(a.coalesce())
        return grad_a, a.to_dense().t() @ g


def _sparse_input(layout=torch.sparse_coo):
    dense = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(27))
    dense[0, 1] = dense[2, 0] = dense[2, 3] = dense[1, 0] = 0.0  # unspecified elements
    sparse = dense.to_sparse() if layout == torch.sparse_coo else dense.to_sparse_csr()
    return sparse.requires_grad_(True)


@pytest.fixture
def sparse_times():
    yield SparseTimes
    SparseTimes.bug, SparseTimes.dense = 1.0, False


def test_masked_sparse_input_perturbs_and_judges_the_specified_elements(sparse_times):
    a, w = _sparse_input(), leaf(4, 2, seed=28)
    assert ft.gradcheck(sparse_times.apply, (a, w), masked=True)
    sparse_times.bug = 1.01
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(sparse_times.apply, (a, w), masked=True)
    report = info.value.report
    assert [n for n, s in report.segments.items() if not s.passed] == ["input0/output0"]
    assert {c.input_where for c in report.failures} == {"input0[1, 2]"}
    # only the 8 specified elements of a are coordinates
    assert report.segments["input0/output0"].checked == 8 * 6
    assert "sparse inputs" in report.path_reason


def test_unmasked_sparse_input_needs_the_dense_gradient(sparse_times):
    # torch's masked=False (and None): every element is perturbed (the input passed fully
    # specified) and the gradient must be the dense one: a masked backward fails there
    a, w = _sparse_input(), leaf(4, 2, seed=28)
    for masked in (False, None):
        with pytest.raises(ft.GradcheckError) as info:
            ft.gradcheck(sparse_times.apply, (a, w), masked=masked)
        assert {c.input_where for c in info.value.report.failures} == {
            "input0[0, 1]", "input0[1, 0]", "input0[2, 0]", "input0[2, 3]"}
    assert torch.autograd.gradcheck(sparse_times.apply, (a, w), masked=False,
                                    raise_exception=False) is False  # torch agrees
    sparse_times.dense = True
    assert ft.gradcheck(sparse_times.apply, (a, w), masked=False)


def test_csr_input_through_builtin_ops():
    a, w = _sparse_input(torch.sparse_csr), leaf(4, 2, seed=29)
    assert ft.gradcheck(lambda a, w: (a.to_dense() @ w).sin(), (a, w), masked=True)
    assert ft.gradcheck(lambda a, w: (a.to_dense(masked_grad=False) @ w).sin(), (a, w),
                        masked=False)
    with pytest.raises(ValueError, match="forward-mode AD of sparse inputs"):
        ft.gradcheck(lambda a, w: a.to_dense() @ w, (a, w), masked=True, check_forward_ad=True)


class ScaledSin(torch.autograd.Function):
    """scale * sin(x), elementwise (a diagonal Jacobian); ``bug`` scales one derivative."""

    bug, at = 1.0, 0

    @staticmethod
    def forward(ctx, x, scale):
        ctx.save_for_backward(x)
        ctx.scale = scale
        return scale * x.sin()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = ctx.scale * x.cos()
        d[ScaledSin.at] *= ScaledSin.bug
        return g * d, None


def test_large_mostly_zero_jacobians_are_judged_where_they_can_fail():
    # a 300 x 300 diagonal Jacobian: the elements within atol of their numeric value are not
    # judged one by one on a pass; large values (differences above atol, relative error tiny)
    # pass, and one derivative 0.5% off among 90000 elements is caught and named
    x = leaf(300, seed=30)
    assert ft.gradcheck(ScaledSin.apply, (x, 1e7))
    ScaledSin.bug, ScaledSin.at = 1.005, 123
    try:
        with pytest.raises(ft.GradcheckError) as info:
            ft.gradcheck(ScaledSin.apply, (x, 1.0))
    finally:
        ScaledSin.bug, ScaledSin.at = 1.0, 0
    assert [c.where for c in info.value.report.failures] == ["input0[123] -> output0[123]"]
    assert info.value.report.segments["input0/output0"].checked == 300 * 300


class TwiceWrongAt5(Doubles):
    """2 x for torch.func too (a generated vmap rule); the backward's element 5 is 1% off."""

    generate_vmap_rule = True

    @staticmethod
    def backward(ctx, g):
        scale = torch.ones(g.shape[-1], dtype=g.dtype)
        scale[5] = 1.01
        return g * 2 * scale


def test_batched_rows_are_probed_on_every_row_against_the_real_backward(monkeypatch):
    """The analytic rows come from one batched backward (is_grads_batched), probed against the
    backward users run. A batching rule that is right where the real backward is wrong must not
    hide the bug on any row: the probe is one plain backward of a random combination of every
    row (a probe of the first row of each output let row 5 through)."""
    import numpy as np

    from fastgrad.torch.dropin import analytic, flatten

    real = analytic.vjp_rows

    def right_when_batched(fn, leaves, outputs, rows, batched):
        out = real(fn, leaves, outputs, rows, batched)
        if batched:  # a batching rule computing the true Jacobian, 2 I
            out[:] = 2.0 * np.eye(fn.layout.size)[rows]
        return out

    monkeypatch.setattr(analytic, "vjp_rows", right_when_batched)
    x = leaf(8, seed=23)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(TwiceWrongAt5.apply, (x,))
    report = info.value.report
    assert {c.where for c in report.failures} == {"input0[5] -> output0[5]"}
    assert any("differ from the backward itself" in n for n in report.notes)
    # the probe's own rule: agreement within roundoff, a 1% change on any one row shows
    fn = flatten.TorchFunction(lambda t: t.sin() * 3, (x,), ["input0"], needs_grad=False)
    leaves, outputs, positions = fn.reference()
    fn.set_outputs(outputs, positions)
    jac = real(fn, leaves, outputs, np.arange(8), batched=False)
    assert analytic.batched_rows_agree(fn, leaves, outputs, jac, 0)
    for row in range(8):
        off = jac.copy()
        off[row] *= 1.01
        assert not analytic.batched_rows_agree(fn, leaves, outputs, off, 0)
    nan = jac.copy()
    nan[3, 3] = np.nan  # a non-finite entry the real backward does not have
    assert not analytic.batched_rows_agree(fn, leaves, outputs, nan, 0)


def test_a_function_that_fixes_its_seed_at_every_call_is_batched_with_the_same_randomness(always_vmap):
    # torch's own test wrappers (wrapper_set_seed) reseed before a random op: every call draws
    # the same mask, so vmap(randomness="same") gives the one-by-one values (checked at x)
    x = leaf(6, seed=27)

    def seeded(t):
        torch.manual_seed(7)
        return torch.nn.functional.dropout(t, 0.5, training=True) * 3

    assert ft.gradcheck(seeded, (x,))
    assert ft.gradgradcheck(seeded, (x,))

    def seeded_wrong(t):
        torch.manual_seed(1)  # keeps element 5 (and drops 4 and 7)
        return torch.nn.functional.dropout(TwiceWrongAt5.apply(t), 0.5, training=True)

    y = leaf(8, seed=28)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(seeded_wrong, (y,))
    report = info.value.report
    assert report.path == "vmap" and "randomness='same'" in report.path_reason
    assert {c.where for c in report.failures} == {"input0[5] -> output0[5]"}


class MatVec(torch.autograd.Function):
    """A @ x; ``bug`` scales the gradient of x at element 777."""

    bug = 1.0

    @staticmethod
    def forward(ctx, A, x):
        ctx.save_for_backward(A, x)
        return A @ x

    @staticmethod
    def backward(ctx, g):
        A, x = ctx.saved_tensors
        grad_x = A.t() @ g
        grad_x[777] *= MatVec.bug
        return None, grad_x


def test_a_large_jacobian_is_screened_chunk_by_chunk_and_not_kept(monkeypatch):
    """A Jacobian over STREAM_MIN_VALUES (lowered here so that the test stays fast: 1,000 inputs
    x 800 outputs, in chunks of 256 coordinates): the numeric columns are screened as the
    chunks come; a passing check never builds the two Jacobian-sized loss arrays, and a planted
    bug is still named by its element."""
    from fastgrad.checks.jacobian import columns
    from fastgrad.torch.dropin import flatten, full

    monkeypatch.setattr(full, "STREAM_MIN_VALUES", 100_000)
    monkeypatch.setattr(columns, "BATCH_VALUES", 512 * 1000)
    gen = torch.Generator().manual_seed(29)
    A = torch.randn(800, 1000, generator=gen, dtype=F64)
    x = leaf(1000, seed=30)
    kept = []
    real_pairs = flatten.Evaluator._pairs

    def spy(self, index, step):
        kept.append(index.size)
        return real_pairs(self, index, step)

    monkeypatch.setattr(flatten.Evaluator, "_pairs", spy)
    assert ft.gradcheck(lambda v: MatVec.apply(A, v), (x,))
    # backward and forward AD judged on one stream of the columns
    assert ft.gradcheck(lambda v: torch.tanh(A @ v / 30), (x,), check_forward_ad=True)
    assert kept == []  # passed without keeping the columns
    MatVec.bug = 1.01  # beyond torch's rtol too (1.001 is within it: a GradcheckWarning)
    try:
        with pytest.raises(ft.GradcheckError) as info:
            ft.gradcheck(lambda v: MatVec.apply(A, v), (x,))
    finally:
        MatVec.bug = 1.0
    failures = info.value.report.failures
    assert {c.where.split(" -> ")[0] for c in failures} == {"input0[777]"}
    # the output elements where 0.1% of the gradient is beyond atol (1e-5)
    assert 700 < len(failures) <= 800
    assert kept[0] == 1000  # the failing check judged the kept columns (then re-checks)


class DriftingBackward(torch.autograd.Function):
    """2 x; every backward call scales its result by 1 + 1e-7 * (calls so far): right to within
    the tolerances, but a second backward pass does not give the first one's values."""

    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        DriftingBackward.calls += 1
        return g * 2 * (1 + 1e-7 * DriftingBackward.calls)


@pytest.mark.parametrize("n", [3, 8])  # one backward per row; batched rows (above 4)
def test_a_backward_that_is_not_reentrant_fails_and_a_reentrant_one_passes(n):
    x = leaf(n, seed=31)
    with pytest.raises(ft.GradcheckError, match="not reentrant"):
        ft.gradcheck(DriftingBackward.apply, (x,), nondet_tol=1e-12)
    assert not ft.gradcheck(DriftingBackward.apply, (x,), raise_exception=False)
    # a deterministic backward is reentrant, nondet_tol or not (the second pass is batched
    # when the first was)
    assert ft.gradcheck(lambda t: torch.tanh(t) * 2, (x,), nondet_tol=1e-12)
    assert ft.gradgradcheck(lambda t: torch.tanh(t) * 2, (x,), nondet_tol=1e-12)


class ScaledRows(torch.autograd.Function):
    """tanh(x) whose backward is off by ``factor`` (5%) on the coordinates ``ctx.wrong``."""

    @staticmethod
    def forward(ctx, x, wrong, factor=1.05):
        ctx.save_for_backward(x)
        ctx.wrong, ctx.factor = wrong, factor
        return x.tanh()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        d = 1 - x.tanh() ** 2
        d[ctx.wrong] *= ctx.factor
        return g * d, None, None


def test_a_full_mode_failure_stops_at_its_worst_coordinate():
    """Several coordinates wrong at the first step: the worst is re-checked and its failure
    ends the check (the others are shown at the first step, the report says so), in fewer
    evaluations than judging every one; torch's gradcheck fails it too."""
    x = leaf(12, seed=30)
    calls = []

    def f(t):
        calls.append(1)
        return ScaledRows.apply(t, [2, 5, 9])

    with pytest.raises(TorchGradcheckError):
        torch.autograd.gradcheck(f, (x,))
    calls.clear()
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(f, (x,))
    report = info.value.report
    assert "stopped at the first failure" in str(info.value)
    assert set(report.suspects.tolist()) == {2, 5, 9}
    assert report.rechecked == 1  # the worst coordinate, alone
    # x twice (the reference and the nondeterminism check), the columns, and the re-checks of
    # one coordinate (three smaller steps at most), not of three
    assert len(calls) <= 2 + 2 * 12 + 2 * 3, len(calls)


def test_a_full_mode_warning_is_settled_by_its_worst_coordinate():
    """Three coordinates 5e-4 off: beyond fastgrad's band, within torch's default rule (a
    solver's tolerance, not a wrong formula). The coordinate furthest beyond the band is
    re-checked alone; it stays beyond, so the check passes with a warning naming all three
    (the others at their first step), in the evaluations of one coordinate's re-checks, not
    three. strict=True fails the three."""
    x = leaf(12, seed=30)
    calls = []

    def f(t):
        calls.append(1)
        return ScaledRows.apply(t, [2, 5, 9], 1.0005)

    assert torch.autograd.gradcheck(f, (x,))
    calls.clear()
    with pytest.warns(fastgrad.GradcheckWarning) as caught:
        assert ft.gradcheck(f, (x,))
    message = str(caught[0].message)
    assert all(f"input0[{i}] -> output0[{i}]" in message for i in (2, 5, 9)), message
    assert len(calls) <= 2 + 2 * 12 + 2 * 3, len(calls)
    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(f, (x,), strict=True)
    assert set(info.value.report.suspects.tolist()) == {2, 5, 9}
    # the right backward: no warning, nothing re-checked for it
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastgrad.GradcheckWarning)
        assert ft.gradcheck(lambda t: ScaledRows.apply(t, [], 1.0), (x,))


def test_a_kink_at_the_worst_first_step_failure_is_excused_and_the_rest_judged():
    """relu at coordinates closer to 0 than the step: the first step fails there (every one a
    kink crossing). The worst is excused by its re-checks, so every coordinate is re-checked
    as before: the right backward passes (no false alarm), and a planted bug beside the
    kinks fails at its own coordinate."""
    x = torch.tensor([1e-9, -2e-9, 3e-9, 0.5, -0.7, 0.9], dtype=F64, requires_grad=True)
    assert ft.gradcheck(torch.relu, (x,))

    class WrongAt4(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            ctx.save_for_backward(t)
            return t.relu()

        @staticmethod
        def backward(ctx, g):
            (t,) = ctx.saved_tensors
            d = (t > 0).to(t.dtype)
            d[4] = 0.3  # relu'(-0.7) is 0
            return g * d

    with pytest.raises(ft.GradcheckError) as info:
        ft.gradcheck(WrongAt4.apply, (x,))
    assert info.value.report.suspects.tolist() == [4]
