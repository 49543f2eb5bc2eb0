"""grad_keys: the plugin's autograd kernel validates what each op's backward returns, by input name,
in every registration style; each wrong backward fails exactly the grad_keys items with a message
naming op, input, expected and got."""

from __future__ import annotations

import textwrap

import pytest

HEADER = '''
import warnings
from typing import List

import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput

NS = "{ns}"

def pair(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4), 2.0)

def scale(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    return x * y * alpha

def save_inputs(ctx, inputs, output):
    x, y, alpha = inputs
    ctx.save_for_backward(x, y)
    ctx.alpha = alpha

def make_scale(backward, name="scale"):
    op = torch.library.custom_op(f"{{NS}}::{{name}}", mutates_args=())(scale)
    op.register_autograd(backward, setup_context=save_inputs)
    return op

def legacy_scale(backward, name="scale"):
    """A legacy torch._custom_ops op whose backward returns a dict."""
    qualname = f"{{NS}}::{{name}}"
    import torch._custom_ops as legacy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def stub(x: Tensor, y: Tensor, alpha: float) -> Tensor:
            ...

        stub.__name__ = name
        legacy.custom_op(qualname)(stub)
        legacy.impl(qualname)(lambda x, y, alpha: x * y * alpha)
        legacy.impl_save_for_backward(qualname)(
            lambda inputs, output: {{"x": inputs.x, "y": inputs.y, "alpha": inputs.alpha}}
        )
        legacy.impl_backward(qualname)(backward)
'''


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(test_ops=HEADER.format(ns=ns) + textwrap.dedent(body))


def test_is_a_default_check_after_gradgradcheck(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def correct(ctx, g):
    x, y = ctx.saved_tensors
    return g * y * ctx.alpha, g * x * ctx.alpha, None

make_scale(correct)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64])
def test_scale(customop):
    customop.check()
""",
    )
    result = run("-v", "-k", "gradcheck or grad_keys")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "*test_scale[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-gradgradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-grad_keys[]] PASSED*",
        ]
    )


def test_correct_ops_pass_in_every_registration_style(pytester, ns, run):
    write(
        pytester,
        ns,
        """
from pytest_customop import register_dict_backward

# torch.library.custom_op + register_autograd
def correct(ctx, g):
    x, y = ctx.saved_tensors
    return g * y * ctx.alpha, g * x * ctx.alpha, None

make_scale(correct)

# keyword-only arguments and needs_input_grad
@torch.library.custom_op(f"{NS}::affine", mutates_args=())
def affine(x: Tensor, w: Tensor, *, shift: float = 0.0, bias: bool = True) -> Tensor:
    return x * w + shift

def affine_setup(ctx, inputs, keyword_only_inputs, output):
    ctx.save_for_backward(*inputs)

def affine_backward(ctx, g):
    x, w = ctx.saved_tensors
    assert ctx.needs_input_grad == (True, False), ctx.needs_input_grad
    return g * w, None

affine.register_autograd(affine_backward, setup_context=affine_setup)

def affine_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad), torch.randn(3, dtype=dtype), shift=1.0)

# Library.define + impl + torch.library.register_autograd
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("double(Tensor x) -> Tensor")
lib.impl("double", lambda x: x * 2, "CompositeExplicitAutograd")
torch.library.register_autograd(f"{NS}::double", lambda ctx, g: g * 2, lib=lib)

def one(device, dtype, requires_grad):
    yield SampleInput(torch.randn(2, 3, dtype=dtype, requires_grad=requires_grad))

# Tensor[] input, Tensor[] output
@torch.library.custom_op(f"{NS}::split_scale", mutates_args=())
def split_scale(xs: List[Tensor], factor: float) -> List[Tensor]:
    return [x * factor for x in xs]

def split_setup(ctx, inputs, output):
    ctx.factor = inputs[1]

def split_backward(ctx, grads):
    assert ctx.needs_input_grad == ([True, True], False), ctx.needs_input_grad
    return [g * ctx.factor for g in grads], None

split_scale.register_autograd(split_backward, setup_context=split_setup)

def lists(device, dtype, requires_grad):
    yield SampleInput([torch.randn(2, dtype=dtype, requires_grad=requires_grad),
                       torch.randn(3, dtype=dtype, requires_grad=requires_grad)], 3.0)

# several outputs, one of them non-differentiable
@torch.library.custom_op(f"{NS}::max_and_index", mutates_args=())
def max_and_index(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    index = x.argmax(dim=-1, keepdim=True)
    return x.gather(-1, index), index, x.exp()

def max_setup(ctx, inputs, output):
    value, index, e = output
    ctx.save_for_backward(inputs[0], index, e)
    ctx.mark_non_differentiable(index)

def max_backward(ctx, g_value, g_index, g_exp):
    x, index, e = ctx.saved_tensors
    return torch.zeros_like(x).scatter(-1, index, g_value) + g_exp * e

max_and_index.register_autograd(max_backward, setup_context=max_setup)

# modern op with a legacy-style dict backward
@torch.library.custom_op(f"{NS}::dict_scale", mutates_args=())
def dict_scale(x: Tensor, y: Tensor, alpha: float) -> Tensor:
    return x * y * alpha

register_dict_backward(
    dict_scale,
    lambda ctx, saved, g: {"x": g * saved.y * saved.alpha, "y": g * saved.x * saved.alpha},
    save_for_backward=lambda inputs, output: inputs,
)

def run_check(customop):
    result = customop.check()
    assert "register_autograd" in result.notes[0] or "register_dict_backward" in result.notes[0], result.notes

common = dict(devices=["cpu"], dtypes=[torch.float64, torch.float32], checks=["grad_keys"])

@pytest.mark.customop(f"{NS}::scale", samples=pair, **common)
def test_scale(customop):
    run_check(customop)

@pytest.mark.customop(f"{NS}::affine", samples=affine_samples, **common)
def test_affine(customop):
    run_check(customop)

@pytest.mark.customop(f"{NS}::double", samples=one, **common)
def test_library_define(customop):
    run_check(customop)

@pytest.mark.customop(f"{NS}::split_scale", samples=lists, **common)
def test_tensor_lists(customop):
    run_check(customop)

@pytest.mark.customop(f"{NS}::max_and_index", samples=one, **common)
def test_non_differentiable_output(customop):
    run_check(customop)

@pytest.mark.customop(f"{NS}::dict_scale", samples=pair, **common)
def test_dict_backward(customop):
    run_check(customop)
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["*test_tensor_lists[[]cpu-float32-grad_keys[]] PASSED*"])


def test_correct_legacy_op_passes(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def backward(ctx, saved, g):
    return {"x": g * saved["y"] * saved["alpha"], "y": g * saved["x"] * saved["alpha"]}

legacy_scale(backward)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck", "grad_keys"])
def test_scale(customop):
    result = customop.check()
    if customop.check_name == "grad_keys":
        assert "legacy" in result.notes[0], result.notes
""",
    )
    run().assert_outcomes(passed=2)


def test_opaque_backwards_are_named_and_what_reaches_each_input_is_validated(pytester, ns, run):
    write(
        pytester,
        ns,
        """
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("composite(Tensor x, Tensor y) -> Tensor")
lib.impl("composite", lambda x, y: x.sin() * y, "CompositeImplicitAutograd")

def two(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad),
                      torch.randn(3, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(f"{NS}::composite", samples=two, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"])
def test_composite(customop):
    result = customop.check()
    print("NOTE:", result.notes[0])

@pytest.mark.customop("aten::mul.Tensor", samples=two, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"])
def test_cpp_autograd_kernel(customop):
    result = customop.check()
    print("NOTE:", result.notes[0])
""",
    )
    result = run("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"*NOTE: backward is opaque to Python ({ns}::composite is CompositeImplicitAutograd*): validated the "
            "gradients that reach each input, by name",
            "*NOTE: backward is opaque to Python (aten::mul.Tensor has an autograd kernel Python cannot see into*",
        ]
    )


def test_op_without_backward_fails_grad_keys(pytester, ns, run):
    write(
        pytester,
        ns,
        """
torch.library.custom_op(f"{NS}::scale", mutates_args=())(scale)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"])
def test_scale(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*{ns}::scale has no backward (register one with register_autograd): its gradients cannot be validated*"]
    )


# -- each validation rule catches a real bug -------------------------------------------------------------
# (name, backward body after `x, y = ctx.saved_tensors; a = ctx.alpha`, dtypes failing, expected line)
BUGS = [
    (
        "too_few",
        "return g * y * a, g * x * a",
        "{op}: backward returned 2 gradient(s), expected 3, one per positional input (x, y, alpha): nothing for input 'alpha'",
    ),
    (
        "extra_none",
        "return g * y * a, g * x * a, None, None",
        "{op}: backward returned 4 gradients, expected 3, one per positional input (x, y, alpha): "
        "extra trailing entry None after the last input 'alpha' (torch drops a trailing None silently)",
    ),
    (
        "tensor_for_float",
        "return g * y * a, g * x * a, (g * x * y).sum()",
        "{op}: the gradient for input 'alpha' (float): expected None (not a tensor), got Tensor([[]], float*, cpu)",
    ),
    (
        "transposed_shape",
        "return (g * y * a).t(), g * x * a, None",
        "{op}: the gradient for input 'x': expected shape [[]3, 4[]] (the input's), got [[]4, 3[]]",
    ),
    (
        "mutates_grad_output",
        "g.mul_(a)\n    return g * y, g * x, None",
        "{op}: backward modified grad_output[[]0[]] in place (the gradient of the op's output it was given): "
        "expected it unchanged, got different values",
    ),
    (
        "mutates_saved",
        "gx = g * y * a\n    y.mul_(a)\n    return gx, g * x * a, None",
        "{op}: backward modified ctx.saved_tensors[[]1[]] in place (a tensor saved for backward): "
        "expected it unchanged, got different values",
    ),
]


def test_each_wrong_backward_fails_exactly_its_grad_keys_items(pytester, ns, run):
    body = ""
    for name, wrong, _ in BUGS:
        body += f'''
def {name}_backward(ctx, g):
    x, y = ctx.saved_tensors
    a = ctx.alpha
    {wrong}

make_scale({name}_backward, "{name}")

@pytest.mark.customop(f"{{NS}}::{name}", samples=pair, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["grad_keys"])
def test_{name}(customop):
    customop.check()
'''
    write(pytester, ns, body)
    result = run("-v")
    result.assert_outcomes(failed=2 * len(BUGS))
    expected = []
    for name, _, _line in BUGS:
        for dtype in ("float64", "float32"):
            expected.append(f"*test_{name}[[]cpu-{dtype}-grad_keys[]] FAILED*")
    for name, _, line in BUGS:
        for dtype in ("float64", "float32"):
            expected += [
                f"*{ns}::{name} grad_keys failed on cpu {dtype}: 1 of 1 sample(s)",
                f"  sample 0: SampleInput(Tensor([[]3, 4[]], {dtype}, cpu, requires_grad)*",
                "    " + line.format(op=f"{ns}::{name}"),
            ]
    result.stdout.fnmatch_lines(expected)


def test_silently_absorbed_bugs_pass_gradcheck_but_fail_grad_keys(pytester, ns, run):
    """The engine sums a broadcast gradient and casts a float32 one: gradcheck cannot see either."""
    write(
        pytester,
        ns,
        """
def wrong(ctx, g):
    x, y = ctx.saved_tensors
    return (g * y * ctx.alpha / 5).expand(5, 3, 4), (g * x * ctx.alpha).float(), None

make_scale(wrong)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck", "grad_keys"])
def test_scale(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    # the broadcast gradient's sum is right (gradcheck passes): a note; the float32 one stays a failure
    result.stdout.fnmatch_lines(
        [
            "*test_scale[[]cpu-float64-gradcheck[]] PASSED*",
            "*test_scale[[]cpu-float64-grad_keys[]] FAILED*",
            f"    {ns}::scale: the gradient for input 'y': expected dtype float64 (the input's), got float32 "
            "(torch would cast it silently)",
            f"  note: sample 0: {ns}::scale: the gradient for input 'x' has shape [[]5, 3, 4[]], larger than the input's "
            "[[]3, 4[]]: relies on the engine to reduce [[]5, 3, 4[]] to [[]3, 4[]] (gradcheck proves the reduced values)",
        ]
    )


@pytest.mark.parametrize("strict", [False, True])
def test_a_broadcast_reducible_gradient_is_a_note_unless_strict_shapes_are_asked(pytester, ns, run, strict):
    """PyTorch's own test ops (custom_op_db's numpy_mul) return unreduced gradients on purpose."""
    write(
        pytester,
        ns,
        f"""
def unreduced(ctx, g):
    x, y = ctx.saved_tensors
    return (g * y * ctx.alpha / 5).expand(5, 3, 4), g * x * ctx.alpha, None

make_scale(unreduced)

@pytest.mark.customop(f"{{NS}}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["grad_keys"], strict_grad_shapes={strict})
def test_scale(customop):
    result = customop.check()
    print("NOTES", result.notes)
""",
    )
    result = run("-s")
    if strict:
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines(
            ["*relies on the engine to reduce [[]5, 3, 4[]] to [[]3, 4[]] (the marker asks strict_grad_shapes=True)"]
        )
    else:
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["*NOTES *relies on the engine to reduce [[]5, 3, 4[]] to [[]3, 4[]]*"])


def test_float32_gradient_for_float64_input(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def wrong(ctx, g):
    x, y = ctx.saved_tensors
    return g * y * ctx.alpha, (g * x * ctx.alpha).float(), None

make_scale(wrong)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["grad_keys"])
def test_scale(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)  # at float32 the cast changes nothing
    result.stdout.fnmatch_lines(
        [
            "*test_scale[[]cpu-float64-grad_keys[]] FAILED*",
            "*test_scale[[]cpu-float32-grad_keys[]] PASSED*",
            f"    {ns}::scale: the gradient for input 'y': expected dtype float64 (the input's), got float32*",
        ]
    )


def test_wrong_length_list_for_tensor_list_input_of_a_library_op(pytester, ns, run):
    write(
        pytester,
        ns,
        """
# Library.define + register_autograd: the backward is found through the kernel torch generated
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("total(Tensor[] xs, float weight) -> Tensor")
lib.impl("total", lambda xs, weight: sum(xs) * weight, "CompositeExplicitAutograd")

def setup(ctx, inputs, output):
    ctx.weight = inputs[1]

def wrong(ctx, g):
    return [g * ctx.weight], None

torch.library.register_autograd(f"{NS}::total", wrong, setup_context=setup, lib=lib)

def lists(device, dtype, requires_grad):
    yield SampleInput([torch.randn(3, dtype=dtype, requires_grad=requires_grad) for _ in range(2)], 2.0)

@pytest.mark.customop(f"{NS}::total", samples=lists, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["grad_keys"])
def test_total(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            f"    {ns}::total: the gradient for input 'xs' (Tensor[[]] of 2): expected a list of 2 (None or Tensor, "
            "one per element), got a list of 1",
        ]
    )


LEGACY_BUGS = [
    (
        "wrong_key",
        '{"x": g * saved["y"] * saved["alpha"], "z": g * saved["x"] * saved["alpha"]}',
        [
            "{op}: the dict returned by backward has no key 'y': expected keys {{'x', 'y'}} (one per tensor "
            "input, None allowed), got {{'x', 'z'}}",
            "{op}: the dict returned by backward has an extra key 'z' ({op} has no input 'z')*",
        ],
    ),
    (
        "missing_key",
        '{"x": g * saved["y"] * saved["alpha"]}',
        ["{op}: the dict returned by backward has no key 'y': expected keys {{'x', 'y'}}*, got {{'x'}}"],
    ),
    (
        "extra_key",
        '{"x": g * saved["y"] * saved["alpha"], "y": g * saved["x"] * saved["alpha"], "alpha": None}',
        [
            "{op}: the dict returned by backward has an extra key 'alpha' (input 'alpha' is a float, not a "
            "tensor: it takes no gradient): expected keys {{'x', 'y'}}, got {{'x', 'y', 'alpha'}}",
        ],
    ),
]


def test_legacy_dicts_with_wrong_keys(pytester, ns, run):
    body = ""
    for name, returned, _ in LEGACY_BUGS:
        body += f'''
def {name}_backward(ctx, saved, g):
    return {returned}

legacy_scale({name}_backward, "{name}")

@pytest.mark.customop(f"{{NS}}::{name}", samples=pair, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["grad_keys"])
def test_{name}(customop):
    customop.check()
'''
    write(pytester, ns, body)
    result = run()
    result.assert_outcomes(failed=2 * len(LEGACY_BUGS))
    expected = []
    for name, _, lines in LEGACY_BUGS:
        expected.append(f"{ns}::{name} grad_keys failed on cpu float64: 1 of 1 sample(s)")
        expected += ["    " + line.format(op=f"{ns}::{name}") for line in lines]
    result.stdout.fnmatch_lines(expected)


def test_calling_the_fixture_validates_the_backward_too(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def wrong(ctx, g):
    x, y = ctx.saved_tensors
    return g * y * ctx.alpha, g * x * ctx.alpha, None, None

make_scale(wrong)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"])
def test_by_hand(customop):
    x, y, alpha = customop.samples()[0].args
    customop(x, y, alpha).sum().backward()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"E *GradientValidationError: the backward of {ns}::scale is wrong:",
            "E *  backward returned 4 gradients, expected 3, one per positional input (x, y, alpha): extra trailing*",
            "E *  (backward: wrong (test_ops.py:*), registered with register_autograd)",
        ]
    )


def test_gradient_on_the_wrong_device(pytester, ns, run):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the gradient is moved to the CPU while its input is on CUDA")
    write(
        pytester,
        ns,
        """
def wrong(ctx, g):
    x, y = ctx.saved_tensors
    return (g * y * ctx.alpha).cpu(), g * x * ctx.alpha, None

make_scale(wrong)

@pytest.mark.customop(f"{NS}::scale", samples=pair, devices=["cuda"], dtypes=[torch.float64], checks=["grad_keys"])
def test_scale(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"    {ns}::scale: the gradient for input 'x': expected device cuda:0 (the input's), got cpu",
        ]
    )
