"""The ops, samples and hand-written torch equivalents the benchmark times.

Two ops defined with ``torch.library.custom_op``: an elementwise one (``scaled_tanh``) and a matmul
(``mm``). ``BACKWARD_FACTOR`` scales every gradient their backwards return: 1.0 is correct, anything
else is a bug for the failing-check measurements.

``RAW_EQUIVALENTS`` maps each check the plugin runs to a function doing the same work with plain torch
calls; benchmarking a new check is one line there.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from pytest_customop import SampleInput

NAMESPACE = "custbench"
BACKWARD_FACTOR = 1.0


@torch.library.custom_op(f"{NAMESPACE}::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 2


def _tanh_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _tanh_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * 2 * (1 - torch.tanh(x) ** 2) * BACKWARD_FACTOR


scaled_tanh.register_autograd(_tanh_backward, setup_context=_tanh_setup)


@torch.library.custom_op(f"{NAMESPACE}::mm", mutates_args=())
def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def _mm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mm_backward(ctx, grad):
    a, b = ctx.saved_tensors
    return grad @ b.mT * BACKWARD_FACTOR, a.mT @ grad * BACKWARD_FACTOR


mm.register_autograd(_mm_backward, setup_context=_mm_setup)

OPS = {"elementwise": (f"{NAMESPACE}::scaled_tanh", scaled_tanh, 1), "matmul": (f"{NAMESPACE}::mm", mm, 2)}


def make_samples(arity: int, size: int) -> Callable:
    """``samples(device, dtype, requires_grad)`` yielding one sample of ``arity`` size x size tensors."""

    def samples(device, dtype, requires_grad):
        yield SampleInput(
            *(torch.randn(size, size, device=device, dtype=dtype, requires_grad=requires_grad) for _ in range(arity))
        )

    return samples


def set_backward_factor(value: float) -> None:
    global BACKWARD_FACTOR
    BACKWARD_FACTOR = value


# -- the same checks by hand ------------------------------------------------------------------------
def _randn(shape: torch.Size, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    # float32 draws, converted: torch's float64 normal sampler is ~6x slower on the CPU
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


def _signed_projection(
    fn: Callable, inputs: Sequence[torch.Tensor], eps: float, atol: float, rtol: float, nondet_tol: float | None = None
) -> None:
    """Per input, one random signed direction, backward against a central difference. With
    ``nondet_tol`` also what torch's fast mode checks besides values, on the same graph: a second
    backward agrees, and undefined grad_outputs give zero gradients (the plugin's fast gradcheck)."""
    g = torch.Generator().manual_seed(0)
    leaves = [t.detach().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        outs = fn(*leaves)
        outs = [outs] if isinstance(outs, torch.Tensor) else list(outs)
    weights = [_randn(o.shape, g, o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, leaves, weights, allow_unused=True, retain_graph=nondet_tol is not None)
    if nondet_tol is not None:
        again = torch.autograd.grad(outs, leaves, weights, allow_unused=True, retain_graph=True)
        for a, b in zip(grads, again):
            if a is not None and b is not None and float((a - b).abs().max()) > nondet_tol:
                raise AssertionError("backward is not reentrant")
        undefined = [torch._C._functions.UndefinedGrad()(o) for o in outs]
        zeros = [torch.zeros_like(o) for o in undefined]
        if any(
            z is not None and not bool(z.eq(0).all()) for z in torch.autograd.grad(undefined, leaves, zeros, allow_unused=True)
        ):
            raise AssertionError("nonzero gradients for undefined grad_outputs")

    def loss(xs):
        with torch.no_grad():
            ys = fn(*xs)
            ys = [ys] if isinstance(ys, torch.Tensor) else list(ys)
            return float(sum((w * y).sum() for w, y in zip(weights, ys)))

    base = [t.detach() for t in leaves]
    for k, grad in enumerate(grads):
        d = _randn(base[k].shape, g, base[k].dtype)
        plus, minus = list(base), list(base)
        plus[k], minus[k] = base[k] + eps * d, base[k] - eps * d
        numeric = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = float((grad * d).sum()) if grad is not None else 0.0
        if abs(numeric - analytic) > atol * d.numel() ** 0.5 + rtol * abs(numeric):
            raise AssertionError(f"input {k}: {analytic} vs {numeric}")


def _first_derivative(fn: Callable, count: int) -> Callable:
    def first(*args):
        xs = [x if x.requires_grad else x.detach().requires_grad_(True) for x in args[:count]]
        with torch.enable_grad():
            return torch.autograd.grad(fn(*xs), xs, args[count:], create_graph=True)

    return first


def _second_order_vjp(fn: Callable, inputs: Sequence[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    out = fn(*xs)
    w = _randn(out.shape, g, dtype).requires_grad_(True)
    first = torch.autograd.grad(out, xs, w, create_graph=True)
    directions = [_randn(f.shape, g, dtype) for f in first]
    return list(torch.autograd.grad(first, [*xs, w], directions))


def raw_gradcheck(fn: Callable, inputs: Sequence[torch.Tensor], fast: bool) -> None:
    """gradcheck by hand: in float64 torch's slow mode, or in fast mode signed projections with a reentrant
    and an undefined-grad_output backward on the same graph; at lower precision, the backward against
    the float64 backward of the same values."""
    if inputs[0].dtype == torch.float64:
        if fast:
            _signed_projection(fn, inputs, 1e-6, 1e-5, 1e-3, nondet_tol=0.0)
        else:
            torch.autograd.gradcheck(fn, tuple(inputs), fast_mode=False, check_batched_grad=False)
        return
    g = torch.Generator().manual_seed(0)
    xs = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*xs)
    w = _randn(out.shape, g, torch.float64)
    got = torch.autograd.grad(out, xs, w.to(out.dtype))
    refs = [t.detach().double().requires_grad_(True) for t in inputs]
    ref_out = fn(*refs)
    expected = torch.autograd.grad(ref_out, refs, w)
    _prove_joint(fn, refs, expected, w, ref_out.detach(), g)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


def _prove_joint(
    fn: Callable,
    inputs: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    w: torch.Tensor,
    out: torch.Tensor,
    g: torch.Generator,
) -> None:
    """The float64 reference proven as the plugin proves it: one central difference along a random
    direction moving every input at once (two forwards)."""
    eps = 1e-6
    ds = [_randn(x.shape, g, x.dtype) for x in inputs]
    with torch.no_grad():
        plus = float((w * fn(*[x.detach() + eps * d for x, d in zip(inputs, ds)])).sum())
        minus = float((w * fn(*[x.detach() - eps * d for x, d in zip(inputs, ds)])).sum())
    numeric = (plus - minus) / (2 * eps)
    analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, ds))
    numel = sum(x.numel() for x in inputs)
    rounding = float((w * out).pow(2).sum().sqrt())
    if abs(numeric - analytic) > 1e-5 * numel**0.5 + 1e-3 * abs(numeric) + 32 * 2.2e-16 * rounding / eps:
        raise AssertionError(f"reference: {analytic} vs {numeric}")


def raw_gradgradcheck(fn: Callable, inputs: Sequence[torch.Tensor], fast: bool) -> None:
    """gradgradcheck by hand, the same way."""
    if inputs[0].dtype == torch.float64:
        torch.autograd.gradgradcheck(fn, tuple(inputs), fast_mode=fast)
        if fast:
            with torch.no_grad():
                out = fn(*inputs)
            w = _randn(out.shape, torch.Generator().manual_seed(1), out.dtype)
            _signed_projection(_first_derivative(fn, len(inputs)), [*inputs, w], 1e-6, 1e-5, 1e-3)
        return
    got = _second_order_vjp(fn, inputs, inputs[0].dtype)
    expected = _second_order_vjp(fn, inputs, torch.float64)
    # the float64 reference proven as the plugin does: two first derivatives along a joint direction
    g = torch.Generator().manual_seed(2)
    xs = [t.detach().double().requires_grad_(True) for t in inputs]
    with torch.no_grad():
        w = _randn(fn(*xs).shape, g, torch.float64)
    w.requires_grad_(True)
    first = _first_derivative(fn, len(xs))
    directions = [_randn(x.shape, g, torch.float64) for x in xs]
    second = torch.autograd.grad(first(*xs, w), [*xs, w], directions, allow_unused=True)
    values = [v.detach() for v in (*xs, w)]
    ds = [_randn(v.shape, g, torch.float64) for v in values]
    eps = 1e-6

    def h(shift: float) -> float:
        moved = [v + shift * d for v, d in zip(values, ds)]
        return float(sum((f.detach() * d).sum() for f, d in zip(first(*moved), directions)))

    numeric = (h(eps) - h(-eps)) / (2 * eps)
    analytic = sum(float((s * d).sum()) for s, d in zip(second, ds) if s is not None)
    if abs(numeric - analytic) > 1e-5 * sum(v.numel() for v in values) ** 0.5 + 1e-3 * abs(numeric) + 1e-8:
        raise AssertionError(f"reference second derivatives: {analytic} vs {numeric}")
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


#: check name -> (fn, inputs, fast) -> None, doing by hand what the plugin's check does.
RAW_EQUIVALENTS: dict[str, Callable[[Callable, Sequence[torch.Tensor], bool], None]] = {
    "gradcheck": raw_gradcheck,
    "gradgradcheck": raw_gradgradcheck,
}
