"""A ``torch.autograd.Function`` subclass as the op under test: inputs named by forward's parameters,
every check that applies run, opcheck a skip with the reason, jvp / vmap / setup_context /
once_differentiable honoured; wrong backwards fail with messages naming the input."""

from __future__ import annotations

import textwrap

import pytest

HEADER = '''
from typing import Optional

import pytest, torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from pytest_customop import SampleInput


def pair(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4), 2.0)
    yield SampleInput(make(5), make(5), -0.5)


class Scale(torch.autograd.Function):
    """forward(ctx, ...) style, unannotated, a float argument."""

    @staticmethod
    def forward(ctx, x, y, alpha):
        ctx.save_for_backward(x, y)
        ctx.alpha = alpha
        return x * y * alpha

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y * ctx.alpha, grad * x * ctx.alpha, None
'''

CORRECT = '''
class RowNormalize(torch.autograd.Function):
    """setup_context style, annotated, with a jvp and a generated vmap rule: y = x / ||x|| per row."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, eps: float = 1e-6) -> Tensor:
        return x / (x.norm(dim=-1, keepdim=True) + eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, eps = inputs
        ctx.save_for_backward(x)  # an input: the backward's own ops make the double backward right
        ctx.save_for_forward(x)
        ctx.eps = eps

    @staticmethod
    def _jacobian_times(x, v, eps):  # the Jacobian is symmetric: one formula for vjp and jvp
        n = x.norm(dim=-1, keepdim=True)
        d = n + eps
        return v / d - x * (x * v).sum(-1, keepdim=True) / (n * d * d)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return RowNormalize._jacobian_times(x, grad, ctx.eps), None

    @staticmethod
    def jvp(ctx, tangent, _):
        (x,) = ctx.saved_tensors
        return RowNormalize._jacobian_times(x, tangent, ctx.eps)


def rows(device, dtype, requires_grad):
    yield SampleInput(torch.randn(4, 6, device=device, dtype=dtype, requires_grad=requires_grad), 1e-6)
    yield SampleInput(torch.randn(2, 3, 5, device=device, dtype=dtype, requires_grad=requires_grad), 1e-6)


class Gather(torch.autograd.Function):
    """An index tensor and an int argument: no gradient for either."""

    @staticmethod
    def forward(ctx, x, dim, index):
        ctx.save_for_backward(index)
        ctx.dim, ctx.shape = dim, x.shape
        return x.gather(dim, index)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.shape).scatter_add(ctx.dim, index, grad), None, None


def gathers(device, dtype, requires_grad):
    x = torch.randn(4, 5, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(x, 1, torch.tensor([[0, 2, 2], [1, 1, 4], [3, 0, 0], [4, 4, 1]], device=device))


class MaskedSoftmax(torch.autograd.Function):
    """Attention-style softmax over a boolean mask, backward @once_differentiable."""

    @staticmethod
    def forward(ctx, scores, mask):
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        ctx.save_for_backward(probs)
        return probs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (probs,) = ctx.saved_tensors
        return probs * (grad - (grad * probs).sum(-1, keepdim=True)), None


def masked(device, dtype, requires_grad):
    scores = torch.randn(2, 3, 4, device=device, dtype=dtype, requires_grad=requires_grad)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False], [True, True, True, True]], device=device)
    yield SampleInput(scores, mask.expand(2, 3, 4))


class SumSquares(torch.autograd.Function):
    """A reduction to a 0-dim output, named by vjp instead of backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum()

    @staticmethod
    def vjp(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def one(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, device=device, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(Scale, samples=pair, dtypes=[torch.float64, torch.float32])
def test_scale(customop):
    customop.check()


@pytest.mark.customop(RowNormalize, samples=rows, dtypes=[torch.float64])
def test_row_normalize(customop):
    customop.check()


@pytest.mark.customop(Gather, samples=gathers, dtypes=[torch.float64])
def test_gather(customop):
    customop.check()


@pytest.mark.customop(MaskedSoftmax, samples=masked, dtypes=[torch.float64])
def test_masked_softmax(customop):
    customop.check()


@pytest.mark.customop(SumSquares, samples=one, dtypes=[torch.float64])
def test_sum_squares(customop):
    customop.check()
'''


def write(pytester: pytest.Pytester, body: str, name: str = "test_functions") -> None:
    pytester.makepyfile(**{name: HEADER + textwrap.dedent(body)})


def test_correct_functions_of_every_style_pass_every_check_that_applies(pytester, run):
    write(pytester, CORRECT)
    result = run("-v", "-rs", "-p", "no:logging")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()[-6000:]
    result.stdout.fnmatch_lines_random(
        [
            # the checks that apply run and pass, named as for ops
            "*test_scale[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-grad_keys[]] PASSED*",
            "*test_scale[[]cpu-float32-noncontiguous[]] PASSED*",
            "*test_scale[[]cpu-float64-batched_grad[]] PASSED*",
            "*test_scale[[]cpu-float64-compile[]] PASSED*",
            "*test_row_normalize[[]cpu-float64-forward_ad[]] PASSED*",  # its jvp against finite differences
            "*test_row_normalize[[]cpu-float64-batched_grad[]] PASSED*",  # its generated vmap rule against a loop
            "*test_row_normalize[[]cpu-float64-gradgradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-requires_grad_subsets[]] PASSED*",
            "*test_gather[[]cpu-float64-edge_shapes[]] PASSED*",
            "*test_masked_softmax[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_sum_squares[[]cpu-float64-grad_keys[]] PASSED*",
            # what does not apply says why
            "*test_functions.Scale is a torch.autograd.Function, not an operator: opcheck tests torch.library registrations*",
            "*forward-mode AD is unsupported for test_functions.Gather: the autograd.Function defines no jvp staticmethod*",
            "*its backward is marked @once_differentiable*",
            "*test_functions.SumSquares defines a custom vjp: torch *torch.compile does not trace*",
        ]
    )
    assert outcomes["passed"] >= 40


def test_a_wrong_gradient_for_one_input_fails_naming_it(pytester, run):
    write(
        pytester,
        """
class WrongY(Scale):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y * ctx.alpha, grad * x, None  # alpha forgotten in y's gradient

@pytest.mark.customop(WrongY, samples=pair, dtypes=[torch.float64], checks=["gradcheck", "grad_keys"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v", "-p", "no:logging")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_functions.WrongY gradcheck failed on cpu float64: 2 of 2 sample(s)*",
            "*gradient of input 'y'*",
        ]
    )
    result.stdout.fnmatch_lines(["*test_wrong[[]cpu-float64-grad_keys[]] PASSED*"])
    assert "gradient of input 'x'" not in result.stdout.str()


def test_gradient_for_a_float_argument_fails_grad_keys_by_name(pytester, run):
    write(
        pytester,
        """
class AlphaGrad(Scale):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y * ctx.alpha, grad * x * ctx.alpha, (grad * x * y).sum()

@pytest.mark.customop(AlphaGrad, samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_alpha(customop):
    customop.check()
""",
    )
    result = run("-p", "no:logging")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_functions.AlphaGrad grad_keys failed on cpu float64: 2 of 2 sample(s)*",
            "*the gradient for input 'alpha' (float): expected None (not a tensor), got Tensor([[][]], float64, cpu)*",
            "*backward: AlphaGrad.backward (test_functions.py:*), the autograd.Function's own*",
        ]
    )


def test_missing_extra_wrong_shape_and_dtype_gradients_fail_grad_keys(pytester, run):
    write(
        pytester,
        """
class TooFew(Scale):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y * ctx.alpha, grad * x * ctx.alpha

class Extra(Scale):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y * ctx.alpha, grad * x * ctx.alpha, None, None

class Unreduced(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias):
        return x + bias

    @staticmethod
    def backward(ctx, grad):
        return grad, grad  # bias [4] gets a [3, 4] gradient: torch would sum it down

class WrongDtype(Scale):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return (grad * y * ctx.alpha).float(), grad * x * ctx.alpha, None

def broadcast(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad),
                      torch.randn(4, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(TooFew, samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_too_few(customop):
    customop.check()

@pytest.mark.customop(Extra, samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_extra(customop):
    customop.check()

@pytest.mark.customop(Unreduced, samples=broadcast, dtypes=[torch.float64], checks=["grad_keys"], strict_grad_shapes=True)
def test_unreduced(customop):
    customop.check()

@pytest.mark.customop(Unreduced, samples=broadcast, dtypes=[torch.float64], checks=["grad_keys"])
def test_unreduced_is_a_note(customop):
    result = customop.check()
    assert any("relies on the engine to reduce [3, 4] to [4]" in note for note in result.notes), result.notes

@pytest.mark.customop(WrongDtype, samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_dtype(customop):
    customop.check()
""",
    )
    result = run("-p", "no:logging")
    result.assert_outcomes(failed=4, passed=1)  # the engine reduces a broadcast gradient: a note, strict fails it
    result.stdout.fnmatch_lines_random(
        [
            (
                "*test_functions.TooFew: backward returned 2 gradient(s), expected 3, one per positional input (x, y, alpha): "
                "nothing for input 'alpha'*"
            ),
            (
                "*test_functions.Extra: backward returned 4 gradients, expected 3, one per positional input (x, y, alpha): "
                "extra trailing entry None after the last input 'alpha' (torch drops a trailing None silently)*"
            ),
            "*the gradient for input 'bias' has shape [[]3, 4[]], larger than the input's [[]4[]]: relies on the engine to reduce*strict_grad_shapes=True*",
            "*the gradient for input 'x': expected dtype float64 (the input's), got float32 (torch would cast it silently)*",
        ]
    )


def test_a_wrong_jvp_fails_forward_ad_and_a_wrong_vmap_rule_fails_batched_grad(pytester, run):
    write(
        pytester,
        """
class Cube(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 3 * x * tangent  # should be 3 * x**2 * tangent

    @staticmethod
    def vmap(info, in_dims, x):
        return x ** 3 + 1, in_dims[0]  # off by one under vmap

def cubes(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(Cube, samples=cubes, dtypes=[torch.float64], checks=["gradcheck", "forward_ad", "batched_grad"])
def test_cube(customop):
    customop.check()
""",
    )
    result = run("-v", "-p", "no:logging")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_cube[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_functions.Cube forward_ad failed on cpu float64*",
            "*the registered vmap rule of test_functions.Cube is wrong*",
        ]
    )


def test_samples_derived_from_forward_annotations_or_a_skip_with_the_reason(pytester, run):
    write(
        pytester,
        """
class Tanh(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)

@pytest.mark.customop(Tanh, dtypes=[torch.float64], checks=["gradcheck", "grad_keys"])
def test_annotated(customop):
    customop.check()

@pytest.mark.customop(Scale, dtypes=[torch.float64], checks=["gradcheck"])
def test_unannotated(customop):
    customop.check()
""",
    )
    result = run("-v", "-rs", "-p", "no:logging")
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*no samples could be derived from the schema: test_functions.Scale: argument 'x' (Any) has no default*",
        ]
    )


def test_a_forward_without_named_positional_inputs_is_a_marker_error(pytester, run):
    write(
        pytester,
        """
class Variadic(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *xs):
        return sum(xs)

    @staticmethod
    def backward(ctx, grad):
        return grad, grad

class KeywordOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *, scale):
        return x * scale

    @staticmethod
    def backward(ctx, grad):
        return grad

@pytest.mark.customop(Variadic, samples=pair)
def test_variadic(customop):
    customop.check()

@pytest.mark.customop(KeywordOnly, samples=pair)
def test_keyword_only(customop):
    customop.check()

@pytest.mark.customop(Scale, samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_other(customop):
    customop.check()
""",
    )
    result = run("-v", "-p", "no:logging")
    result.stdout.fnmatch_lines_random(
        [
            "*Variadic.forward takes [*]xs: its inputs have no names to check them by*",
            "*KeywordOnly.forward has keyword-only parameter 'scale': torch.autograd.Function.apply takes its inputs positionally*",
            "*test_other[[]cpu-float64-grad_keys[]] PASSED*",  # the other test's items are unaffected
        ]
    )


def test_the_fixture_calls_the_function_through_the_validating_kernel(pytester, run):
    write(
        pytester,
        """
class AlphaGrad(Scale):
    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        return grad * y * ctx.alpha, grad * x * ctx.alpha, grad.sum()

@pytest.mark.customop(AlphaGrad, samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_by_hand(customop):
    x = torch.randn(3, requires_grad=True, dtype=torch.float64)
    out = customop(x, torch.randn(3, dtype=torch.float64), 2.0)
    with pytest.raises(Exception, match="the gradient for input 'alpha' [(]float[)]: expected None"):
        out.sum().backward()
""",
    )
    run("-p", "no:logging").assert_outcomes(passed=1)
