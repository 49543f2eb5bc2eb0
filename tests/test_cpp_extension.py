"""A real C++ op, compiled with ``torch.utils.cpp_extension.load_inline``: the example of
docs/howto/cpp_extension.md, run here with its messages checked.

A second test compiles ``customop_crash_cpp::crash_sin``, a C++ kernel that segfaults on an empty batch
(as torchvision's RoI ops do): edge_shapes contains the crash without being asked.

Its three ops: ``doc_cpp::mul`` (backward a C++ ``torch::autograd::Function``), ``doc_cpp::scale``
(plain C++, backward registered from Python) and ``doc_cpp::mul_wrong`` (a C++ backward with a bug).
The first build takes a minute; torch caches it (``~/.cache/torch_extensions``, or
``TORCH_EXTENSIONS_DIR``), so the docs test and this one compile once between them. Deselect with
``-m "not slow"``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from torch import __version__ as torch_version
from torch.utils.cpp_extension import get_default_build_root

# Read now: pytester points HOME at a temporary directory, which would move torch's build cache there
# and recompile on every run. One folder per torch version (torch's default names only Python and CUDA):
# a build, or a lock file a killed build left, of one version never blocks another's.
BUILD_ROOT = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(), f"torch-{torch_version}")

PAGE = Path(__file__).resolve().parent.parent / "docs" / "howto" / "cpp_extension.md"

pytestmark = pytest.mark.slow


def _example() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), flags=re.S | re.M)
    assert len(blocks) == 1, f"{PAGE} should hold exactly one python example, found {len(blocks)}"
    return blocks[0]


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_cpp_ops_verified_for_real(pytester, run, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", BUILD_ROOT)
    # In-process: the compiled library is loaded once into this process (a TORCH_LIBRARY namespace can
    # be registered only once per process, so this test must not run twice in one session).
    pytester.makepyfile(test_cpp_ops=_example())
    result = run("-v")
    outcomes = result.parseoutcomes()
    # Exactly the buggy C++ backward fails; every other item of the example passes or skips with a reason.
    assert outcomes.get("failed") == 1 and not outcomes.get("errors") and outcomes.get("passed", 0) >= 9, outcomes
    result.stdout.fnmatch_lines_random(
        [
            "*test_mul[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_mul[[]cpu-float64-gradgradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-gradgradcheck[]] PASSED*",
            "*test_mul_wrong[[]cpu-float64-gradcheck[]] FAILED*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "doc_cpp::mul_wrong gradcheck failed on cpu float64: 5 of 5 sample(s)",
            "  sample 0: SampleInput 'derived: every tensor [[]2, 3[]]'*",
            "    gradient of input 'y': *expected * (finite differences), got * (backward)*",
        ]
    )
    result.stdout.no_fnmatch_line("*gradient of input 'x'*")


CRASHING_CPP = r'''
import pytest
import torch
from torch.utils.cpp_extension import load_inline
from pytest_customop import SampleInput

SOURCE = """
#include <torch/extension.h>
#include <csignal>

// Like torchvision's RoI kernels on an empty batch: no check, a crash.
torch::Tensor crash_sin(const torch::Tensor& x) {
  if (x.dim() > 0 && x.size(0) == 0) std::raise(SIGSEGV);
  return x.sin();
}

TORCH_LIBRARY(customop_crash_cpp, m) { m.def("crash_sin(Tensor x) -> Tensor"); }
TORCH_LIBRARY_IMPL(customop_crash_cpp, CPU, m) { m.impl("crash_sin", &crash_sin); }
"""

load_inline(name="customop_crash_cpp", cpp_sources=SOURCE, is_python_module=False)


def backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * x.cos()


torch.library.register_autograd(
    "customop_crash_cpp::crash_sin", backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs)
)


def rows(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop("customop_crash_cpp::crash_sin", samples=rows, checks=["edge_shapes", "gradcheck"],
                      dtypes=["float64"], devices=["cpu"])
def test_crash_sin(customop):
    customop.check()
'''


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="crash containment forks: POSIX only")
def test_a_cpp_kernel_that_segfaults_on_an_empty_batch_fails_edge_shapes_and_the_session_goes_on(pytester, run, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", BUILD_ROOT)
    # In-process, once per session: a TORCH_LIBRARY namespace is registered once per process. The C++ kernel
    # counts as compiled, so edge_shapes runs its derived samples in forked children without being asked.
    pytester.makepyfile(test_crash_cpp=CRASHING_CPP)
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_crash_sin[[]cpu-float64-edge_shapes[]] FAILED*",
            "*test_crash_sin[[]cpu-float64-gradcheck[]] PASSED*",
            "    on a proven edge (dimension 0, shared by 'x' and the output, sliced to 0), the forward crashed "
            "the process with SIGSEGV",
            "    derived sample: SampleInput(Tensor([[]0, 4[]], float64, cpu, requires_grad))",
        ]
    )
