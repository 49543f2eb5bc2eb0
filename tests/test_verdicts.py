"""Verdicts to trust at every dtype (issue 11): tolerances that follow the gradient's scale, gradients
proven right (not only consistent) at low precision, the precision ladder, ``reference=``, and gradients
asked for only where they exist. Each behaviour: a wrong backward that fails, correct ops that pass, at
float32-only, bfloat16-only and float64+float32 markers."""

from __future__ import annotations

import textwrap

import pytest

HEADER = """
import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput

NS = "{ns}"

def make_op(name, fwd, bwd, save=None):
    op = torch.library.custom_op(f"{{NS}}::{{name}}", mutates_args=())(fwd)
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*[i for i in inputs if isinstance(i, Tensor)])
    op.register_autograd(bwd, setup_context=save or setup_context)
    return op
"""

# The three markers every behaviour is tried at.
MARKERS = [
    pytest.param("[torch.float32]", id="float32"),
    pytest.param("[torch.bfloat16]", id="bfloat16"),
    pytest.param("[torch.float64, torch.float32]", id="float64+float32"),
]


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(test_ops=HEADER.format(ns=ns) + textwrap.dedent(body))


# -- point 4: tolerances that follow the gradient's scale ---------------------------------------------

RMS_NORM = """
def rms_norm(x: Tensor) -> Tensor:
    # accumulates in float32 (at least), as kernels do
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    return (xf * xf.pow(2).mean(-1, keepdim=True).rsqrt()).to(x.dtype)

def _rms_backward(x, grad):
    rstd = x.pow(2).mean(-1, keepdim=True).rsqrt()
    xhat = x * rstd
    return rstd * (grad - xhat * (grad * xhat).mean(-1, keepdim=True))

def accumulates_in_float32(ctx, grad):
    (x,) = ctx.saved_tensors
    wide = torch.promote_types(x.dtype, torch.float32)
    return _rms_backward(x.to(wide), grad.to(wide)).to(x.dtype)

def accumulates_in_input_dtype(ctx, grad):
    # float16: the sum of squares of values ~200 overflows to inf, rstd is 0, the gradient all zeros
    (x,) = ctx.saved_tensors
    return _rms_backward(x, grad)

def big_rows(device, dtype, requires_grad):
    # rms ~500: every element of the gradient is below 1e-2 (float16's old atol)
    yield SampleInput((torch.randn(4, 64, device=device) * 500).to(dtype).requires_grad_(requires_grad))
"""


def test_float16_gradient_collapsed_to_zeros_fails_though_its_elements_are_small(pytester, ns, run):
    write(
        pytester,
        ns,
        RMS_NORM
        + """
make_op("rms_wrong", rms_norm, accumulates_in_input_dtype)
make_op("rms_right", rms_norm, accumulates_in_float32)

@pytest.mark.customop(f"{NS}::rms_wrong", samples=big_rows, devices=["cpu"], dtypes=[torch.float16],
                      checks=["gradcheck"])
def test_wrong(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::rms_right", samples=big_rows, devices=["cpu"],
                      dtypes=[torch.float64, torch.float32, torch.float16, torch.bfloat16], checks=["gradcheck"])
def test_right(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(failed=1, passed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_wrong[[]cpu-float16-gradcheck[]] FAILED*",
            "    gradient of input 'x' at float16 differs from *: * of 256 element(s) differ; worst at index (*): "
            "expected *0.00*, got *0 (float16); abs err 0.00*, rel err 1 "
            "(allowed: atol 1e-05 + rtol 0.01 * |expected| + 0.01 * max|expected| = * here) [[]reference: float64 derivatives of the same input values, proven*]",
        ]
    )


LINEAR = """
def linear(x: Tensor, w: Tensor) -> Tensor:
    return x @ w

def linear_backward(ctx, grad):
    x, w = ctx.saved_tensors
    return grad @ w.t(), x.t() @ grad

def half_weight_gradient(ctx, grad):
    # a low-precision kernel path that drops a factor: wrong only below float64
    gx, gw = linear_backward(ctx, grad)
    return gx, gw if gw.dtype == torch.float64 else gw * 0.5

def pixel_features(device, dtype, requires_grad):
    # features of size ~100 (unnormalised pixel coordinates): the weight gradient's elements near zero
    # carry float32 rounding of ~3e-4, honest, beyond torch.allclose's atol=1e-4
    make = lambda *s, scale=1.0: (torch.randn(*s, device=device) * scale).to(dtype).requires_grad_(requires_grad)
    yield SampleInput(make(256, 64, scale=100.0), make(64, 32))
    yield SampleInput(make(8, 5, scale=1.0), make(5, 3), sample_name="small")
"""


@pytest.mark.parametrize("dtypes", MARKERS)
def test_honest_float32_rounding_passes_and_a_halved_gradient_fails(pytester, ns, run, dtypes):
    write(
        pytester,
        ns,
        LINEAR
        + f"""
make_op("linear", linear, linear_backward)
make_op("linear_half", linear, half_weight_gradient)

@pytest.mark.customop(f"{{NS}}::linear", samples=pixel_features, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::linear_half", samples=pixel_features, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v")
    with_float64 = "float64" in dtypes
    # the right op passes every dtype; the wrong one passes float64 (right there) and fails the other
    result.assert_outcomes(passed=3 if with_float64 else 1, failed=1)
    result.stdout.fnmatch_lines(["*test_wrong[[]cpu-*-gradcheck[]] FAILED*", "*gradient of input 'w' at *"])
    result.stdout.no_fnmatch_line("*test_right* FAILED*")


# -- points 1-2: every low-precision item proves its reference; the precision ladder ------------------

MUL = """
def mul(x: Tensor, y: Tensor) -> Tensor:
    return x * y

def _sum_to(g, shape):
    while g.dim() > len(shape):
        g = g.sum(0)
    return g

def mul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    return _sum_to(grad * y, x.shape), _sum_to(grad * x, y.shape)

def wrong_sign(ctx, grad):
    gx, gy = mul_backward(ctx, grad)
    return gx, -gy

def pairs(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 3), make(4, 3))
    yield SampleInput(make(4, 3), make(3), sample_name="broadcast")
"""


@pytest.mark.parametrize("dtypes", MARKERS)
def test_a_backward_wrong_at_every_dtype_fails_every_dtype(pytester, ns, run, dtypes):
    # (a wrong sign is a first-derivative bug: gradgradcheck differentiates the wrong backward correctly;
    # second-derivative bugs are test_a_silently_wrong_double_backward_fails_at_low_precision's)
    check = "gradcheck"
    write(
        pytester,
        ns,
        MUL
        + f'''
make_op("mul", mul, mul_backward)
make_op("mul_wrong", mul, wrong_sign)

@pytest.mark.customop(f"{{NS}}::mul", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["{check}"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_wrong", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["{check}"])
def test_wrong(customop):
    customop.check()
''',
    )
    result = run("-v")
    count = dtypes.count(",") + 1
    result.assert_outcomes(passed=count, failed=count)
    result.stdout.no_fnmatch_line("*test_right*FAILED*")
    if "float64" not in dtypes:
        result.stdout.fnmatch_lines(
            [
                "    gradient of input * is wrong at float64, the reference precision, so at every precision: along a random "
                "direction: expected * (finite differences in float64, step 1e-06), got * (backward in float64); *"
                "[[]reference: float64 derivatives of the same input values, proven against finite differences in float64[]]",
            ]
        )


NO_FLOAT64 = """
SUPPORTED = {supported}

def _kernel_guard(t):
    # what a kernel compiled for some dtypes only does with another
    if t.dtype not in SUPPORTED:
        raise RuntimeError(f"mul_kernel: {{t.dtype}} is not supported")

def limited(x: Tensor, y: Tensor) -> Tensor:
    _kernel_guard(x)
    return x * y

def limited_backward(ctx, grad):
    _kernel_guard(grad)
    return mul_backward(ctx, grad)

def limited_wrong(ctx, grad):
    _kernel_guard(grad)
    return wrong_sign(ctx, grad)
"""


@pytest.mark.parametrize("dtypes", MARKERS[:2])
def test_an_op_without_float64_is_proven_in_float32_not_blamed(pytester, ns, run, dtypes):
    write(
        pytester,
        ns,
        MUL
        + NO_FLOAT64.format(supported="(torch.float32, torch.float16, torch.bfloat16)")
        + f"""
make_op("mul", limited, limited_backward)
make_op("mul_wrong", limited, limited_wrong)

@pytest.mark.customop(f"{{NS}}::mul", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["gradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_wrong", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["gradcheck"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v", "--customop-report")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.no_fnmatch_line("*backward raised*")
    result.stdout.no_fnmatch_line("*forward raised*")
    result.stdout.fnmatch_lines(
        [
            "    gradient of input 'y' is wrong at float32, the reference precision, so at every precision: along a random "
            "direction: expected * (finite differences in float32, step 0.001), got * (backward in float32); *",
            "  note: reference: *float32 derivatives*, proven against finite differences in float32 "
            "(float64: RuntimeError: mul_kernel: torch.float64 is not supported)",
        ]
    )


def test_an_op_running_in_no_precision_for_finite_differences_is_a_skip_saying_how_to_give_a_reference(pytester, ns, run):
    write(
        pytester,
        ns,
        MUL
        + NO_FLOAT64.format(supported="(torch.bfloat16,)")
        + """
make_op("mul", limited, limited_wrong)

@pytest.mark.customop(f"{NS}::mul", samples=pairs, devices=["cpu"], dtypes=[torch.bfloat16], checks=["gradcheck"])
def test_bf16_only(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * no precision at or above bfloat16 where finite differences mean something runs *::mul "
            "(float64: RuntimeError: mul_kernel: torch.float64 is not supported; float32: RuntimeError: *), so its "
            "gradients cannot be proven here: give the marker reference=fn, *",
        ]
    )


SILENT_DOUBLE_BACKWARD = """
# an op with a CPU kernel (not traced, as a C++ one) and no autograd kernel: torch only warns when a
# graph goes through it, and its inputs get no gradient
_lib = torch.library.Library(NS, "FRAGMENT")
_lib.define("times(Tensor a, Tensor b) -> Tensor")

def _times_kernel(a, b):
    with torch.no_grad():
        return a * b

_lib.impl("times", _times_kernel, "CPU")

def through_an_op_without_autograd(ctx, grad):
    # first derivatives right; their own derivatives silently lost (torch only warns)
    x, y = ctx.saved_tensors
    return torch.ops.{ns}.times(grad, y), torch.ops.{ns}.times(grad, x)

def same_shape(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(4, 3), make(4, 3))
"""


@pytest.mark.parametrize("dtypes", MARKERS)
def test_a_silently_wrong_double_backward_fails_at_low_precision(pytester, ns, run, dtypes):
    write(
        pytester,
        ns,
        MUL
        + SILENT_DOUBLE_BACKWARD.replace("{ns}", ns)
        + f"""
make_op("mul", mul, mul_backward)
make_op("mul_detached", mul, through_an_op_without_autograd)

@pytest.mark.customop(f"{{NS}}::mul", samples=same_shape, devices=["cpu"], dtypes={dtypes}, checks=["gradgradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_detached", samples=same_shape, devices=["cpu"], dtypes={dtypes},
                      checks=["gradgradcheck"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v", "-W", "ignore")
    count = dtypes.count(",") + 1
    result.assert_outcomes(passed=count, failed=count)
    result.stdout.no_fnmatch_line("*test_right*FAILED*")


# -- point 5: ops whose outputs are all integer or bool -----------------------------------------------

INTEGER_OUTPUTS = """
@torch.library.custom_op(f"{NS}::top_index", mutates_args=())
def top_index(scores: Tensor) -> Tensor:
    return scores.argmax(-1)

@top_index.register_fake
def _(scores):
    return scores.new_empty(scores.shape[:-1], dtype=torch.long)

@torch.library.custom_op(f"{NS}::keep_mask", mutates_args=())
def keep_mask(scores: Tensor, threshold: float) -> Tensor:
    return scores > threshold

@keep_mask.register_fake
def _(scores, threshold):
    return torch.empty_like(scores, dtype=torch.bool)

@torch.library.custom_op(f"{NS}::soft_index", mutates_args=())
def soft_index(scores: Tensor) -> Tensor:
    # a float output and no autograd formula: the gradient checks must still fail it
    return scores.softmax(-1)

@soft_index.register_fake
def _(scores):
    return torch.empty_like(scores)

def scores(device, dtype, requires_grad):
    yield SampleInput(torch.randn(5, 7, device=device, dtype=dtype, requires_grad=requires_grad))

def scores_threshold(device, dtype, requires_grad):
    yield SampleInput(torch.randn(5, 7, device=device, dtype=dtype, requires_grad=requires_grad), 0.5)
"""


@pytest.mark.parametrize("dtypes", MARKERS)
def test_ops_with_only_integer_or_bool_outputs_are_not_applicable_for_gradient_checks(pytester, ns, run, dtypes):
    write(
        pytester,
        ns,
        INTEGER_OUTPUTS
        + f"""
GRADIENT_CHECKS = ["gradcheck", "gradgradcheck", "grad_keys"]

@pytest.mark.customop(f"{{NS}}::top_index", samples=scores, devices=["cpu"], dtypes={dtypes}, checks=GRADIENT_CHECKS)
def test_argmax(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::keep_mask", samples=scores_threshold, devices=["cpu"], dtypes={dtypes},
                      checks=GRADIENT_CHECKS)
def test_mask(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::soft_index", samples=scores, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck", "grad_keys"])
def test_no_formula(customop):
    customop.check()
""",
    )
    result = run("-rs")
    count = dtypes.count(",") + 1
    result.assert_outcomes(skipped=6 * count, failed=2 * count)
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED * every output of {ns}::top_index is int64: not differentiable, so gradient checks do not apply",
            f"SKIPPED * every output of {ns}::keep_mask is bool: not differentiable, so gradient checks do not apply",
        ]
    )
    result.stdout.fnmatch_lines([f"{ns}::soft_index gradcheck failed on cpu *"])
    result.stdout.no_fnmatch_line("*top_index * failed*")
    result.stdout.no_fnmatch_line("*keep_mask * failed*")


# -- point 6: gradients asked for only where they exist ------------------------------------------------

MAKE_TENSOR_SAMPLES = """
from torch.testing import make_tensor

@torch.library.custom_op(f"{NS}::shift", mutates_args=())
def shift(x: Tensor, amount: int) -> Tensor:
    return x + amount

@shift.register_fake
def _(x, amount):
    return torch.empty_like(x)

@torch.library.custom_op(f"{NS}::shift_bad_fake", mutates_args=())
def shift_bad_fake(x: Tensor, amount: int) -> Tensor:
    return x + amount

@shift_bad_fake.register_fake
def _(x, amount):
    return torch.empty_like(x, dtype=torch.float32)  # wrong for integer inputs

def shift_grad(ctx, grad):
    return grad, None

for _op in (shift, shift_bad_fake):
    _op.register_autograd(shift_grad)

def shift_samples(device, dtype, requires_grad):
    # OpInfo-style: make_tensor raises for requires_grad=True at integer dtypes
    yield SampleInput(make_tensor((3, 4), dtype=dtype, device=device, requires_grad=requires_grad), 2)
"""


def test_opcheck_asks_integer_samples_without_requires_grad_and_finds_fake_kernel_dtype_bugs(pytester, ns, run):
    write(
        pytester,
        ns,
        MAKE_TENSOR_SAMPLES
        + """
@pytest.mark.customop(f"{NS}::shift", samples=shift_samples, devices=["cpu"],
                      dtypes=[torch.int64, torch.int32, torch.float32], checks=["opcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{NS}::shift_bad_fake", samples=shift_samples, devices=["cpu"],
                      dtypes=[torch.int64, torch.float32], checks=["opcheck"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines(["*test_wrong[[]cpu-int64-opcheck[]] FAILED*", "*test_faketensor failed*"])
    result.stdout.no_fnmatch_line("*requires_grad=True*raised*")


BUFFER = """
def scale_by_table(x: Tensor, table: Tensor) -> Tensor:
    # the kernel reads its lookup table as float32 whatever x's dtype
    if table.dtype != torch.float32:
        raise RuntimeError(f"scale_by_table: table must be float32, got {table.dtype}")
    return x * table.to(x.dtype)

def _table_backward(ctx, grad):
    (table,) = ctx.saved_tensors
    return grad * table.to(grad.dtype), None

def _table_backward_wrong(ctx, grad):
    (table,) = ctx.saved_tensors
    return -grad * table.to(grad.dtype), None

def _save_table(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])

def with_table(device, dtype, requires_grad):
    yield SampleInput(torch.randn(4, 6, device=device, dtype=dtype, requires_grad=requires_grad),
                      torch.rand(6, device=device, dtype=torch.float32) + 0.5)
"""


@pytest.mark.parametrize("dtypes", ["[torch.float16]", *MARKERS[1:]])
def test_the_reference_keeps_buffers_of_another_dtype(pytester, ns, run, dtypes):
    write(
        pytester,
        ns,
        BUFFER
        + f"""
make_op("table", scale_by_table, _table_backward, save=_save_table)
make_op("table_wrong", scale_by_table, _table_backward_wrong, save=_save_table)

@pytest.mark.customop(f"{{NS}}::table", samples=with_table, devices=["cpu"], dtypes={dtypes}, checks=["gradcheck"])
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::table_wrong", samples=with_table, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v")
    count = dtypes.count(",") + 1
    result.assert_outcomes(passed=count, failed=count)
    # (a float32 item converts the table with x, being of x's dtype: the op refuses, and the ladder steps
    # down to float32, saying so in the note)
    result.stdout.no_fnmatch_line("*raised*")
    result.stdout.no_fnmatch_line("*test_right*FAILED*")


# -- point 3: reference= -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtypes", MARKERS)
def test_reference_compares_outputs_and_gradients_with_its_float64_autograd(pytester, ns, run, dtypes):
    write(
        pytester,
        ns,
        MUL
        + f"""
def doubled(x: Tensor, y: Tensor) -> Tensor:
    return 2 * x * y

def doubled_backward(ctx, grad):
    gx, gy = mul_backward(ctx, grad)
    return 2 * gx, 2 * gy

make_op("mul", mul, mul_backward)
make_op("doubled", doubled, doubled_backward)   # consistent with itself, not with what it claims to be

def reference(x, y):
    return x * y

@pytest.mark.customop(f"{{NS}}::mul", samples=pairs, devices=["cpu"], dtypes={dtypes},
                      checks=["gradcheck", "gradgradcheck"], reference=reference)
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::doubled", samples=pairs, devices=["cpu"], dtypes={dtypes}, checks=["gradcheck"],
                      reference=reference)
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v")
    count = dtypes.count(",") + 1
    result.assert_outcomes(passed=2 * count, failed=count)
    result.stdout.fnmatch_lines(
        [
            "    output 0 at * differs from the reference= in float64 on the same input values: * element(s) differ; *",
        ]
    )
    result.stdout.no_fnmatch_line("*test_right*FAILED*")


@pytest.mark.parametrize("check", ["gradcheck", "gradgradcheck"])
def test_reference_proves_a_bfloat16_only_kernel(pytester, ns, run, check):
    write(
        pytester,
        ns,
        MUL
        + NO_FLOAT64.format(supported="(torch.bfloat16,)")
        + f'''
def limited_detached(ctx, grad):
    # right first derivatives through an op without autograd: second derivatives silently lost
    _kernel_guard(grad)
    x, y = ctx.saved_tensors
    with torch.no_grad():
        gx, gy = grad * y, grad * x
    return _sum_to(gx, x.shape), _sum_to(gy, y.shape)

make_op("mul", limited, limited_backward)
make_op("mul_wrong", limited, {"limited_wrong" if check == "gradcheck" else "limited_detached"})

@pytest.mark.customop(f"{{NS}}::mul", samples=pairs, devices=["cpu"], dtypes=[torch.bfloat16], checks=["{check}"],
                      reference=lambda x, y: x * y)
def test_right(customop):
    customop.check()

@pytest.mark.customop(f"{{NS}}::mul_wrong", samples=pairs, devices=["cpu"], dtypes=[torch.bfloat16],
                      checks=["{check}"], reference=lambda x, y: x * y)
def test_wrong(customop):
    customop.check()
''',
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    what = "gradient" if check == "gradcheck" else "second derivative"
    result.stdout.fnmatch_lines(
        [
            f"    {what} of input * at bfloat16 differs from the reference= in float64's autograd {what} of the same input values: *",
            "  note: reference: the marker's reference= in float64 autograd (no precision runs * for finite differences)",
        ]
    )


def test_a_bad_reference_is_a_marker_error(pytester, ns, run):
    write(
        pytester,
        ns,
        MUL
        + """
make_op("mul", mul, mul_backward)

@pytest.mark.customop(f"{NS}::mul", samples=pairs, reference="x * y")
def test_bad(customop):
    customop.check()

def test_unrelated():
    pass
""",
    )
    result = run()
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "test_ops.py::test_bad: customop marker argument 'reference': got 'x * y'; allowed: a plain PyTorch "
            "function with the op's signature (OpInfo's ref)*",
        ]
    )


SQRT_NO_FLOAT64 = """
def _guard(t):
    if t.dtype == torch.float64:
        raise RuntimeError("sqrt_kernel: float64 is not supported")

def root(x: Tensor) -> Tensor:
    _guard(x)
    return x.sqrt()

def root_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * 0.5 / x.sqrt()

def root_wrong(ctx, grad):
    return -root_backward(ctx, grad)

def near_zero(device, dtype, requires_grad):
    make = lambda t: t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
    yield SampleInput(make(torch.rand(4, 8) + 0.5))
    tiny = torch.rand(4, 8) + 0.5
    tiny[0, 0] = 1e-9  # a finite-difference step away, sqrt is NaN
    yield SampleInput(make(tiny), sample_name="near zero")
"""


def test_a_step_out_of_the_domain_is_a_note_not_a_failure(pytester, ns, run):
    write(
        pytester,
        ns,
        SQRT_NO_FLOAT64
        + """
make_op("root", root, root_backward)
make_op("root_wrong", root, root_wrong)

@pytest.mark.customop(f"{NS}::root", samples=near_zero, devices=["cpu"], dtypes=[torch.float32], checks=["gradcheck"])
def test_right(customop):
    result = customop.check()
    assert any("not proven: the loss is not finite" in note for note in result.notes), result.notes

@pytest.mark.customop(f"{NS}::root_wrong", samples=near_zero, devices=["cpu"], dtypes=[torch.float32],
                      checks=["gradcheck"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*gradient of input 'x' is wrong at float32, the reference precision*"])


JVP_REFUSAL = """
class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad * 3

    @staticmethod
    def jvp(ctx, tangent):
        {jvp}

lib = torch.library.Library(NS, "FRAGMENT")
lib.define("triple(Tensor x) -> Tensor")
lib.impl("triple", _Scale.apply, "CompositeImplicitAutograd")

def one(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, device=device, dtype=dtype, requires_grad=requires_grad))
"""


@pytest.mark.parametrize("dtypes", MARKERS)
def test_an_explicit_jvp_refusal_is_a_skip_quoting_it_and_a_wrong_jvp_fails(pytester, ns, run, dtypes):
    refusing = JVP_REFUSAL.format(jvp='raise NotImplementedError("triple: forward AD is planned for v2")')
    write(
        pytester,
        ns,
        refusing
        + f"""
@pytest.mark.customop(f"{{NS}}::triple", samples=one, devices=["cpu"], dtypes={dtypes}, checks=["forward_ad"])
def test_refusing(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(skipped=dtypes.count(",") + 1)
    result.stdout.fnmatch_lines(["SKIPPED * forward-mode AD is unsupported for *::triple: triple: forward AD is planned for v2"])


def test_a_wrong_jvp_still_fails(pytester, ns, run):
    write(
        pytester,
        ns,
        JVP_REFUSAL.format(jvp="return tangent * -3")
        + """
@pytest.mark.customop(f"{NS}::triple", samples=one, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["forward_ad"])
def test_wrong(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=2)
