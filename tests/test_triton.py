"""Triton kernels under test on CPU, through Triton's interpreter: ``torch.library.triton_op`` ops are
checked like any other op; a kernel that ignores strides fails ``noncontiguous``; what the interpreter
cannot run, or a CPU launch without it, is a skip quoting Triton; without triton, the items skip.

The interpreter runs kernels in Python: these sessions use tiny tensors and a few selected checks.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="these tests need triton: pip install 'pytest-customop[triton]'")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

HEADER = '''
import pytest, torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton
from pytest_customop import SampleInput

NS = "{ns}"
BLOCK = 8


@triton.jit
def mul_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    tl.store(out_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * tl.load(y_ptr + offsets, mask=mask), mask=mask)


def launch_mul(x, y):
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        wrap_triton(mul_kernel)[(triton.cdiv(n, BLOCK),)](x, y, out, n, BLOCK=BLOCK)
    return out


def define_mul(name, forward_contiguous=True, backward_contiguous=True, grad_contiguous=True):
    """x * y with a Triton forward and a Triton backward (the same kernel), each making its inputs
    contiguous first or not (then the kernel's flat indexing reads the wrong elements)."""

    @triton_op(f"{{NS}}::{{name}}", mutates_args=())
    def op(x: Tensor, y: Tensor) -> Tensor:
        torch._check(x.shape == y.shape, lambda: "x and y must have one shape")
        if forward_contiguous:
            x, y = x.contiguous(), y.contiguous()
        return launch_mul(x, y)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        if backward_contiguous:
            x, y = x.contiguous(), y.contiguous()
        if backward_contiguous and grad_contiguous:
            grad = grad.contiguous()
        return launch_mul(grad, y), launch_mul(grad, x)

    op.register_autograd(backward, setup_context=setup_context)
    return op


def pair(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4))
'''


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(test_triton_ops=HEADER.format(ns=ns) + textwrap.dedent(body))


@pytest.fixture(autouse=True)
def _no_interpreter_from_outside(monkeypatch):
    """Each session decides on the interpreter itself (the in-process runs share os.environ)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def test_a_correct_triton_op_passes_through_the_interpreter(pytester, ns, run):
    write(
        pytester,
        ns,
        """
define_mul("mul")

@pytest.mark.customop(f"{NS}::mul", samples=pair, dtypes=[torch.float64],
                      checks=["gradcheck", "grad_keys", "noncontiguous", "opcheck", "compile"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-v", "-rs", "-p", "no:logging", "--customop-triton-interpret")
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines_random(
        [
            "customop: torch *, Triton interpreter on (TRITON_INTERPRET), seed=*",
            "*test_mul[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_mul[[]cpu-float64-grad_keys[]] PASSED*",
            "*test_mul[[]cpu-float64-noncontiguous[]] PASSED*",
            "*test_mul[[]cpu-float64-opcheck[]] PASSED*",  # test_schema and test_autograd_registration
            f"*torch.compile traces with fake tensors: {ns}::mul is a triton_op and Triton's interpreter is on*",
        ]
    )
    assert "TRITON_INTERPRET" not in os.environ  # the run left the environment as it found it


def test_a_kernel_that_ignores_strides_fails_noncontiguous(pytester, ns, run):
    write(
        pytester,
        ns,
        """
define_mul("flat_forward", forward_contiguous=False)
define_mul("flat_backward", backward_contiguous=False)
define_mul("flat_grad", grad_contiguous=False)  # only grad_output read flat

@pytest.mark.customop(f"{NS}::flat_forward", samples=pair, dtypes=[torch.float64], checks=["gradcheck", "noncontiguous"])
def test_flat_forward(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::flat_backward", samples=pair, dtypes=[torch.float64], checks=["gradcheck", "noncontiguous"])
def test_flat_backward(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::flat_grad", samples=pair, dtypes=[torch.float64], checks=["gradcheck", "noncontiguous"])
def test_flat_grad(customop):
    customop.check()
""",
    )
    result = run("-v", "-p", "no:logging", "--customop-triton-interpret")
    # gradcheck's contiguous inputs and grad_outputs cannot see it; noncontiguous does, in each direction
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "*test_flat_forward[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_flat_backward[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_flat_grad[[]cpu-float64-gradcheck[]] PASSED*",
            f"*{ns}::flat_forward noncontiguous failed on cpu float64: 1 of 1 sample(s)*",
            "*output 0 differs on non-contiguous inputs ('x' strides (2, 6), 'y' strides (2, 6)): * got nan (non-contiguous)*",
            f"*{ns}::flat_backward noncontiguous failed on cpu float64: 1 of 1 sample(s)*",
            f"*{ns}::flat_grad noncontiguous failed on cpu float64: 1 of 1 sample(s)*",
            "*gradient of input 'x' differs on non-contiguous inputs (*) with a grad_output *: *",
        ]
    )


def test_what_the_interpreter_cannot_run_is_a_skip_quoting_triton(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@triton.jit
def asm_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, mask=offsets < n)
    y = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    tl.store(out_ptr + offsets, y, mask=offsets < n)

@triton_op(f"{NS}::asm_copy", mutates_args=())
def asm_copy(x: Tensor) -> Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    wrap_triton(asm_kernel)[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), BLOCK=BLOCK)
    return out

asm_copy.register_autograd(lambda ctx, grad: grad)

def one(device, dtype, requires_grad):
    yield SampleInput(torch.randn(6, device=device, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(asm_copy, samples=one, dtypes=[torch.float32], checks=["grad_keys", "noncontiguous"])
def test_asm(customop):
    customop.check()

# The kernel's own bug (blocks of different shapes): an InterpreterError that is the op's failure.
@triton.jit
def broken_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, mask=offsets < n)
    tl.store(out_ptr + offsets, x + tl.arange(0, 2 * BLOCK), mask=offsets < n)

@triton_op(f"{NS}::broken", mutates_args=())
def broken(x: Tensor) -> Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    wrap_triton(broken_kernel)[(triton.cdiv(x.numel(), BLOCK),)](x, out, x.numel(), BLOCK=BLOCK)
    return out

broken.register_autograd(lambda ctx, grad: grad)

@pytest.mark.customop(broken, samples=one, dtypes=[torch.float32], checks=["grad_keys"])
def test_broken(customop):
    customop.check()
""",
    )
    result = run("-rs", "-p", "no:logging", "--customop-triton-interpret")
    result.assert_outcomes(skipped=2, failed=1)
    result.stdout.fnmatch_lines(["*forward raised InterpreterError: ValueError(*"])
    result.stdout.fnmatch_lines(
        [
            (
                "*Triton's interpreter does not support a feature this kernel uses (*InterpreterError: "
                "NotImplementedError('inline_asm not supported in interpreter mode')*): not a failure of the op; "
                "run this check on a GPU*"
            ),
        ]
    )


def test_without_the_interpreter_cpu_items_skip_saying_how_to_turn_it_on(pytester, ns, run):
    write(
        pytester,
        ns,
        """
define_mul("mul")

@pytest.mark.customop(f"{NS}::mul", samples=pair, dtypes=[torch.float64], checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-rs", "-p", "no:logging")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            (
                "*a Triton kernel was launched on CPU tensors with Triton's interpreter off (*): run with "
                "--customop-triton-interpret (or ini customop_triton_interpret = true, or TRITON_INTERPRET=1)*"
            ),
        ]
    )


def test_the_ini_key_turns_the_interpreter_on_and_an_explicit_variable_wins(pytester, ns, run, monkeypatch):
    write(
        pytester,
        ns,
        """
define_mul("mul")

@pytest.mark.customop(f"{NS}::mul", samples=pair, dtypes=[torch.float64], checks=["grad_keys"])
def test_mul(customop):
    customop.check()
""",
    )
    pytester.makeini("[pytest]\ncustomop_triton_interpret = true\n")
    run("-p", "no:logging").assert_outcomes(passed=1)
    assert "TRITON_INTERPRET" not in os.environ
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the variable, when set, is the user's choice
    result = run("-rs", "-p", "no:logging", "-k", "nothing-selected")
    assert os.environ["TRITON_INTERPRET"] == "0"
    assert "Triton interpreter on" not in result.stdout.str()


def test_the_bundled_triton_example_passes_through_the_interpreter(pytester, run):
    for name in ("triton_ops.py", "test_triton_ops.py"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    result = run(
        "-rs", "-p", "no:logging", "--customop-triton-interpret", "-k", "cpu and float64 and (grad_keys or noncontiguous)"
    )
    result.assert_outcomes(passed=4)  # scaled_mul and its backward op


def test_without_triton_the_triton_items_skip_with_the_reason(pytester):
    """triton hidden by an import blocker (in a subprocess: this process has triton imported)."""
    pytester.makeconftest("""
import sys

class _NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTriton())
""")
    for name in ("triton_ops.py", "test_triton_ops.py"):
        shutil.copy(EXAMPLES / name, pytester.path / name)
    pytester.makepyfile(
        test_plain="""
import pytest, torch
from pytest_customop import SampleInput

class Double(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad

def one(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(Double, samples=one, dtypes=[torch.float64], checks=["gradcheck"])
def test_double(customop):
    customop.check()
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", "--customop-triton-interpret")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] test_triton_ops.py:*: the Triton example needs triton: pip install 'pytest-customop[[]triton[]]'",
        ]
    )


def test_under_xdist_workers_run_triton_through_the_interpreter(pytester, ns):
    """The option is resolved on the controller and on each worker, before any test module is imported."""
    write(
        pytester,
        ns,
        """
define_mul("mul")
define_mul("flat_forward", forward_contiguous=False)

class AlphaGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x * alpha

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.alpha, grad.sum()

def scaled(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad), 2.0)

@pytest.mark.customop(f"{NS}::mul", samples=pair, dtypes=[torch.float64], checks=["gradcheck", "noncontiguous"])
def test_mul(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::flat_forward", samples=pair, dtypes=[torch.float64], checks=["noncontiguous"])
def test_flat_forward(customop):
    customop.check()

@pytest.mark.customop(AlphaGrad, samples=scaled, dtypes=[torch.float64], checks=["grad_keys"])
def test_alpha(customop):
    customop.check()
""",
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--customop-seed=3", "--customop-triton-interpret"
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*FAILED test_triton_ops.py::test_flat_forward[[]cpu-float64-noncontiguous[]]*",
            f"{ns}::flat_forward noncontiguous failed on cpu float64: 1 of 1 sample(s)",
            "*FAILED test_triton_ops.py::test_alpha[[]cpu-float64-grad_keys[]]*",
            "*test_triton_ops.AlphaGrad: the gradient for input 'alpha' (float): expected None (not a tensor)*",
        ]
    )
