"""A test module that gives every outcome the report knows, for the report tests (not collected: no
``test_`` prefix). ``{ns}`` is replaced by a fresh op namespace."""

SUITE = """
import pytest
import torch
from torch.library import Library, custom_op

from pytest_customop import SampleInput, Skip, XFail


@custom_op("{ns}::good", mutates_args=())
def good(x: torch.Tensor) -> torch.Tensor:
    return x * 2


good.register_autograd(lambda ctx, grad: grad * 2)


@custom_op("{ns}::bad", mutates_args=())
def bad(x: torch.Tensor) -> torch.Tensor:
    return x * 3


bad.register_autograd(lambda ctx, grad: grad * 2)  # wrong: the derivative of 3x is 3


@custom_op("{ns}::worse", mutates_args=())
def worse(x: torch.Tensor) -> torch.Tensor:
    return x * 5


worse.register_autograd(lambda ctx, grad: grad)  # wrong, and known to be


@custom_op("{ns}::untested", mutates_args=())
def untested(x: torch.Tensor) -> torch.Tensor:  # no register_autograd: no formula
    return x + 1


lib = Library("{ns}", "FRAGMENT")
lib.define("composite(Tensor x) -> Tensor")
lib.impl("composite", lambda x: x * 4, "CompositeImplicitAutograd")


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, device=device, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(good, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck", "gradgradcheck"])
def test_good(customop):
    customop.check()


@pytest.mark.customop(
    bad,
    samples=samples,
    dtypes=["float64", "float32"],
    checks=["gradcheck", "gradgradcheck"],
    xfails=[XFail("the wrong backward is linear, so its double backward agrees", checks="gradgradcheck", strict=False)],
    skips=[Skip("no float32 kernel <yet>", dtypes=torch.float32)],
)
def test_bad(customop):
    customop.check()


@pytest.mark.customop(worse, samples=samples, dtypes=["float64"], checks=["gradcheck"], xfails=[XFail("known wrong backward")])
def test_worse(customop):
    customop.check()


@pytest.mark.customop("{ns}::missing", samples=samples)
def test_missing(customop):
    customop.check()


def test_plain():
    pass
"""


def suite(ns: str) -> str:
    return SUITE.replace("{ns}", ns)


def double_op(ns: str) -> str:
    """Source defining ``{ns}::double`` (a correct op) and ``samples``: a test module's first lines."""
    return f"""
import pytest, torch
from torch.library import custom_op
from pytest_customop import SampleInput

@custom_op("{ns}::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2

double.register_autograd(lambda ctx, grad: grad * 2)

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.ones(2, device=device, dtype=dtype, requires_grad=requires_grad))
"""
