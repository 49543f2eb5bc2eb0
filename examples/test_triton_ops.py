"""The bundled Triton example, verified by pytest-customop: on CPU through Triton's interpreter
(``pytest examples --customop-triton-interpret``), on CUDA as compiled. Skipped without triton."""

import pytest
import torch

pytest.importorskip("triton", reason="the Triton example needs triton: pip install 'pytest-customop[triton]'")
if not hasattr(torch.library, "triton_op"):
    pytest.skip(f"torch.library.triton_op needs torch >= 2.6 (this is {torch.__version__})", allow_module_level=True)

import triton_ops  # after the skip: it imports triton

from pytest_customop import SampleInput


def scaled_mul_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4), 2.0)
    yield SampleInput(make(20), make(20), -0.5, sample_name="two blocks")


# The interpreter runs kernels in Python: a few small samples at float64 (gradcheck's precision) and
# float32 keep this under seconds on CPU.
@pytest.mark.customop(
    triton_ops.scaled_mul, samples=scaled_mul_samples, dtypes=[torch.float64, torch.float32], devices=["cpu", "cuda"]
)
def test_scaled_mul(customop):
    customop.check()


def scaled_mul_backward_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4), make(3, 4), 2.0)


# The backward op on its own (scaled_mul's gradgradcheck goes through it too): its own backward.
@pytest.mark.customop(
    triton_ops.scaled_mul_backward,
    samples=scaled_mul_backward_samples,
    dtypes=[torch.float64],
    devices=["cpu", "cuda"],
    checks=["gradcheck", "grad_keys", "noncontiguous"],
)
def test_scaled_mul_backward(customop):
    customop.check()
