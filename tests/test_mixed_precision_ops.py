"""Ops that compute below the precision of their inputs, as real kernels do (a softmax upcast with
``.float()``, which is a downcast for float64 inputs), are not blamed for the finite differences that
their own rounding drowns at float64: the reference steps down to float32, says why, and still proves
the gradients there. And a self-attention (queries and keys of one length, by coincidence of sizes) is
not failed for a broadcast no sample of it makes."""

from __future__ import annotations

ATTENTION = """
import math

import pytest
import torch
from torch import Tensor

from pytest_customop import SampleInput

SIGN = {sign}


@torch.library.custom_op("{ns}::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~mask, float("-inf")).float(), -1).to(q.dtype) @ v


@attention.register_fake
def _(q, k, v, mask):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def backward(ctx, grad):
    q, k, v, mask = ctx.saved_tensors
    scale = 1 / math.sqrt(q.shape[-1])
    s = (q @ k.transpose(-1, -2)) * scale
    p = torch.softmax(s.masked_fill(~mask, float("-inf")).float(), -1).to(q.dtype)
    dp = grad @ v.transpose(-1, -2)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    return SIGN * (ds @ k) * scale, ds.transpose(-1, -2) @ q * scale, p.transpose(-1, -2) @ grad, None


attention.register_autograd(backward, setup_context=setup)


def samples(device, dtype, requires_grad):
    for b, t, d in [(2, 5, 8), (1, 3, 4)]:
        make = lambda: torch.randn(b, t, d, device=device, dtype=dtype, requires_grad=requires_grad)
        yield SampleInput(make(), make(), make(), torch.ones(t, t, dtype=torch.bool, device=device).tril())


@pytest.mark.customop(attention, samples=samples, dtypes=[torch.float32, torch.bfloat16, torch.float16], devices=["cpu"])
def test_attention(customop):
    result = customop.check()
    print("NOTES:", result.check, result.notes)
"""


def test_a_correct_attention_computing_in_float32_passes_every_default_check(pytester, ns, run):
    pytester.makepyfile(test_attention=ATTENTION.format(ns=ns, sign=1.0))
    texts = []
    for seed in ("1", "2", "3"):
        result = run("-s", "-W", "ignore", f"--customop-seed={seed}")
        outcomes = result.parseoutcomes()
        assert outcomes.get("failed", 0) == 0, result.stdout.str()[-4000:]
        assert outcomes["passed"] >= 20
        texts.append(result.stdout.str())
    # where float64's finite differences were drowned, the note says so and names the reference used
    assert any(
        "reference: float32 derivatives of the same input values, proven against finite differences in float32 "
        "(float64: its finite differences at steps 1e-06, 2e-06 and 0.001 give"
        in text
        and "it computes below float64 precision" in text
        for text in texts
    )


def test_a_wrong_attention_computing_in_float32_fails_gradcheck_at_every_dtype(pytester, ns, run):
    pytester.makepyfile(test_attention=ATTENTION.format(ns=ns, sign=-1.0))
    result = run("-W", "ignore", "--customop-seed=1", "-k", "gradcheck and not gradgradcheck")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [f"*{ns}::attention gradcheck failed on cpu {dtype}: 2 of 2 sample(s)" for dtype in ("float32", "bfloat16", "float16")],
        consecutive=False,
    )
    result.stdout.fnmatch_lines(["*gradient of input 'q' is wrong at float*, the reference precision, so at every precision*"])
