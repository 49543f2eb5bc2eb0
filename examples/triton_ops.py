"""A Triton op with a Triton backward, registered with torch.library.triton_op (torch >= 2.6).

``scaled_mul(x, y, alpha) = x * y * alpha``: the forward launches one kernel, the backward another that
writes both gradients (itself a triton_op, whose backward is scaled_mul again: double backward works). The kernels read memory as flat pointers, so the op hands them contiguous tensors
(``.contiguous()`` on the inputs and on grad_output, which ``out.sum().backward()`` gives expanded).

On CPU the kernels run through Triton's interpreter: run pytest with ``--customop-triton-interpret`` (or
``TRITON_INTERPRET=1``), which must be on before this module defines its kernels.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

BLOCK = 16  # small, so that small samples span several programs


@triton.jit
def _scaled_mul_kernel(x_ptr, y_ptr, out_ptr, n, alpha, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask)
    y = tl.load(y_ptr + offsets, mask=mask)
    tl.store(out_ptr + offsets, x * y * alpha, mask=mask)


@triton.jit
def _scaled_mul_backward_kernel(grad_ptr, x_ptr, y_ptr, grad_x_ptr, grad_y_ptr, n, alpha, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    grad = tl.load(grad_ptr + offsets, mask=mask) * alpha
    tl.store(grad_x_ptr + offsets, grad * tl.load(y_ptr + offsets, mask=mask), mask=mask)
    tl.store(grad_y_ptr + offsets, grad * tl.load(x_ptr + offsets, mask=mask), mask=mask)


@triton_op("examples_triton::scaled_mul", mutates_args=())
def scaled_mul(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    # No broadcasting: the kernel would read past the end of the smaller input.
    torch._check(x.shape == y.shape, lambda: f"scaled_mul: x and y must have one shape, got {x.shape} and {y.shape}")
    x, y = x.contiguous(), y.contiguous()  # the kernel indexes flat memory
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:  # nothing to launch (and Triton 3.9's interpreter aborts on several empty tensor arguments)
        return out
    wrap_triton(_scaled_mul_kernel)[(triton.cdiv(n, BLOCK),)](x, y, out, n, alpha, BLOCK=BLOCK)
    return out


@triton_op("examples_triton::scaled_mul_backward", mutates_args=())
def scaled_mul_backward(grad: Tensor, x: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    grad, x, y = grad.contiguous(), x.contiguous(), y.contiguous()
    grad_x, grad_y = torch.empty_like(x), torch.empty_like(y)
    n = x.numel()
    if n == 0:
        return grad_x, grad_y
    wrap_triton(_scaled_mul_backward_kernel)[(triton.cdiv(n, BLOCK),)](grad, x, y, grad_x, grad_y, n, alpha, BLOCK=BLOCK)
    return grad_x, grad_y


def _setup_context(ctx, inputs, output):
    x, y, alpha = inputs
    ctx.save_for_backward(x, y)
    ctx.alpha = alpha


def _backward(ctx, grad):
    x, y = ctx.saved_tensors
    grad_x, grad_y = scaled_mul_backward(grad, x, y, ctx.alpha)
    return grad_x, grad_y, None


scaled_mul.register_autograd(_backward, setup_context=_setup_context)


# Double backward: scaled_mul_backward is linear in each input, so its own backward is scaled_mul again.
def _setup_backward_context(ctx, inputs, output):
    grad, x, y, alpha = inputs
    ctx.save_for_backward(grad, x, y)
    ctx.alpha = alpha


def _backward_backward(ctx, grad_grad_x, grad_grad_y):
    grad, x, y = ctx.saved_tensors
    alpha = ctx.alpha
    grad_grad = scaled_mul(grad_grad_x, y, alpha) + scaled_mul(grad_grad_y, x, alpha)
    return grad_grad, scaled_mul(grad_grad_y, grad, alpha), scaled_mul(grad_grad_x, grad, alpha), None


scaled_mul_backward.register_autograd(_backward_backward, setup_context=_setup_backward_context)
