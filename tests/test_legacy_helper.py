"""register_dict_backward: a legacy-style dict backward on a modern op, validated like the legacy API
did (and by shape, dtype, device, layout), in tests through grad_keys and in plain autograd use."""

from __future__ import annotations

import textwrap

import pytest

HEADER = """
from typing import List

import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput, register_dict_backward
from pytest_customop.kernel import GradientValidationError

NS = "{ns}"

def pair(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3), make(3), 2.0)

def define_scale(name):
    @torch.library.custom_op(f"{{NS}}::{{name}}", mutates_args=())
    def scale(x: Tensor, y: Tensor, alpha: float) -> Tensor:
        return x * y * alpha
    return scale

save_inputs = lambda inputs, output: inputs
"""


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(test_ops=HEADER.format(ns=ns) + textwrap.dedent(body))


def test_correct_dict_backwards_pass_in_each_saving_style(pytester, ns, run):
    write(
        pytester,
        ns,
        """
# the legacy contract: save_for_backward(inputs, output) and backward(ctx, saved, *grads)
legacy_style = define_scale("legacy_style")
register_dict_backward(
    legacy_style,
    lambda ctx, saved, g: {"x": g * saved.y * saved.alpha, "y": g * saved.x * saved.alpha},
    save_for_backward=save_inputs,
)

# register_autograd's setup_context, a Library.define op by name, a Tensor[] input, keyword-only args
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("weighted(Tensor[] xs, Tensor w, *, float scale=1.0) -> Tensor")
lib.impl("weighted", lambda xs, w, *, scale=1.0: sum(xs) * w * scale, "CompositeExplicitAutograd")

def weighted_setup(ctx, inputs, keyword_only_inputs, output):
    xs, w = inputs
    ctx.save_for_backward(sum(xs), w)
    ctx.count = len(xs)
    ctx.scale = keyword_only_inputs["scale"]

def weighted_backward(ctx, g):
    total, w = ctx.saved_tensors
    assert ctx.needs_input_grad == ([True, True], True), ctx.needs_input_grad
    return {"xs": [g * w * ctx.scale] * ctx.count, "w": g * total * ctx.scale}

register_dict_backward(f"{NS}::weighted", weighted_backward, setup_context=weighted_setup, lib=lib)

def lists(device, dtype, requires_grad):
    make = lambda: torch.randn(3, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput([make(), make()], make(), scale=0.5)

@pytest.mark.customop(legacy_style, samples=pair, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck", "grad_keys"])
def test_legacy_style(customop):
    result = customop.check()
    if customop.check_name == "grad_keys":
        print("NOTE:", result.notes[0])

@pytest.mark.customop(f"{NS}::weighted", samples=lists, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck", "grad_keys"])
def test_weighted(customop):
    customop.check()

def test_plain_autograd():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64, requires_grad=True)
    legacy_style(x, y, 2.0).sum().backward()
    assert torch.allclose(x.grad, 2.0 * y) and torch.allclose(y.grad, 2.0 * x)

def test_both_ways_of_saving_is_refused():
    with pytest.raises(TypeError, match="not both"):
        register_dict_backward(legacy_style, lambda ctx, saved, g: {}, save_for_backward=save_inputs,
                               setup_context=lambda ctx, inputs, output: None)
""",
    )
    result = run("-s", "-v")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(
        [
            "*NOTE: backward: <lambda> (test_ops.py:*), registered with pytest_customop.register_dict_backward",
        ]
    )


def test_wrong_dicts_are_named_in_grad_keys_and_in_plain_use(pytester, ns, run):
    write(
        pytester,
        ns,
        """
misspelt = define_scale("misspelt")
register_dict_backward(
    misspelt, lambda ctx, saved, g: {"x": g * saved.y * saved.alpha, "z": g * saved.x * saved.alpha},
    save_for_backward=save_inputs,
)
wrong_shape = define_scale("wrong_shape")
register_dict_backward(
    wrong_shape,
    lambda ctx, saved, g: {"x": (g * saved.y * saved.alpha / 2).expand(2, 3), "y": g * saved.x * saved.alpha},
    save_for_backward=save_inputs,
)
not_a_dict = define_scale("not_a_dict")
register_dict_backward(
    not_a_dict, lambda ctx, saved, g: (g * saved.y * saved.alpha, g * saved.x * saved.alpha, None),
    save_for_backward=save_inputs,
)

@pytest.mark.customop(misspelt, samples=pair, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"])
def test_misspelt(customop):
    customop.check()

@pytest.mark.customop(wrong_shape, samples=pair, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"],
                      strict_grad_shapes=True)  # a [2, 3] gradient for a [3] input is otherwise a note
def test_wrong_shape(customop):
    customop.check()

@pytest.mark.customop(not_a_dict, samples=pair, devices=["cpu"], dtypes=[torch.float64], checks=["grad_keys"])
def test_not_a_dict(customop):
    customop.check()

def test_plain_use_raises_naming_the_key():
    x = torch.randn(3, requires_grad=True)
    y = torch.randn(3, requires_grad=True)
    with pytest.raises(GradientValidationError) as info:
        misspelt(x, y, 2.0).sum().backward()
    assert [p.input_name for p in info.value.problems] == ["y", None]
""",
    )
    result = run()
    result.assert_outcomes(failed=3, passed=1)
    result.stdout.fnmatch_lines(
        [
            f"    {ns}::misspelt: the dict returned by backward has no key 'y': expected keys {{'x', 'y'}}*, got {{'x', 'z'}}",
            f"    {ns}::misspelt: the dict returned by backward has an extra key 'z' ({ns}::misspelt has no input 'z')*",
            f"    {ns}::wrong_shape: the gradient for input 'x' has shape [[]2, 3[]], larger than the input's [[]3[]]: "
            "relies on the engine to reduce [[]2, 3[]] to [[]3[]] (the marker asks strict_grad_shapes=True)",
            f"    {ns}::not_a_dict: backward must return a dict keyed by input name (the legacy contract), expected keys "
            "{'x', 'y'}, got a tuple of 3",
        ]
    )
