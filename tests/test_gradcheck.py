"""gradcheck and gradgradcheck catch each kind of wrong backward on the right items, and pass correct ops."""

from __future__ import annotations

import textwrap

import pytest

HEADER = """
import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput

NS = "{ns}"

def make_op(name, fwd, bwd):
    op = torch.library.custom_op(f"{{NS}}::{{name}}", mutates_args=())(fwd)
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*[i for i in inputs if isinstance(i, Tensor)])
    op.register_autograd(bwd, setup_context=setup_context)
    return op

def one_input(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 2, device=device, dtype=dtype, requires_grad=requires_grad))

def two_inputs(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 3), make(4, 3))
    yield SampleInput(make(4, 3), make(3), sample_name="broadcast")
"""


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(test_ops=HEADER.format(ns=ns) + textwrap.dedent(body))


CORRECT_MUL = """
def _sum_to(g, shape):
    while g.dim() > len(shape):
        g = g.sum(0)
    return g

def mul(x: Tensor, y: Tensor) -> Tensor:
    return x * y

def mul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    return _sum_to(grad * y.conj(), x.shape), _sum_to(grad * x.conj(), y.shape)
"""


def test_correct_op_passes_every_dtype_and_both_checks(pytester, ns, run):
    write(
        pytester,
        ns,
        CORRECT_MUL
        + """
make_op("mul", mul, mul_backward)

@pytest.mark.customop(f"{NS}::mul", samples=two_inputs, devices=["cpu"], checks=["gradcheck", "gradgradcheck"],
                      dtypes=[torch.float64, torch.complex128, torch.float32, torch.complex64,
                              torch.float16, torch.bfloat16])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["*test_mul[[]cpu-bfloat16-gradgradcheck[]] PASSED*"])


def test_wrong_sign_is_caught_by_gradcheck_naming_the_input(pytester, ns, run):
    write(
        pytester,
        ns,
        CORRECT_MUL
        + """
def wrong(ctx, grad):
    gx, gy = mul_backward(ctx, grad)
    return gx, -gy

make_op("mul", mul, wrong)

@pytest.mark.customop(f"{NS}::mul", samples=two_inputs, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"{ns}::mul gradcheck failed on cpu float64: 2 of 2 sample(s)",
            "  sample 0: SampleInput(Tensor([[]4, 3[]], float64, cpu, requires_grad), *",
            "    gradient of input 'y': 12 of 12 element(s) differ; worst at index (*): expected * (finite differences), got * (backward); abs err *, rel err *",
            "  sample 1: SampleInput 'broadcast'(*",
            "  reproduce: pytest *test_ops.py::test_mul[[]cpu-float64-gradcheck[]]* --customop-seed=1234",
        ]
    )


def test_missing_conj_is_caught_only_in_complex(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def mul(x: Tensor, y: Tensor) -> Tensor:
    return x * y

def no_conj(ctx, grad):
    x, y = ctx.saved_tensors
    return grad * y, grad * x

make_op("mul", mul, no_conj)

@pytest.mark.customop(f"{NS}::mul", samples=two_inputs, devices=["cpu"], checks=["gradcheck"],
                      dtypes=[torch.float64, torch.complex128])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*[[]cpu-complex128-gradcheck[]] FAILED*", "*gradient of input 'x'*j (finite differences)*"])


def test_broadcast_grad_reduced_over_wrong_dim(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def add_bias(x: Tensor, bias: Tensor) -> Tensor:
    return x + bias

def wrong_reduction(ctx, grad):
    return grad, grad.sum(1)  # the bias broadcasts over dim 0

make_op("add_bias", add_bias, wrong_reduction)

def samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 4), make(4))

@pytest.mark.customop(f"{NS}::add_bias", samples=samples, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"])
def test_add_bias(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["    gradient of input 'bias': 4 of 4 element(s) differ*"])


def test_none_for_an_input_that_needs_a_grad(pytester, ns, run):
    write(
        pytester,
        ns,
        CORRECT_MUL
        + """
def forgets_y(ctx, grad):
    gx, _ = mul_backward(ctx, grad)
    return gx, None

make_op("mul", mul, forgets_y)

@pytest.mark.customop(f"{NS}::mul", samples=two_inputs, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*gradient of input 'y'*got 0 (backward)*backward returned None for it (taken as zeros) although it needs a gradient*"]
    )


def test_detaching_backward_fails_gradgradcheck_only(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def square(x: Tensor) -> Tensor:
    return x * x

def detaching(ctx, grad):
    (x,) = ctx.saved_tensors
    return (2 * x * grad).detach()

make_op("square", square, detaching)

@pytest.mark.customop(f"{NS}::square", samples=one_input, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64])
def test_square(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]cpu-float64-gradgradcheck[]] FAILED*",
            "*why: the gradient backward computes for 'x' does not require grad: backward detaches it*",
        ]
    )


def test_wrong_only_in_float32_is_caught_at_float32(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def exp(x: Tensor) -> Tensor:
    return x.exp()

def low_precision_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    if x.dtype == torch.float32:  # computes through bfloat16 by mistake
        return grad * x.to(torch.bfloat16).exp().to(x.dtype)
    return grad * x.exp()

make_op("exp", exp, low_precision_backward)

@pytest.mark.customop(f"{NS}::exp", samples=one_input, devices=["cpu"], checks=["gradcheck"],
                      dtypes=[torch.float64, torch.float32])
def test_exp(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]cpu-float32-gradcheck[]] FAILED*",
            "*gradient of input 'x' at float32 differs from the float64 gradient of the same input values*expected * (float64), got * (float32)*",
        ]
    )


def test_tolerance_override_per_dtype(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def exp(x: Tensor) -> Tensor:
    return x.exp()

def low_precision_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * x.to(torch.bfloat16).exp().to(x.dtype)

make_op("exp", exp, low_precision_backward)

@pytest.mark.customop(f"{NS}::exp", samples=one_input, devices=["cpu"], checks=["gradcheck"],
                      dtypes=[torch.float32], tolerances={torch.float32: (1e-2, 2e-2)})
def test_exp(customop):
    customop.check()
""",
    )
    run().assert_outcomes(passed=1)


EXPLICIT_REFUSAL = """
class NoDoubleBackward(torch.autograd.Function):
    # What torchvision's C++ ops do: their backward's backward raises.
    @staticmethod
    def forward(ctx, grad, x):
        ctx.save_for_backward(x)
        return grad * x.cos()

    @staticmethod
    def backward(ctx, grad_grad):
        raise RuntimeError("double backwards on sin not supported")

def sin(x: Tensor) -> Tensor:
    return x.sin()

def sin_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return NoDoubleBackward.apply(grad, x)

make_op("sin", sin, sin_backward)
"""


def test_explicit_double_backward_refusal_is_a_skip_with_the_reason(pytester, ns, run):
    write(
        pytester,
        ns,
        EXPLICIT_REFUSAL
        + """
@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64, torch.float32])
def test_sin(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]2[]] test_ops.py:*: backward refuses double backward*double backwards on sin not supported"]
    )


def test_refusal_fails_when_the_marker_claims_support(pytester, ns, run):
    write(
        pytester,
        ns,
        EXPLICIT_REFUSAL
        + """
@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64],
                      supports_gradgrad=True)
def test_sin(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*the marker claims supports_gradgrad=True but sample 0: double backwards on sin not supported*"]
    )


def test_supports_gradgrad_false_skips_at_collection(pytester, ns, run):
    write(
        pytester,
        ns,
        EXPLICIT_REFUSAL
        + """
@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64],
                      supports_gradgrad=False)
def test_sin(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*the marker declares supports_gradgrad=False*"])


def test_once_differentiable_backward_is_a_refusal(pytester, ns, run):
    write(
        pytester,
        ns,
        """
from torch.autograd.function import once_differentiable

class Sin(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * x.cos()

lib = torch.library.Library(NS, "FRAGMENT")
lib.define("sin(Tensor x) -> Tensor")
lib.impl("sin", Sin.apply, "CompositeImplicitAutograd")

@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64, torch.float32])
def test_sin(customop):
    customop.check()
""",
    )
    result = run("-rs")
    # a refusal at every dtype: float64 asks before torch's gradgradcheck, float32 on its own derivatives
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["SKIPPED [[]2[]] *backward refuses double backward*@once_differentiable*"])


def test_backward_through_an_op_without_autograd_is_a_gradgrad_failure_that_says_why(pytester, ns, run):
    write(
        pytester,
        ns,
        """
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("cos_kernel(Tensor x) -> Tensor")
lib.impl("cos_kernel", lambda x: torch.cos(x.detach()), "CPU")  # no autograd formula

def sin(x: Tensor) -> Tensor:
    return x.sin()

def sin_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * torch.ops.{ns}.cos_kernel(x)

make_op("sin", sin, sin_backward)

@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64])
def test_sin(customop):
    customop.check()
""".replace("{ns}", ns),
    )
    result = run("-v", "-W", "ignore::UserWarning")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*[[]cpu-float64-gradgradcheck[]] FAILED*",
            f"*second derivative of input 'x'*why: backward calls {ns}::cos_kernel, which has no autograd formula, so its derivative is silently wrong*",
        ]
    )


def test_op_without_autograd_formula_fails_with_that_diagnosis(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::sin", mutates_args=())
def sin(x: Tensor) -> Tensor:
    return x.sin()

@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"])
def test_sin(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{ns}::sin has no autograd formula: *(register one with torch.library.register_autograd)"])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_backward_that_raises_points_at_the_authors_line(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def sin(x: Tensor) -> Tensor:
    return x.sin()

def broken(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * x.cos() @ x  # shapes do not fit

make_op("sin", sin, broken)

@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"])
def test_sin(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*backward raised RuntimeError: *", "*test_ops.py*, line *, in broken*"])


def test_tensor_list_inputs_and_list_outputs_are_flattened(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::scale_all", mutates_args=())
def scale_all(xs: list[Tensor], scale: Tensor) -> list[Tensor]:
    return [x * scale for x in xs]

def setup_context(ctx, inputs, output):
    xs, scale = inputs
    ctx.save_for_backward(scale, *xs)

def backward(ctx, grads):
    scale, *xs = ctx.saved_tensors
    return [g * scale for g in grads], sum((g * x).sum() for g, x in zip(grads, xs)).reshape(scale.shape)

scale_all.register_autograd(backward, setup_context=setup_context)

def samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput([make(2, 3), make(4)], make(()))

@pytest.mark.customop(scale_all, samples=samples, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64, torch.float32])
def test_scale_all(customop):
    customop.check()
""",
    )
    run().assert_outcomes(passed=4)


def test_wrong_grad_for_one_element_of_a_tensor_list_names_its_index(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::scale_all", mutates_args=())
def scale_all(xs: list[Tensor], scale: float) -> list[Tensor]:
    return [x * scale for x in xs]

def setup_context(ctx, inputs, output):
    ctx.scale = inputs[1]

def backward(ctx, grads):
    return [grads[0] * ctx.scale, grads[1]], None  # forgot the scale for the second

scale_all.register_autograd(backward, setup_context=setup_context)

def samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput([make(2), make(3)], 3.0)

@pytest.mark.customop(scale_all, samples=samples, devices=["cpu"], dtypes=[torch.float64], checks=["gradcheck"])
def test_scale_all(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["    gradient of input 'xs'[[]1[]]: *"])


def test_fast_mode_is_chosen_by_size_and_failure_does_not_recompute_the_jacobian(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def sin(x: Tensor) -> Tensor:
    return x.sin()

def wrong(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * x.cos() * 1.01

make_op("sin", sin, wrong)

def big(device, dtype, requires_grad):
    yield SampleInput(torch.randn(64, 64, device=device, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(f"{NS}::sin", samples=big, devices=["cpu"], dtypes=[torch.float64], checks=["gradcheck"])
def test_sin(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*gradient of input 'x' along a random direction: expected *, got * (backward)*[[]fast mode[]]"])


def test_fast_mode_can_be_forced_off(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def sin(x: Tensor) -> Tensor:
    return x.sin()

def wrong(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * x.cos() * 1.01

make_op("sin", sin, wrong)

@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"], fast_mode=True)
def test_fast(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::sin", samples=one_input, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck"], fast_mode=False)
def test_slow(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*[[]fast mode[]]*", "*[[]slow mode[]]*"])


def test_opinfo_sample_inputs_are_accepted(pytester, ns, run):
    pytest.importorskip("expecttest", reason="torch.testing's OpInfo SampleInput imports expecttest")
    write(
        pytester,
        ns,
        CORRECT_MUL
        + """
from torch.testing._internal.opinfo.core import SampleInput as OpInfoSampleInput

make_op("mul", mul, mul_backward)

def opinfo_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield OpInfoSampleInput(make(3), args=(make(3),))

@pytest.mark.customop(f"{NS}::mul", samples=opinfo_samples, devices=["cpu"], checks=["gradcheck", "gradgradcheck"], dtypes=[torch.float64])
def test_mul(customop):
    customop.check()
""",
    )
    run().assert_outcomes(passed=2)
