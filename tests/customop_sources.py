"""Python source of the custom ops shared by the check tests, written into pytester test files.

``NS`` is replaced by the test's unique namespace (see the ``ns`` fixture).
"""

from __future__ import annotations

import textwrap

import pytest

HEADER = """
import torch
import pytest
from pytest_customop import SampleInput


def pair(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad),
                      torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad))
    yield SampleInput(torch.randn(2, 5, dtype=dtype, requires_grad=requires_grad),
                      torch.randn(5, dtype=dtype, requires_grad=requires_grad))


def save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def mul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    return grad * y, grad * x


def define_mul(name, fake):
    @torch.library.custom_op(f"NS::{name}", mutates_args=())
    def op(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * y

    op.register_fake(fake)
    op.register_autograd(mul_backward, setup_context=save_inputs)
    return op
"""


CORRECT_OPS = """
from torch.autograd.function import once_differentiable

# refuses double backward
class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad

lib = torch.library.Library("NS", "DEF")
lib.define("square(Tensor x) -> Tensor")
lib.impl("square", _Square.apply, "CompositeImplicitAutograd")

def singles(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 2, dtype=dtype, requires_grad=requires_grad))

# mutates a declared argument: no autograd
@torch.library.custom_op("NS::scale_", mutates_args=("x",))
def scale_(x: torch.Tensor, factor: float) -> None:
    x.mul_(factor)

@scale_.register_fake
def _(x, factor):
    return None

def scale_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 2, dtype=dtype), 2.5)

# a differentiable output and a non-differentiable one (indices)
@torch.library.custom_op("NS::top", mutates_args=())
def top(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = x.max(dim=-1)
    return values, indices

@top.register_fake
def _(x):
    return x.new_empty(x.shape[:-1]), x.new_empty(x.shape[:-1], dtype=torch.long)

def _top_setup(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.shape = inputs[0].shape

def _top_backward(ctx, grad_values, grad_indices):
    (indices,) = ctx.saved_tensors
    grad = grad_values.new_zeros(ctx.shape)
    return grad.scatter(-1, indices.unsqueeze(-1), grad_values.unsqueeze(-1))

top.register_autograd(_top_backward, setup_context=_top_setup)

# Tensor[] in and out
@torch.library.custom_op("NS::scaled_copies", mutates_args=())
def scaled_copies(xs: list[torch.Tensor], w: torch.Tensor) -> list[torch.Tensor]:
    return [x * w for x in xs]

@scaled_copies.register_fake
def _(xs, w):
    return [torch.empty_like(x * w) for x in xs]

def _copies_setup(ctx, inputs, output):
    xs, w = inputs
    ctx.save_for_backward(w, *xs)

def _copies_backward(ctx, grads):
    w, *xs = ctx.saved_tensors
    return [g * w for g in grads], sum((g * x).sum_to_size(w.shape) for g, x in zip(grads, xs))

scaled_copies.register_autograd(_copies_backward, setup_context=_copies_setup)

def list_samples(device, dtype, requires_grad):
    yield SampleInput([torch.randn(2, 3, dtype=dtype, requires_grad=requires_grad),
                       torch.randn(2, 3, dtype=dtype, requires_grad=requires_grad)],
                      torch.randn(3, dtype=dtype, requires_grad=requires_grad))

"""


def write(pytester: pytest.Pytester, ns: str, body: str, *, prelude: str = "") -> None:
    """Write ``test_ops.py``: the common header, ``prelude``, then ``body`` (dedented), in namespace ``ns``."""
    pytester.makepyfile(test_ops=(HEADER + prelude + textwrap.dedent(body)).replace("NS", ns))
