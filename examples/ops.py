"""Real custom ops, one per registration style, with correct backwards: the plugin's bundled example."""

from typing import List

import torch
from torch import Tensor


# A torch.library.custom_op with register_autograd, broadcasting and a keyword-only scale.
@torch.library.custom_op("examples::mul", mutates_args=())
def mul(x: Tensor, y: Tensor, *, alpha: float = 1.0) -> Tensor:
    return x * y * alpha


@mul.register_fake
def _(x, y, *, alpha=1.0):
    return torch.empty(torch.broadcast_shapes(x.shape, y.shape), dtype=x.dtype, device=x.device)


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Undo broadcasting: sum the gradient down to an input's shape."""
    while grad.dim() > len(shape):
        grad = grad.sum(0)
    for dim, size in enumerate(shape):
        if size == 1 and grad.shape[dim] != 1:
            grad = grad.sum(dim, keepdim=True)
    return grad


def _mul_setup(ctx, inputs, keyword_only_inputs, output):
    x, y = inputs
    ctx.save_for_backward(x, y)
    ctx.alpha = keyword_only_inputs["alpha"]


def _mul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    grad_x = _sum_to(grad * y.conj() * ctx.alpha, x.shape) if ctx.needs_input_grad[0] else None
    grad_y = _sum_to(grad * x.conj() * ctx.alpha, y.shape) if ctx.needs_input_grad[1] else None
    return grad_x, grad_y


mul.register_autograd(_mul_backward, setup_context=_mul_setup)


# A Library.define op with a Python kernel and torch.library.register_autograd.
_lib = torch.library.Library("examples", "DEF")
_lib.define("softplus(Tensor x, float beta=1.0) -> Tensor")


def _softplus(x, beta=1.0):
    return torch.nn.functional.softplus(x, beta=beta)


_lib.impl("softplus", _softplus, "CompositeExplicitAutograd")
torch.library.register_fake("examples::softplus", lambda x, beta=1.0: torch.empty_like(x), lib=_lib)


def _softplus_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.beta = inputs[1]


def _softplus_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * torch.sigmoid(ctx.beta * x), None


torch.library.register_autograd("examples::softplus", _softplus_backward, setup_context=_softplus_setup, lib=_lib)


# A Tensor[] input: a weighted sum of a list of tensors.
@torch.library.custom_op("examples::weighted_sum", mutates_args=())
def weighted_sum(tensors: List[Tensor], weights: Tensor) -> Tensor:  # noqa: UP006 (torch < 2.7 refuses list[Tensor])
    if weights.shape != (len(tensors),):
        raise ValueError(f"weights must have shape ({len(tensors)},), got {tuple(weights.shape)}")
    return sum(w * t for w, t in zip(weights, tensors))


@weighted_sum.register_fake
def _(tensors, weights):
    return torch.empty_like(tensors[0])


def _ws_setup(ctx, inputs, output):
    tensors, weights = inputs
    ctx.save_for_backward(weights, *tensors)


def _ws_backward(ctx, grad):
    weights, *tensors = ctx.saved_tensors
    grad_tensors = [grad * w for w in weights]
    grad_weights = torch.stack([(grad * t).sum() for t in tensors])
    return grad_tensors, grad_weights


weighted_sum.register_autograd(_ws_backward, setup_context=_ws_setup)


# An Optional[Tensor] input: a linear layer with an optional bias.
@torch.library.custom_op("examples::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    # Its contract, said where edge_shapes can see it: a batch of rows (a 1-D x would be a suspected edge).
    torch._check(x.dim() == 2, lambda: f"linear takes x of shape [N, in], got {list(x.shape)}")
    out = x @ weight.t()
    return out + bias if bias is not None else out


@linear.register_fake
def _(x, weight, bias=None):
    torch._check(x.dim() == 2, lambda: f"linear takes x of shape [N, in], got {list(x.shape)}")
    return x.new_empty(x.shape[0], weight.shape[0])


def _linear_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _linear_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_bias = grad.sum(0) if ctx.has_bias else None
    return grad @ weight, grad.t() @ x, grad_bias


linear.register_autograd(_linear_backward, setup_context=_linear_setup)


# A complex op: z * conj(z) * w, non-holomorphic, whose backward needs the conjugates right.
@torch.library.custom_op("examples::abs2_scale", mutates_args=())
def abs2_scale(z: Tensor, w: Tensor) -> Tensor:
    return (z.real.square() + z.imag.square()) * w


@abs2_scale.register_fake
def _(z, w):
    return torch.empty_like(z)


def _abs2_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _abs2_backward(ctx, grad):
    z, w = ctx.saved_tensors
    # f = |z|^2 w: df/dz = conj(z) w, df/dconj(z) = z w; PyTorch's convention gives
    # grad_z = conj(df/dz) * grad + (df/dconj(z)) * conj(grad).
    grad_z = (z * w.conj()) * grad + (z * w) * grad.conj()
    grad_w = (z * z.conj()).conj() * grad
    return grad_z, grad_w


abs2_scale.register_autograd(_abs2_backward, setup_context=_abs2_setup)
