"""Fast mode (large samples) must stay as strong as it is cheap.

torch's fast-mode gradcheck scales its tolerance with the input's size: on a 64x64 input it passes a
backward that is 1% off. The plugin adds one signed random projection per input with a tolerance that
does not grow that way, so the bug is caught, and a correct op still passes (first and second order).
"""

from __future__ import annotations

import textwrap

import pytest

OP_MODULE = """
import pytest
import torch
from pytest_customop import SampleInput

FACTOR = {factor}

@torch.library.custom_op("{ns}::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 2

def setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])

def backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * 2 * (1 - torch.tanh(x) ** 2) * FACTOR

scaled_tanh.register_autograd(backward, setup_context=setup_context)

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(64, 64, device=device, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop("{ns}::scaled_tanh", samples=samples, dtypes=["float64"])
def test_scaled_tanh(customop):
    customop.check()
"""


def test_fast_mode_catches_a_one_percent_bug_torch_fast_mode_passes(pytester, run, ns):
    pytester.makepyfile(test_op=textwrap.dedent(OP_MODULE.format(ns=ns, factor=1.01)))
    result = run("-k", "gradcheck and not gradgrad")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{ns}::scaled_tanh gradcheck failed on cpu float64: 1 of 1 sample(s)*",
            "*gradient of input 'x' along a random direction: expected * (finite differences), got * (backward)*[[]fast mode*",
        ]
    )


def test_fast_mode_passes_a_correct_op_first_and_second_order(pytester, run, ns):
    pytester.makepyfile(test_op=textwrap.dedent(OP_MODULE.format(ns=ns, factor=1.0)))
    result = run("-v", "-k", "gradcheck")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*cpu-float64-gradcheck*PASSED*", "*cpu-float64-gradgradcheck*PASSED*"])


@pytest.mark.parametrize("threshold, mode", [("100000", "slow"), ("0", "fast")])
def test_threshold_option_picks_the_mode_named_in_the_failure(pytester, run, ns, threshold, mode):
    # A 2x bug on a small input: caught in both modes; the message names the mode used.
    source = OP_MODULE.format(ns=ns, factor=2.0).replace("randn(64, 64", "randn(3, 4")
    pytester.makepyfile(test_op=textwrap.dedent(source))
    result = run("-k", "gradcheck and not gradgrad", f"--customop-fast-mode-threshold={threshold}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*gradient of input 'x'*[[]{mode} mode*"])


def test_fast_mode_full_jacobian_option_adds_torchs_slow_mode_message(pytester, run, ns):
    source = OP_MODULE.format(ns=ns, factor=2.0).replace("randn(64, 64", "randn(3, 4")
    pytester.makepyfile(test_op=textwrap.dedent(source))
    plain = run("-k", "gradcheck and not gradgrad", "--customop-fast-mode-threshold=0")
    assert "full Jacobians" not in plain.stdout.str()
    result = run("-k", "gradcheck and not gradgrad", "--customop-fast-mode-threshold=0", "--customop-full-jacobian")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*gradient of input 'x'*[[]fast mode]",
            "*full Jacobians (slow mode, --customop-full-jacobian):",
            "*Jacobian mismatch for output 0 with respect to input 0,",
            "*numerical:tensor(*",
        ]
    )


# Fast mode is the plugin's own (torch's fast mode costs twice as much and is weaker): it must still
# find what torch's finds besides wrong values.
AUTOGRAD_FUNCTION_OP = """
import pytest
import torch
from pytest_customop import SampleInput

class TwoOutputs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.set_materialize_grads(False)  # the backward gets None for an unused output
        ctx.save_for_backward(x)
        return x * 2, x * 3

    @staticmethod
    def backward(ctx, g_double, g_triple):
        {backward}

lib = torch.library.Library("{ns}", "DEF")
lib.define("two(Tensor x) -> (Tensor, Tensor)")
lib.impl("two", lambda x: (x * 2, x * 3), "CompositeExplicitAutograd")
lib.impl("two", TwoOutputs.apply, "Autograd")

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(64, 64, device=device, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop("{ns}::two", samples=samples, dtypes=["float64"], devices=["cpu"], checks=["gradcheck"])
def test_two(customop):
    customop.check()
"""


@pytest.mark.parametrize(
    "backward, expected",
    [
        (
            "return g_double * 2 + g_triple * 3",
            "*backward fails when every grad_output is undefined (None)*TypeError: unsupported operand*[[]fast mode]",
        ),
        (
            "return g_double * 2 + g_triple * 3 if g_double is not None and g_triple is not None else torch.ones(64, 64, dtype=torch.float64)",
            "*backward returns nonzero gradients when every grad_output is undefined (None)*[[]fast mode]",
        ),
        (
            "return (g_double * 2 + g_triple * 3) * (1 + 1e-9 * torch.rand(()).item())",
            "*backward is not reentrant: two backwards of input 'x' with the same grad_output differ by up to *"
            "(nondet_tol=0*[[]fast mode]",
        ),
    ],
    ids=["crashes-on-undefined", "nonzero-on-undefined", "not-reentrant"],
)
def test_fast_mode_finds_what_torchs_fast_mode_finds_besides_values(pytester, run, ns, backward, expected):
    pytester.makepyfile(test_op=textwrap.dedent(AUTOGRAD_FUNCTION_OP.format(ns=ns, backward=backward)))
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{ns}::two gradcheck failed on cpu float64: 1 of 1 sample(s)", expected])


def test_fast_mode_passes_a_correct_two_output_autograd_function(pytester, run, ns):
    backward = (
        "return None if g_double is None and g_triple is None else "
        "(0 if g_double is None else g_double * 2) + (0 if g_triple is None else g_triple * 3)"
    )
    pytester.makepyfile(test_op=textwrap.dedent(AUTOGRAD_FUNCTION_OP.format(ns=ns, backward=backward)))
    run().assert_outcomes(passed=1)
