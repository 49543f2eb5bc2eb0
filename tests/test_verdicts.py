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
        "(allowed: atol 1e-05 + rtol 0.01 * |expected| + 0.01 * max|expected| = * here)",
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
