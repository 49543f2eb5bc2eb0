"""Python source of correct custom ops shaped like real library kernels, written into pytester files.

``NS`` is replaced by the test's namespace. Each op has a correct forward, a backward written the way
kernel authors write it (by hand, out of place, differentiable again), and samples with the index,
mask and buffer tensors such kernels take. ``BUGS`` replaces one line of an op to plant an edge or
layout bug (see tests/test_shape_families.py).
"""

from __future__ import annotations

OPS = """
import torch
import torch.nn.functional as F
import pytest
from pytest_customop import SampleInput


def _saves(ctx, inputs, output):
    ctx.save_for_backward(*[t if isinstance(t, torch.Tensor) else None for t in inputs])
    ctx.extra = [t for t in inputs if not isinstance(t, torch.Tensor)]


# -- roi mean pooling: features [N, C, L], rois int64 [K, 3] = (batch index, start, end) ----------------
def _roi_weights(rois, n, length, dtype):
    weights = torch.zeros(rois.shape[0], n, length, dtype=dtype, device=rois.device)
    for k, (b, start, end) in enumerate(rois.tolist()):
        weights[k, b, start:end] = 1.0 / (end - start)
    return weights


@torch.library.custom_op("NS::roi_mean", mutates_args=())
def roi_mean(features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    weights = _roi_weights(rois, features.shape[0], features.shape[2], features.dtype)
    return torch.einsum("knl,ncl->kc", weights, features)


def _roi_backward(ctx, grad):
    features, rois = ctx.saved_tensors
    weights = _roi_weights(rois, features.shape[0], features.shape[2], grad.dtype)
    return torch.einsum("knl,kc->ncl", weights, grad), None  # ROI_GRAD


roi_mean.register_autograd(_roi_backward, setup_context=_saves)


def roi_samples(device, dtype, requires_grad):
    rois = torch.tensor([[0, 0, 3], [1, 2, 6], [1, 1, 2]])
    yield SampleInput(torch.randn(2, 4, 6, dtype=dtype, requires_grad=requires_grad), rois)


# -- attention with a boolean mask: q [B, L, D], k and v [B, S, D], mask [L, S] ------------------------
def _probabilities(q, k, mask):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


@torch.library.custom_op("NS::masked_attention", mutates_args=())
def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _probabilities(q, k, mask) @ v


def _attention_backward(ctx, grad):
    q, k, v, mask = ctx.saved_tensors
    p = _probabilities(q, k, mask)
    grad_v = p.transpose(-1, -2) @ grad
    grad_p = grad @ v.transpose(-1, -2)
    grad_scores = p * (grad_p - (grad_p * p).sum(-1, keepdim=True)) / q.shape[-1] ** 0.5
    return grad_scores @ k, grad_scores.transpose(-1, -2) @ q, grad_v, None


masked_attention.register_autograd(_attention_backward, setup_context=_saves)


def attention_samples(device, dtype, requires_grad):
    q, k, v = (torch.randn(2, n, 5, dtype=dtype, requires_grad=requires_grad) for n in (3, 4, 4))
    mask = torch.ones(3, 4, dtype=torch.bool).tril(diagonal=1)
    yield SampleInput(q, k, v, mask)


# -- segment sum over an index tensor: values [E, D], segment_ids int64 [E] -> [S, D] ----------------
@torch.library.custom_op("NS::segment_sum", mutates_args=())
def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    # as CUDA segment kernels do: the index is read as a flat array (noncontiguous must leave it alone)
    torch._check(segment_ids.is_contiguous(), lambda: "segment_ids must be contiguous")
    out = values.new_zeros(num_segments, values.shape[1])
    return out.index_add(0, segment_ids, values)


def _segment_backward(ctx, grad):
    values, segment_ids, _ = ctx.saved_tensors
    return grad.index_select(0, segment_ids), None, None


segment_sum.register_autograd(_segment_backward, setup_context=_saves)


def segment_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(5, 3, dtype=dtype, requires_grad=requires_grad), torch.tensor([0, 0, 1, 3, 3]), 4)


# -- layer norm over the last dimension: x [N, C], weight and bias [C] --------------------------------
def _normalized(x):
    mean = x.mean(-1, keepdim=True)
    rstd = ((x - mean) ** 2).mean(-1, keepdim=True).add(1e-5).rsqrt()
    return (x - mean) * rstd, rstd


@torch.library.custom_op("NS::layer_norm", mutates_args=())
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return _normalized(x)[0] * weight + bias


def _layer_norm_backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    xhat, rstd = _normalized(x)
    g = grad * weight
    grad_x = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    rows = tuple(range(grad.dim() - weight.dim()))
    return grad_x, (grad * xhat).sum(rows), grad.sum(rows)  # LN_GRAD


layer_norm.register_autograd(_layer_norm_backward, setup_context=_saves)


def layer_norm_samples(device, dtype, requires_grad):
    yield SampleInput(*(torch.randn(*shape, dtype=dtype, requires_grad=requires_grad) for shape in ((3, 4), (4,), (4,))))


# -- a selective scan: h[t] = a[t] * h[t-1] + x[t] along dimension 1 of [B, L, D] ----------------------
@torch.library.custom_op("NS::linear_scan", mutates_args=())
def linear_scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    states, h = [], torch.zeros_like(x[:, 0])
    for t in range(x.shape[1]):
        h = a[:, t] * h + x[:, t]
        states.append(h)
    return torch.stack(states, 1) if states else torch.empty_like(x)


def _scan_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _scan_backward(ctx, grad):
    a, h = ctx.saved_tensors
    grads_x, carry = [], torch.zeros_like(grad[:, 0])
    for t in reversed(range(grad.shape[1])):
        carry = grad[:, t] + (a[:, t + 1] * carry if t + 1 < grad.shape[1] else 0)
        grads_x.append(carry)
    if not grads_x:
        return torch.zeros_like(a), torch.zeros_like(grad)
    grad_x = torch.stack(grads_x[::-1], 1)
    previous = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], 1)
    return grad_x * previous, grad_x


linear_scan.register_autograd(_scan_backward, setup_context=_scan_setup)


def scan_samples(device, dtype, requires_grad):
    a = (torch.rand(2, 3, 4, dtype=dtype) * 0.5 + 0.25).requires_grad_(requires_grad)
    yield SampleInput(a, torch.randn(2, 3, 4, dtype=dtype, requires_grad=requires_grad))


# -- depthwise causal convolution: x [B, C, L], weight [C, K]; y[t] = sum_k w[k] x[t - k] ----------------
def _delayed(x, k):
    return F.pad(x, (k, 0))[..., : x.shape[-1]]


def _advanced(g, k):
    return F.pad(g, (0, k))[..., k:]


@torch.library.custom_op("NS::causal_conv", mutates_args=())
def causal_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return sum(weight[:, k, None] * _delayed(x, k) for k in range(weight.shape[1]))


def _conv_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x = sum(_advanced(grad * weight[:, k, None], k) for k in range(weight.shape[1]))
    grad_w = torch.stack([(grad * _delayed(x, k)).sum((0, 2)) for k in range(weight.shape[1])], 1)
    return grad_x, grad_w


causal_conv.register_autograd(_conv_backward, setup_context=_saves)


def conv_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(2, 3, 5, dtype=dtype, requires_grad=requires_grad),
                      torch.randn(3, 2, dtype=dtype, requires_grad=requires_grad))


# -- rotary embeddings: x [B, L, D], cos and sin tables [L, D/2] (buffers, no gradient) ----------------
def _rotate(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)


@torch.library.custom_op("NS::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    torch._check(cos.is_contiguous() and sin.is_contiguous(), lambda: "the cos and sin tables must be contiguous")
    return _rotate(x, cos, sin)


def _rotary_backward(ctx, grad):
    x, cos, sin = ctx.saved_tensors
    return _rotate(grad, cos, -sin), None, None  # ROTARY_GRAD


rotary.register_autograd(_rotary_backward, setup_context=_saves)


def rotary_samples(device, dtype, requires_grad):
    angles = torch.arange(3, dtype=dtype)[:, None] * torch.tensor([1.0, 0.1], dtype=dtype)
    yield SampleInput(torch.randn(2, 3, 4, dtype=dtype, requires_grad=requires_grad), angles.cos(), angles.sin())


# -- a CSR segment reduction: values [nnz, D], index pointers int64 [S + 1] -> [S, D] -----------------
@torch.library.custom_op("NS::csr_sum", mutates_args=())
def csr_sum(values: torch.Tensor, indptr: torch.Tensor) -> torch.Tensor:
    bounds = indptr.tolist()
    return torch.stack([values[start:end].sum(0) for start, end in zip(bounds[:-1], bounds[1:])])


def _csr_backward(ctx, grad):
    values, indptr = ctx.saved_tensors
    counts = indptr[1:] - indptr[:-1]
    return grad.repeat_interleave(counts, dim=0, output_size=values.shape[0]), None


csr_sum.register_autograd(_csr_backward, setup_context=_saves)


def csr_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(6, 3, dtype=dtype, requires_grad=requires_grad), torch.tensor([0, 2, 2, 5, 6]))


FAMILIES = {
    "csr_sum": csr_samples,
    "roi_mean": roi_samples,
    "masked_attention": attention_samples,
    "segment_sum": segment_samples,
    "layer_norm": layer_norm_samples,
    "linear_scan": scan_samples,
    "causal_conv": conv_samples,
    "rotary": rotary_samples,
}
"""


#: Edge bugs planted in correct ops: (op, the line replaced, its buggy replacement).
BUGS = [
    (
        "roi_mean",  # an overflow guard that raises when there are no rois
        '    return torch.einsum("knl,kc->ncl", weights, grad), None  # ROI_GRAD',
        "    scale = grad.abs().max().clamp_min(1e-30)\n"
        '    return torch.einsum("knl,kc->ncl", weights, grad / scale) * scale, None',
    ),
    (
        "layer_norm",  # a row view that cannot infer its width for an empty batch
        "    return grad_x, (grad * xhat).sum(rows), grad.sum(rows)  # LN_GRAD",
        "    return grad_x.view(x.shape[0], -1), (grad * xhat).sum(rows), grad.sum(rows)",
    ),
]


def with_bugs(source: str) -> str:
    for _, line, buggy in BUGS:
        assert line in source, line
        source = source.replace(line, buggy)
    return source


def marked_tests(names: list[str], extra: str = "") -> str:
    """One customop test per op in ``names``, every default check, ``extra`` marker arguments."""
    return "".join(
        f'''
@pytest.mark.customop("NS::{name}", samples=FAMILIES["{name}"], devices=["cpu"]{extra})
def test_{name}(customop):
    customop.check()
'''
        for name in names
    )
