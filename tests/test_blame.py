"""Blame is exact: errors are named by where they happened (samples(), the plugin's preparation, the
op), checks run with grad mode on whatever the caller set, SystemExit from an op fails its item, a test
that verifies nothing fails, samples() is bounded, and a sample whose repr raises is described."""

from __future__ import annotations

import pytest
from report_suite import double_op


def test_blame_lands_where_the_error_happened(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makeconftest("""
import pytest, torch

@pytest.fixture(autouse=True)
def no_grad_everywhere():
    # as a conftest that turns autograd off (grad mode and inference mode) for speed; restored so the outer session is untouched
    previous = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    with torch.inference_mode():
        yield
    torch.set_grad_enabled(previous)
""")
    pytester.makepyfile(
        double_op(ns)
        + f'''
import itertools, sys
from torch.library import custom_op

class Weird:
    def __repr__(self):
        raise RuntimeError("no repr for you")

@custom_op("{ns}::exits", mutates_args=())
def exits(x: torch.Tensor) -> torch.Tensor:
    sys.exit(3)

exits.register_autograd(lambda ctx, grad: grad)

@custom_op("{ns}::counts_only", mutates_args=())
def counts_only(x: torch.Tensor) -> torch.Tensor:
    # a domain check: whole numbers only, which finite differences step off
    if not bool((x == x.round()).all()):
        raise ValueError("counts_only takes whole numbers")
    return x * 2

counts_only.register_autograd(lambda ctx, grad: grad * 2)

def whole(device, dtype, requires_grad):
    yield SampleInput(torch.tensor([1.0, 2.0, 3.0], device=device, dtype=dtype, requires_grad=requires_grad))

def endless(device, dtype, requires_grad):
    for _ in itertools.count():
        yield SampleInput(torch.ones(2, device=device, dtype=dtype, requires_grad=requires_grad))

def on_meta(device, dtype, requires_grad):
    yield SampleInput(torch.ones(2, device="meta", dtype=dtype, requires_grad=requires_grad))

def weird_yield(device, dtype, requires_grad):
    yield Weird()

def marked(op, **kwargs):
    return pytest.mark.customop(op, **{{"samples": samples, "dtypes": ["float64"], "checks": ["gradcheck", "gradgradcheck"], **kwargs}})

@marked(double, checks=None)  # every default check
def test_correct_op_with_grad_mode_off(customop):
    assert not torch.is_grad_enabled() and torch.is_inference_mode_enabled()
    customop.check()

@marked(exits, checks=["gradcheck"])
def test_op_calls_sys_exit(customop):
    customop.check()

@marked(counts_only, samples=whole, checks=["gradcheck"])
def test_forward_off_its_domain(customop):
    customop.check()

@marked(double, checks=["gradcheck"])
def test_never_checks(customop):
    pass

@marked(double, checks=["gradcheck"])
def test_verifies_itself(customop):
    x = customop.samples()[0].args[0]
    torch.testing.assert_close(customop(x), x * 2)

@marked(double, samples=endless, checks=["gradcheck"])
def test_endless_samples(customop):
    customop.check()

@marked(double, samples=on_meta, checks=["gradcheck"])
def test_meta_samples(customop):
    customop.check()

@marked(double, samples=weird_yield, checks=["gradcheck"])
def test_yield_with_raising_repr(customop):
    customop.check()
'''
    )
    result = run("--customop-report=json:report.json")
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 6 and outcomes["passed"] >= 3, outcomes  # the correct op passes every check that applies
    result.stdout.no_fnmatch_line("FAILED *test_correct_op_with_grad_mode_off*")
    text = result.stdout.str()
    assert "Traceback" not in text and "no repr for you" not in text
    result.stdout.fnmatch_lines_random(
        [
            f"*{ns}::exits gradcheck on cpu float64: the op raised SystemExit(3) during the check*",
            "*the forward raised on an input moved by eps=1e-06 for finite differences (it ran on the sample itself*"
            "ValueError: counts_only takes whole numbers",
            "*::test_never_checks*: requests the customop fixture but never calls customop.check()*nothing was verified*",
            "*customop marker argument 'samples': samples(device='cpu', dtype=torch.float64, requires_grad=True) "
            "yielded more than 256 samples (an endless generator?)*",
            "*customop marker argument 'samples': *yielded a meta tensor (argument 0) in sample 0; meta tensors hold no values*",
            "*customop marker argument 'samples': *yielded Weird <Weird object (its repr raised RuntimeError)> at index 0*",
        ]
    )
    assert "backward raised" not in text
