"""Verdicts to trust at every dtype (issue 11): tolerances that follow the gradient's scale, gradients
proven right (not only consistent) at low precision, the precision ladder, ``reference=``, and gradients
asked for only where they exist. Each behaviour: a wrong backward that fails, correct ops that pass, at
float32-only, bfloat16-only and float64+float32 markers."""

from __future__ import annotations

import textwrap

import pytest

HEADER = '''
import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput

NS = "{ns}"

def make_op(name, fwd, bwd, save=None):
    op = torch.library.custom_op(f"{{NS}}::{{name}}", mutates_args=())(fwd)
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*[i for i in inputs if isinstance(i, Tensor)])
    op.register_autograd(bwd, setup_context=save or setup_context)
    return op
'''

# The three markers every behaviour is tried at.
MARKERS = [
    pytest.param("[torch.float32]", id="float32"),
    pytest.param("[torch.bfloat16]", id="bfloat16"),
    pytest.param("[torch.float64, torch.float32]", id="float64+float32"),
]


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(test_ops=HEADER.format(ns=ns) + textwrap.dedent(body))


# -- point 4: tolerances that follow the gradient's scale ---------------------------------------------

RMS_NORM = '''
def rms_norm(x: Tensor) -> Tensor:
    # accumulates in float32 (at least), as kernels do
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * xf.pow(2).mean(-1, keepdim=True).rsqrt()).to(x.dtype)

def _rms_backward(x, grad):
    rstd = x.pow(2).mean(-1, keepdim=True).rsqrt()
    xhat = x * rstd
    return rstd * (grad - xhat * (grad * xhat).mean(-1, keepdim=True))

def accumulates_in_float32(ctx, grad):
    (x,) = ctx.saved_tensors
    wide = torch.promote_types(x.dtype, torch.float32)
    return _rms_backward(x.to(wide), grad.to(wide)).to(x.dtype)

def accumulates_in_input_dtype(ctx, grad):
    # float16: the sum of squares of values ~200 overflows to inf, rstd is 0, the gradient all zeros
    (x,) = ctx.saved_tensors
    return _rms_backward(x, grad)

def big_rows(device, dtype, requires_grad):
    # rms ~500: every element of the gradient is below 1e-2 (float16's old atol)
    yield SampleInput((torch.randn(4, 64, device=device) * 500).to(dtype).requires_grad_(requires_grad))
'''


def test_float16_gradient_collapsed_to_zeros_fails_though_its_elements_are_small(pytester, ns, run):
    write(pytester, ns, RMS_NORM + '''
make_op("rms_wrong", rms_norm, accumulates_in_input_dtype)
make_op("rms_right", rms_norm, accumulates_in_float32)

@pytest.mark.customop(f"{NS}::rms_wrong", samples=big_rows, devices=["cpu"], dtypes=[torch.float16],
                      checks=["gradcheck"])
def test_wrong(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::rms_right", samples=big_rows, devices=["cpu"],
                      dtypes=[torch.float64, torch.float32, torch.float16, torch.bfloat16], checks=["gradcheck"])
def test_right(customop):
    customop.check()
''')
    result = run("-v")
    result.assert_outcomes(failed=1, passed=4)
    result.stdout.fnmatch_lines([
        "*test_wrong[[]cpu-float16-gradcheck[]] FAILED*",
        "    gradient of input 'x' at float16 differs from *: * of 256 element(s) differ; worst at index (*): "
        "expected *0.00*, got *0 (float16); abs err 0.00*, rel err 1 "
        "(allowed: atol 1e-05 + rtol 0.01 * |expected| + 0.01 * max|expected| = * here) [[]reference: float64 derivatives of the same input values, proven*]",
    ])


LINEAR = '''
def linear(x: Tensor, w: Tensor) -> Tensor:
    return x @ w

def linear_backward(ctx, grad):
    x, w = ctx.saved_tensors
    return grad @ w.t(), x.t() @ grad

def half_weight_gradient(ctx, grad):
    # a low-precision kernel path that drops a factor: wrong only below float64
    gx, gw = linear_backward(ctx, grad)
    return gx, gw if gw.dtype == torch.float64 else gw * 0.5

def pixel_features(device, dtype, requires_grad):
    # features of size ~100 (unnormalised pixel coordinates): the weight gradient's elements near zero
    # carry float32 rounding of ~3e-4, honest, beyond torch.allclose's atol=1e-4
    make = lambda *s, scale=1.0: (torch.randn(*s, device=device) * scale).to(dtype).requires_grad_(requires_grad)
    yield SampleInput(make(256, 64, scale=100.0), make(64, 32))
    yield SampleInput(make(8, 5, scale=1.0), make(5, 3), sample_name="small")
'''


@pytest.mark.parametrize("dtypes", MARKERS)
def test_honest_float32_rounding_passes_and_a_halved_gradient_fails(pytester, ns, run, dtypes):
    write(pytester, ns, LINEAR + f'''
make_op("linear", linear, linear_backward)
make_op("linear_half", linear, half_weight_gradient)

@pytest.mark.customop(f"{{NS}}::linear", samples=pixel_features, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::linear_half", samples=pixel_features, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck"])
def test_wrong(customop):
    customop.check()
''')
    result = run("-v")
    with_float64 = "float64" in dtypes
    # the right op passes every dtype; the wrong one passes float64 (right there) and fails the other
    result.assert_outcomes(passed=3 if with_float64 else 1, failed=1)
    result.stdout.fnmatch_lines(["*test_wrong[[]cpu-*-gradcheck[]] FAILED*", "*gradient of input 'w' at *"])
    result.stdout.no_fnmatch_line("*test_right* FAILED*")


# -- points 1-2: every low-precision item proves its reference; the precision ladder ------------------

MUL = '''
def mul(x: Tensor, y: Tensor) -> Tensor:
    return x * y

def _sum_to(g, shape):
    while g.dim() > len(shape):
        g = g.sum(0)
    return g

def mul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    return _sum_to(grad * y, x.shape), _sum_to(grad * x, y.shape)

def wrong_sign(ctx, grad):
    gx, gy = mul_backward(ctx, grad)
    return gx, -gy

def pairs(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 3), make(4, 3))
    yield SampleInput(make(4, 3), make(3), sample_name="broadcast")
'''


@pytest.mark.parametrize("dtypes", MARKERS)
def test_a_backward_wrong_at_every_dtype_fails_every_dtype(pytester, ns, run, dtypes):
    # (a wrong sign is a first-derivative bug: gradgradcheck differentiates the wrong backward correctly;
    # second-derivative bugs are test_a_silently_wrong_double_backward_fails_at_low_precision's)
    check = "gradcheck"
    write(pytester, ns, MUL + f'''
make_op("mul", mul, mul_backward)
make_op("mul_wrong", mul, wrong_sign)

@pytest.mark.customop(f"{{NS}}::mul", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["{check}"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_wrong", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["{check}"])
def test_wrong(customop):
    customop.check()
''')
    result = run("-v")
    count = dtypes.count(",") + 1
    result.assert_outcomes(passed=count, failed=count)
    result.stdout.no_fnmatch_line("*test_right*FAILED*")
    if "float64" not in dtypes:
        result.stdout.fnmatch_lines([
            "    gradient of input * is wrong at float64, the reference precision, so at every precision: along a random "
            "direction: expected * (finite differences in float64, step 1e-06), got * (backward in float64); *"
            "[[]reference: float64 derivatives of the same input values, proven against finite differences in float64[]]",
        ])


NO_FLOAT64 = '''
SUPPORTED = {supported}

def _kernel_guard(t):
    # what a kernel compiled for some dtypes only does with another
    if t.dtype not in SUPPORTED:
        raise RuntimeError(f"mul_kernel: {{t.dtype}} is not supported")

def limited(x: Tensor, y: Tensor) -> Tensor:
    _kernel_guard(x)
    return x * y

def limited_backward(ctx, grad):
    _kernel_guard(grad)
    return mul_backward(ctx, grad)

def limited_wrong(ctx, grad):
    _kernel_guard(grad)
    return wrong_sign(ctx, grad)
'''


@pytest.mark.parametrize("dtypes", MARKERS[:2])
def test_an_op_without_float64_is_proven_in_float32_not_blamed(pytester, ns, run, dtypes):
    write(pytester, ns, MUL + NO_FLOAT64.format(supported="(torch.float32, torch.float16, torch.bfloat16)") + f'''
make_op("mul", limited, limited_backward)
make_op("mul_wrong", limited, limited_wrong)

@pytest.mark.customop(f"{{NS}}::mul", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["gradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_wrong", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["gradcheck"])
def test_wrong(customop):
    customop.check()
''')
    result = run("-v", "--customop-report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*backward raised*")
    result.stdout.no_fnmatch_line("*forward raised*")
    result.stdout.fnmatch_lines([
        "    gradient of input 'y' is wrong at float32, the reference precision, so at every precision: along a random "
        "direction: expected * (finite differences in float32, step 0.001), got * (backward in float32); *",
        "  note: reference: *float32 derivatives*, proven against finite differences in float32 "
        "(float64: RuntimeError: mul_kernel: torch.float64 is not supported)",
    ])


def test_an_op_running_in_no_precision_for_finite_differences_is_a_skip_saying_how_to_give_a_reference(pytester, ns, run):
    write(pytester, ns, MUL + NO_FLOAT64.format(supported="(torch.bfloat16,)") + '''
make_op("mul", limited, limited_wrong)

@pytest.mark.customop(f"{NS}::mul", samples=pairs, devices=["cpu"], dtypes=[torch.bfloat16], checks=["gradcheck"])
def test_bf16_only(customop):
    customop.check()
''')
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([
        "SKIPPED * no precision at or above bfloat16 where finite differences mean something runs *::mul "
        "(float64: RuntimeError: mul_kernel: torch.float64 is not supported; float32: RuntimeError: *), so its "
        "gradients cannot be proven here: give the marker reference=fn, *",
    ])


SILENT_DOUBLE_BACKWARD = '''
# an op with a CPU kernel (not traced, as a C++ one) and no autograd kernel: torch only warns when a
# graph goes through it, and its inputs get no gradient
_lib = torch.library.Library(NS, "FRAGMENT")
_lib.define("times(Tensor a, Tensor b) -> Tensor")

def _times_kernel(a, b):
    with torch.no_grad():
        return a * b

_lib.impl("times", _times_kernel, "CPU")

def through_an_op_without_autograd(ctx, grad):
    # first derivatives right; their own derivatives silently lost (torch only warns)
    x, y = ctx.saved_tensors
    return torch.ops.{ns}.times(grad, y), torch.ops.{ns}.times(grad, x)

def same_shape(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 3), make(4, 3))
'''


@pytest.mark.parametrize("dtypes", MARKERS)
def test_a_silently_wrong_double_backward_fails_at_low_precision(pytester, ns, run, dtypes):
    write(pytester, ns, MUL + SILENT_DOUBLE_BACKWARD.replace("{ns}", ns) + f'''
make_op("mul", mul, mul_backward)
make_op("mul_detached", mul, through_an_op_without_autograd)

@pytest.mark.customop(f"{{NS}}::mul", samples=same_shape, devices=["cpu"], dtypes={dtypes}, checks=["gradgradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_detached", samples=same_shape, devices=["cpu"], dtypes={dtypes},
                      checks=["gradgradcheck"])
def test_wrong(customop):
    customop.check()
''')
    result = run("-v", "-W", "ignore")
    count = dtypes.count(",") + 1
    result.assert_outcomes(passed=count, failed=count)
    result.stdout.no_fnmatch_line("*test_right*FAILED*")
