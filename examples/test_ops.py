"""The bundled example: every op in ops.py verified by pytest-customop."""

import ops
import pytest
import torch

from pytest_customop import SampleInput


def mul_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4), alpha=2.0)
    yield SampleInput(make(3, 4), make(4), alpha=-0.5, sample_name="broadcast")
    yield SampleInput(make(2, 1), make(1, 3), sample_name="outer broadcast")


@pytest.mark.customop(ops.mul, samples=mul_samples, dtypes=[torch.float64, torch.complex128, torch.float32, torch.bfloat16])
def test_mul(customop):
    customop.check()


def softplus_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(8, device=device, dtype=dtype, requires_grad=requires_grad))
    yield SampleInput(torch.randn(2, 3, device=device, dtype=dtype, requires_grad=requires_grad), beta=2.0)


@pytest.mark.customop("examples::softplus", samples=softplus_samples, dtypes=[torch.float64, torch.float32])
def test_softplus(customop):
    customop.check()


def weighted_sum_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput([make(2, 3), make(2, 3), make(2, 3)], make(3))


@pytest.mark.customop(ops.weighted_sum, samples=weighted_sum_samples, dtypes=[torch.float64, torch.float32])
def test_weighted_sum(customop):
    customop.check()


def linear_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 3), make(5, 3), make(5))
    yield SampleInput(make(4, 3), make(5, 3), None, sample_name="no bias")


@pytest.mark.customop(ops.linear, samples=linear_samples, dtypes=[torch.float64, torch.float32])
def test_linear(customop):
    customop.check()


def abs2_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3), make(3))


@pytest.mark.customop(ops.abs2_scale, samples=abs2_samples, dtypes=[torch.complex128, torch.complex64])
def test_abs2_scale(customop):
    customop.check()


@pytest.mark.customop(ops.mul, samples=mul_samples, dtypes=[torch.float64], checks=["gradcheck"])
def test_mul_by_hand(customop, customop_samples):
    # The fixtures also serve tests that make their own assertions.
    x, y = customop_samples[0].args
    out = customop(x, y, alpha=2.0)
    out.sum().backward()
    torch.testing.assert_close(x.grad, y.detach() * 2.0)
