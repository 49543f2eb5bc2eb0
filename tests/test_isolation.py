"""Crash containment: a derived sample that kills the process fails its item with the signal and the
sample, and the session goes on, with and without pytest-xdist."""

from __future__ import annotations

import os
import signal

import pytest
import torch
from customop_sources import write

from pytest_customop.isolation import Crash, compiled_kernel, run_contained
from pytest_customop.ops import resolve_op

posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="crash containment forks: POSIX only")


@posix_only
def test_run_contained_reports_the_signal_of_each_crashing_step_and_runs_the_rest():
    def step(k: int):
        if k == 1:
            os.kill(os.getpid(), signal.SIGSEGV)
        if k == 3:
            os.abort()
        return k * 10 + int(torch.ones(3).sum())

    assert run_contained(5, step, isolate=True) == [3, Crash("SIGSEGV"), 23, Crash("SIGABRT"), 43]
    assert run_contained(2, lambda k: k, isolate=False) == [0, 1]


def test_compiled_kernels_are_told_from_python_ones(ns):
    assert "RegisterCPU" in compiled_kernel(resolve_op("aten::mul.Tensor"), "cpu")

    @torch.library.custom_op(f"{ns}::double", mutates_args=())
    def double(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    lib = torch.library.Library(ns, "FRAGMENT")
    lib.define("triple(Tensor x) -> Tensor")
    lib.impl("triple", lambda x: x * 3, "CPU")
    assert compiled_kernel(resolve_op(double), "cpu") is None
    assert compiled_kernel(resolve_op(f"{ns}::triple"), "cpu") is None
    test_compiled_kernels_are_told_from_python_ones.lib = lib  # keep the registration alive


CRASHING = """
import os
import signal


def rows(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad))


@torch.library.custom_op("NS::segv_on_empty", mutates_args=())
def segv_on_empty(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] == 0:  # what torchvision's RoI kernels do with an empty batch
        os.kill(os.getpid(), signal.SIGSEGV)
    return torch.sin(x)


def _sin_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    if x.shape[1] == 1:
        os.abort()  # a C++ assertion in a backward
    return grad * torch.cos(x)


segv_on_empty.register_autograd(_sin_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))

ISOLATED = {"edge_shapes": {"isolate": True}}  # a Python op standing in for a compiled one


@pytest.mark.customop(segv_on_empty, samples=rows, checks=["edge_shapes"], dtypes=["float64"], devices=["cpu"], options=ISOLATED)
def test_crashing(customop):
    customop.check()


@pytest.mark.customop(segv_on_empty, samples=rows, checks=["gradcheck"], dtypes=["float64"], devices=["cpu"])
def test_after_the_crash(customop):
    customop.check()


@torch.library.custom_op("NS::abort_without_grad", mutates_args=())
def abort_without_grad(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * y


def _mul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    if not all(ctx.needs_input_grad):
        os.abort()  # a C++ backward dereferencing the undefined gradient it was not asked for
    return grad * y, grad * x


abort_without_grad.register_autograd(_mul_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))


def pairs(device, dtype, requires_grad):
    yield SampleInput(*(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad) for _ in range(2)))


@pytest.mark.customop(abort_without_grad, samples=pairs, checks=["requires_grad_subsets"], dtypes=["float64"],
                      devices=["cpu"], options={"requires_grad_subsets": {"isolate": True}})
def test_subsets_crash(customop):
    customop.check()
"""


@posix_only
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["no-xdist", "xdist"])
def test_a_crashing_derived_sample_fails_its_item_and_the_session_goes_on(pytester, ns, run, workers):
    write(pytester, ns, CRASHING)
    result = run("-v", *workers)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "    the forward and backward when only 'x' requires grad crashed the process with SIGABRT",
            f"{ns}::segv_on_empty edge_shapes failed on cpu float64: 1 of 1 sample(s)",
            "    on a proven edge (dimension 0, shared by 'x' and the output, sliced to 0), the forward crashed the process "
            "with SIGSEGV",
            "    derived sample: SampleInput(Tensor([[]0, 4[]], float64, cpu, requires_grad))",
            "    on a proven edge (dimension 1, shared by 'x' and the output, sliced to 1), the backward crashed the process "
            "with SIGABRT",
        ]
    )
