"""Every torch internal the plugin reads (pytest_customop/torch_internals.py) still reaches what it reads
on the torch this runs on: no fallback is taken. ``.ci/run`` runs this file on the oldest supported torch
and the newest, which is what the module's "checked on" lines rest on."""

# No ``from __future__ import annotations``: torch 2.4's infer_schema refuses string annotations.
import sys
import typing
import warnings

import pytest
import torch

from pytest_customop import torch_internals as internals


def _custom_op(ns: str) -> typing.Any:
    @torch.library.custom_op(f"{ns}::scale", mutates_args=())
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x * 3

    def backward(ctx: typing.Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 3

    scale.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)
    return scale, backward


def test_op_objects_and_the_dispatcher(ns):
    scale, _ = _custom_op(ns)
    packet = getattr(torch.ops, ns).scale
    assert internals.op_object_name(packet.default) == f"{ns}::scale.default"
    assert internals.op_object_name(packet) == f"{ns}::scale"
    assert internals.op_object_name(scale) == f"{ns}::scale.default"
    assert internals.overload_schema(packet.default).name == f"{ns}::scale"
    assert f"{ns}::scale" in internals.all_op_names()
    assert internals.has_kernel(f"{ns}::scale", "Autograd")  # custom_op registers one, whatever register_autograd says
    assert not internals.has_kernel(f"{ns}::scale", "FuncTorchBatched")
    assert not internals.has_kernel(f"{ns}::scale", "NoSuchKey")


def test_the_backward_of_a_custom_op_and_of_a_library_define_op(ns):
    scale, backward = _custom_op(ns)
    definition = internals.custom_op_defs()[f"{ns}::scale"]
    assert definition is scale
    assert internals.custom_op_backward(definition) is backward
    assert internals.custom_op_setup_context(definition) is not None
    assert internals.custom_op_vmap_rule(definition) is None

    lib = torch.library.Library(ns + "_def", "DEF")
    lib.define("double(Tensor x) -> Tensor")
    lib.impl("double", lambda x: x * 2, "CompositeExplicitAutograd")

    def double_backward(ctx: typing.Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * 2

    torch.library.register_autograd(f"{ns}_def::double", double_backward)
    out = getattr(torch.ops, ns + "_def").double(torch.ones(2, requires_grad=True))
    assert internals.autograd_function_class(out.grad_fn) is not None
    info = internals.generated_backward_info(out.grad_fn)
    assert info is not None and internals.custom_op_backward(info) is double_backward


def test_legacy_ops(ns):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch._custom_ops import custom_op, impl, impl_backward, impl_save_for_backward

        @custom_op(f"{ns}::legacy_neg")
        def legacy_neg(x: torch.Tensor) -> torch.Tensor: ...

        @impl(f"{ns}::legacy_neg")
        def legacy_neg_impl(x: torch.Tensor) -> torch.Tensor:
            return -x

        @impl_save_for_backward(f"{ns}::legacy_neg")
        def save(inputs: typing.Any, output: typing.Any) -> typing.Any:
            return None

        @impl_backward(f"{ns}::legacy_neg")
        def legacy_backward(ctx: typing.Any, saved: typing.Any, grad: torch.Tensor) -> dict:
            return {"x": -grad}

    legacy = internals.legacy_custom_ops()[f"{ns}::legacy_neg"]
    assert internals.legacy_impl(legacy, "backward") is legacy_backward
    assert internals.legacy_impl(legacy, "save_for_backward") is save
    assert internals.legacy_impl(legacy, "abstract") is None
    assert internals.legacy_output_differentiability(legacy) is None
    assert internals.op_object_name(legacy) == f"{ns}::legacy_neg"


def test_autograd_transforms_and_gradcheck_helpers():
    with internals.below_autograd():
        assert not (torch.ones(1, requires_grad=True) * 2).requires_grad
    assert not internals.transforming()
    seen = []
    torch.func.vmap(lambda x: seen.append(internals.transforming()) or x)(torch.ones(2, 1))
    assert seen == [True]
    make_undefined = internals.make_undefined_grad()
    assert make_undefined is not None
    x = torch.ones(2, requires_grad=True)
    marked = make_undefined()(x * 2)
    assert marked.grad_fn is not None
    with internals.vmap_fallback_warning_disabled():
        pass
    gradcheck_module = sys.modules["torch.autograd.gradcheck"]  # torch.autograd.gradcheck is also the function
    original = gradcheck_module._run_slow_mode_and_get_error
    with internals.replaced_slow_mode_error(lambda *args, **kwargs: "replaced"):
        assert gradcheck_module._run_slow_mode_and_get_error() == "replaced"
    assert gradcheck_module._run_slow_mode_and_get_error is original


def test_fake_tensors_compile_and_pytrees():
    with internals.fake_tensor_mode(allow_non_fake_inputs=True) as mode:
        fake = mode.from_tensor(torch.ones(3))
        assert (fake * 2).shape == (3,)
    assert internals.dynamo_unsupported_reason() is None or "not supported" in internals.dynamo_unsupported_reason()
    internals.reset_compiled()
    leaves, spec = internals.tree_flatten({"a": [1, torch.ones(1)], "b": (2,)})
    assert len(leaves) == 3
    assert internals.tree_unflatten(leaves, spec)["b"] == (2,)


@pytest.mark.parametrize(
    ("version", "supported"), [("2.3.1", False), ("2.4.1", True), ("2.13.0+cpu", True), ("2.16.0.dev20270101", True)]
)
def test_torch_versions_below_the_floor_are_refused_with_one_message(version, supported):
    from pytest_customop.torch_support import unsupported_reason

    reason = unsupported_reason(version)
    assert (reason is None) == supported
    if not supported:
        assert reason == f"torch {version} is installed; pytest-customop needs torch>=2.4 (pip install 'torch>=2.4')"


def test_an_unsupported_torch_stops_pytest_at_start_with_one_message(pytester, monkeypatch):
    from pytest_customop import torch_support

    monkeypatch.setattr(torch_support, "_installed_torch", lambda: "2.3.1")
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-customop: torch 2.3.1 is installed; pytest-customop needs torch>=2.4 *"])
    assert not any("passed" in line for line in result.outlines)  # nothing ran


def test_an_error_in_gradchecks_finite_differences_is_told_from_one_in_the_backward():
    import torch

    from pytest_customop.torch_internals import raised_in_finite_differences

    def moved_off(x):  # the forward refuses any input but the one it was given
        if not bool((x == x.round()).all()):
            raise ValueError("whole numbers only")
        return x * 2

    class BadBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, grad):
            raise ValueError("backward broke")

    for fast_mode in (False, True):
        # fresh each time: a gradcheck stopped inside its finite differences leaves its input moved
        x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        with pytest.raises(ValueError) as forward_error:
            torch.autograd.gradcheck(moved_off, (x,), fast_mode=fast_mode)
        assert raised_in_finite_differences(forward_error.value)
        with pytest.raises(ValueError) as backward_error:
            torch.autograd.gradcheck(BadBackward.apply, (x,), fast_mode=fast_mode)
        assert not raised_in_finite_differences(backward_error.value)
