"""forward_ad, batched_grad, noncontiguous and nondeterminism: each catches the bug it is for, that
gradcheck, gradgradcheck and the other three miss, and correct ops pass (or skip with the reason)."""

from __future__ import annotations

import textwrap

import pytest

ALL = '["gradcheck", "gradgradcheck", "forward_ad", "batched_grad", "noncontiguous", "nondeterminism"]'

HEADER = """
import numpy as np
import pytest
import torch
from pytest_customop import SampleInput

NS = "{ns}"
ALL = {all}


def one_input(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, device=device, requires_grad=requires_grad))


def two_inputs(device, dtype, requires_grad):
    yield SampleInput(
        torch.randn(3, 4, dtype=dtype, device=device, requires_grad=requires_grad),
        torch.randn(3, 4, dtype=dtype, device=device, requires_grad=requires_grad),
    )


def save_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
"""


def write(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(
        test_ops=HEADER.format(ns=ns, all=ALL) + textwrap.dedent(body),
    )


def sin_library_op(name: str, jvp_factor: str = "1.0", backward_extra: str = "") -> str:
    """A Library op whose Autograd kernel is an autograd.Function with a jvp (a 'C++-like' op)."""
    return f'''
lib_{name} = torch.library.Library(NS, "FRAGMENT")
lib_{name}.define("{name}(Tensor x) -> Tensor")
lib_{name}.impl("{name}", lambda x: x.sin(), "CompositeExplicitAutograd")


class {name.capitalize()}Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        with torch._C._AutoDispatchBelowAutograd():
            return getattr(torch.ops, NS).{name}(x)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.cos(){backward_extra}

    @staticmethod
    def jvp(ctx, tangent):
        x, = ctx.saved_tensors
        return tangent * x.cos() * {jvp_factor}


lib_{name}.impl("{name}", {name.capitalize()}Function.apply, "Autograd")
'''


CORRECT_VMAP_RULE = """
    x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x
    y = y.movedim(in_dims[1], 0) if in_dims[1] is not None else y
    return x.sin() * y, 0"""

WRONG_VMAP_RULE = """
    # Wrong: assumes every batch dim is 0 and present.
    return x.sin() * y, 0"""


def vmul_op(vmap_rule: str) -> str:
    """``NS::vmul(x, y) = sin(x) * y``, a custom_op with a correct backward and the given vmap rule body."""
    return (
        """@torch.library.custom_op(f"{NS}::vmul", mutates_args=())
def vmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.sin() * y


def vmul_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def vmul_backward(ctx, grad):
    x, y = ctx.saved_tensors
    return grad * x.cos() * y, grad * x.sin()


vmul.register_autograd(vmul_backward, setup_context=vmul_setup)


@vmul.register_vmap
def vmul_vmap(info, in_dims, x, y):"""
        + vmap_rule
        + "\n"
    )


def test_correct_ops_pass_or_skip_with_the_reason(pytester, ns, run):
    write(
        pytester,
        ns,
        sin_library_op("fsin")
        + """

@torch.library.custom_op(f"{NS}::mysin", mutates_args=())
def mysin(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


mysin.register_autograd(lambda ctx, g: g * ctx.saved_tensors[0].cos(), setup_context=save_x)


@torch.library.custom_op(f"{NS}::addto", mutates_args=("out",))
def addto(x: torch.Tensor, out: torch.Tensor) -> None:
    out.add_(x)


def addto_samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad), torch.zeros(3, dtype=dtype))


@torch.library.custom_op(f"{NS}::sin_argmax", mutates_args=())
def sin_argmax(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.sin(), x.argmax(dim=-1)


def sin_argmax_backward(ctx, grad, grad_index):
    return grad * ctx.saved_tensors[0].cos()


sin_argmax.register_autograd(sin_argmax_backward, setup_context=save_x)


@torch.library.custom_op(f"{NS}::scale_all", mutates_args=())
def scale_all(xs: list[torch.Tensor], alpha: float) -> list[torch.Tensor]:
    return [x * alpha for x in xs]


def scale_all_setup(ctx, inputs, output):
    ctx.alpha = inputs[1]


scale_all.register_autograd(lambda ctx, grads: ([g * ctx.alpha for g in grads], None), setup_context=scale_all_setup)


def list_samples(device, dtype, requires_grad):
    xs = [torch.randn(2, 3, dtype=dtype, requires_grad=requires_grad), torch.randn(4, dtype=dtype, requires_grad=requires_grad)]
    yield SampleInput(xs, 2.5)


@torch.library.custom_op(f"{NS}::numpy_sin", mutates_args=())
def numpy_sin(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.sin(x.numpy()))


def numpy_sin_backward(ctx, grad):
    x, = ctx.saved_tensors
    return torch.from_numpy(grad.numpy() * np.cos(x.numpy()))


numpy_sin.register_autograd(numpy_sin_backward, setup_context=save_x)


"""
        + vmul_op(CORRECT_VMAP_RULE)
        + """

# Refuses double backward, as torchvision's ops do: declared in the marker.
lib_once = torch.library.Library(NS, "FRAGMENT")
lib_once.define("once(Tensor x) -> Tensor")
lib_once.impl("once", lambda x: x.sin(), "CompositeExplicitAutograd")


class OnceFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        with torch._C._AutoDispatchBelowAutograd():
            return getattr(torch.ops, NS).once(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.cos()

    @staticmethod
    def jvp(ctx, tangent):
        return tangent * ctx.saved_tensors[0].cos()


lib_once.impl("once", OnceFunction.apply, "Autograd")


# Made of aten ops: forward AD, vmap and strides come from them.
lib_c = torch.library.Library(NS, "FRAGMENT")
lib_c.define("csin(Tensor x) -> Tensor")
lib_c.impl("csin", lambda x: x.sin() * 2, "CompositeImplicitAutograd")


@pytest.mark.customop(f"{NS}::fsin", samples=one_input, checks=ALL)
def test_fsin(customop):
    customop.check()


@pytest.mark.customop(f"{NS}::csin", samples=one_input, checks=ALL)
def test_csin(customop):
    customop.check()


@pytest.mark.customop(mysin, samples=one_input, checks=ALL)
def test_mysin(customop):
    customop.check()


@pytest.mark.customop(addto, samples=addto_samples, checks=ALL[2:])
def test_addto(customop):
    customop.check()


@pytest.mark.customop(sin_argmax, samples=one_input, checks=ALL)
def test_sin_argmax(customop):
    customop.check()


@pytest.mark.customop(scale_all, samples=list_samples, checks=ALL)
def test_scale_all(customop):
    customop.check()


@pytest.mark.customop(numpy_sin, samples=one_input, checks=ALL[2:], dtypes=["float64"])
def test_numpy_sin(customop):
    customop.check()


@pytest.mark.customop(vmul, samples=two_inputs, checks=["batched_grad"])
def test_vmul(customop):
    result = customop.check()
    assert any("registered vmap rule" in note for note in result.notes)


@pytest.mark.customop(f"{NS}::once", samples=one_input, checks=ALL, supports_gradgrad=False)
def test_once(customop):
    customop.check()
""",
    )
    result = run("-rs", "-q")
    # 6 checks x 2 dtypes for fsin, csin, mysin, sin_argmax, scale_all, once; 4 x 2 for addto;
    # 4 for numpy_sin; 2 for vmul.
    result.assert_outcomes(passed=68, skipped=18)
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED [[]2[]] test_ops.py:*: forward-mode AD is unsupported for {ns}::mysin: torch.library.custom_op "
            "ops cannot register a jvp, and torch silently drops their tangents (torch.func.jvp returns zeros); "
            "not a failure of the op",
            f"SKIPPED [[]6[]] *: {ns}::addto mutates 'out' and no output requires grad (no autograd formula): "
            "there is no gradient to check",
            f"SKIPPED [[]1[]] *: the backward of {ns}::numpy_sin cannot run under vmap, for a reason outside its "
            "own code (it leaves torch or calls an op that cannot be batched): sample 0: RuntimeError: *",
            "SKIPPED [[]2[]] test_ops.py:*: the marker declares supports_gradgrad=False",
        ]
    )
    assert "failed" not in result.stdout.str().splitlines()[-1]


def only_failure(result: pytest.RunResult, check: str) -> None:
    """Exactly the items of ``check`` failed."""
    failed = [line for line in result.stdout.lines if line.startswith("FAILED ")]
    assert failed, result.stdout.str()
    assert all(f"-{check}]" in line for line in failed), failed


def test_forward_ad_catches_a_wrong_jvp(pytester, ns, run):
    write(
        pytester,
        ns,
        sin_library_op("badjvp", jvp_factor="1.5")
        + """

@pytest.mark.customop(f"{NS}::badjvp", samples=two_inputs_as_one, checks=ALL)
def test_badjvp(customop):
    customop.check()
""".replace("two_inputs_as_one", "one_input"),
    )
    result = run("-rf")
    result.assert_outcomes(passed=10, failed=2)
    only_failure(result, "forward_ad")
    result.stdout.fnmatch_lines(
        [
            f"{ns}::badjvp forward_ad failed on cpu float64: 1 of 1 sample(s)",
            "    forward-mode AD of output 0 along a random tangent: 12 of 12 element(s) differ; worst at index *: "
            "expected * (finite differences), got * (forward AD)*",
            f"{ns}::badjvp forward_ad failed on cpu float32: 1 of 1 sample(s)",
            "    *expected * (float64 finite differences), got * (forward AD)*",
        ]
    )


def test_forward_ad_names_the_input_whose_jvp_is_wrong(pytester, ns, run):
    write(
        pytester,
        ns,
        """
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("mul(Tensor x, Tensor y) -> Tensor")
lib.impl("mul", lambda x, y: x * y, "CompositeExplicitAutograd")


class MulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_forward(x, y)
        with torch._C._AutoDispatchBelowAutograd():
            return getattr(torch.ops, NS).mul(x, y)

    @staticmethod
    def jvp(ctx, tx, ty):
        x, y = ctx.saved_tensors
        return tx * y + ty * y  # should be ty * x


lib.impl("mul", MulFunction.apply, "Autograd")


@pytest.mark.customop(f"{NS}::mul", samples=two_inputs, checks=["forward_ad"], dtypes=["float64"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["    forward-mode AD of output 0 (tangent on input 'y' only) along a random tangent: * differ*"])


def test_forward_ad_declared_support(pytester, ns, run):
    write(
        pytester,
        ns,
        sin_library_op("fsin")
        + """

@torch.library.custom_op(f"{NS}::mysin", mutates_args=())
def mysin(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


mysin.register_autograd(lambda ctx, g: g * ctx.saved_tensors[0].cos(), setup_context=save_x)

# A Library op whose backward is registered with register_autograd: no forward formula either.
lib_r = torch.library.Library(NS, "FRAGMENT")
lib_r.define("rsin(Tensor x) -> Tensor")
lib_r.impl("rsin", lambda x: x.sin(), "CPU")
torch.library.register_autograd(f"{NS}::rsin", lambda ctx, g: g * ctx.saved_tensors[0].cos(), setup_context=save_x, lib=lib_r)


@pytest.mark.customop(mysin, samples=one_input, checks=["forward_ad"], dtypes=["float64"], supports_forward_ad=True)
def test_claims_support(customop):
    customop.check()


@pytest.mark.customop(f"{NS}::fsin", samples=one_input, checks=["forward_ad"], dtypes=["float64"], supports_forward_ad=False)
def test_declines(customop):
    customop.check()


@pytest.mark.customop(f"{NS}::rsin", samples=one_input, checks=["forward_ad"], dtypes=["float64"])
def test_register_autograd_library_op(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(failed=1, skipped=2)
    result.stdout.fnmatch_lines(
        [
            "    the marker declares supports_forward_ad=True but forward-mode AD is unsupported for *::mysin: "
            "torch.library.custom_op ops cannot register a jvp*",
            "SKIPPED [[]1[]] test_ops.py:*: the marker declares supports_forward_ad=False",
            f"SKIPPED [[]1[]] *: no output of {ns}::rsin carries a tangent under forward-mode AD: the op has no "
            "forward formula (ops whose backward is registered with torch.library.register_autograd cannot "
            "register a jvp, and torch drops their tangents); not a failure of the op",
        ]
    )


def test_noncontiguous_catches_a_backward_that_views_a_transposed_input(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::viewsin", mutates_args=())
def viewsin(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


def viewsin_backward(ctx, grad):
    x, = ctx.saved_tensors
    return (grad.reshape(-1) * x.view(-1).cos()).reshape(x.shape)  # .view needs contiguous x


viewsin.register_autograd(viewsin_backward, setup_context=save_x)


@pytest.mark.customop(viewsin, samples=one_input, checks=ALL)
def test_viewsin(customop):
    customop.check()


@torch.library.custom_op(f"{NS}::rawdouble", mutates_args=())
def rawdouble(x: torch.Tensor) -> torch.Tensor:
    # Reads x's storage as if it were contiguous, as a hand-written kernel taking data_ptr() would.
    return torch.as_strided(x, (x.numel(),), (1,), x.storage_offset()).reshape(x.shape) * 2


rawdouble.register_autograd(lambda ctx, grad: grad * 2, setup_context=lambda ctx, inputs, output: None)


@pytest.mark.customop(rawdouble, samples=one_input, checks=["noncontiguous"], dtypes=["float64"])
def test_rawdouble(customop):
    customop.check()
""",
    )
    result = run("-rfs")
    result.assert_outcomes(passed=8, failed=3, skipped=2)
    only_failure(result, "noncontiguous")
    result.stdout.fnmatch_lines(
        [
            f"{ns}::viewsin noncontiguous failed on cpu float64: 1 of 1 sample(s)",
            "    backward raised on non-contiguous inputs ('x' strides (2, 6)) with a grad_output sliced with a step: "
            "RuntimeError: view size is not compatible with input tensor's size and stride*",
            "*test_ops.py*in viewsin_backward*",
            f"{ns}::rawdouble noncontiguous failed on cpu float64: 1 of 1 sample(s)",
            "    output 0 differs on non-contiguous inputs ('x' strides (2, 6)): * element(s) differ; worst at index *: "
            "expected * (contiguous), got * (non-contiguous)*",
        ]
    )


def test_noncontiguous_catches_a_backward_writing_into_an_expanded_grad_output(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::inplace_grad", mutates_args=())
def inplace_grad(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


def inplace_grad_backward(ctx, grad):
    x, = ctx.saved_tensors
    return grad.mul_(x.cos())  # fine on a fresh grad, fails on y.sum().backward()'s expanded one


inplace_grad.register_autograd(inplace_grad_backward, setup_context=save_x)


@pytest.mark.customop(inplace_grad, samples=one_input, checks=["noncontiguous"], dtypes=["float64"])
def test_inplace_grad(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "    backward raised on non-contiguous inputs * with a grad_output expanded in dimension 0 only (stride 0 there), "
            "as a downstream .sum(0) or a broadcast passes it: RuntimeError: unsupported operation: more than one element*"
        ]
    )


def test_noncontiguous_catches_a_backward_wrong_only_for_a_partly_expanded_grad_output(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::strided_store", mutates_args=())
def strided_store(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.sin() + index.to(x.dtype)


def strided_store_backward(ctx, grad):
    x, index = ctx.saved_tensors
    values = grad * x.cos()
    if all(stride == 0 for stride in grad.stride()):  # y.sum().backward(): one value everywhere
        return values, None
    # A kernel's store: one element per logical index into a buffer strided like grad_output, as pointer
    # arithmetic on grad's strides does. Right for contiguous, transposed and sliced grad_outputs; where
    # grad_output has stride 0 in one dimension, the elements along it overwrite each other.
    out = torch.empty_strided(grad.shape, grad.stride(), dtype=grad.dtype)
    offsets = sum(
        torch.arange(n).reshape([-1] + [1] * (grad.dim() - 1 - d)) * stride
        for d, (n, stride) in enumerate(zip(grad.shape, grad.stride()))
    )
    storage = out.as_strided((out.untyped_storage().nbytes() // out.element_size(),), (1,))
    storage.index_put_((offsets.reshape(-1),), values.reshape(-1))
    return out, None


strided_store.register_autograd(strided_store_backward, setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))


def with_index(device, dtype, requires_grad):
    # the index keeps its layout: made non-contiguous, a kernel may not read it right, and that is no finding
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad), torch.arange(12).reshape(3, 4) % 2)


@pytest.mark.customop(strided_store, samples=with_index, checks=["noncontiguous", "gradcheck", "grad_keys"], dtypes=["float64"])
def test_strided_store(customop):
    customop.check()
""",
    )
    result = run("-v")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_strided_store[[]cpu-float64-noncontiguous[]] FAILED*",
            f"{ns}::strided_store noncontiguous failed on cpu float64: 1 of 1 sample(s)",
            "    gradient of input 'x' differs on non-contiguous inputs ('x' strides (2, 6)) with a grad_output expanded in "
            "dimension 0 only (stride 0 there), as a downstream .sum(0) or a broadcast passes it (strides (0, 1)): "
            "* element(s) differ; worst at index *: expected * (contiguous), got * (non-contiguous)*",
        ]
    )


def test_nondeterminism_catches_a_noisy_backward_and_reports_the_difference(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::noisy", mutates_args=())
def noisy(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


def noisy_backward(ctx, grad):
    x, = ctx.saved_tensors
    # Like atomic adds on a GPU: tiny run-to-run noise, well inside float32's gradient tolerance.
    return grad * x.cos() + 1e-6 * torch.rand_like(x)


noisy.register_autograd(noisy_backward, setup_context=save_x)


@pytest.mark.customop(noisy, samples=one_input, checks=ALL, dtypes=["float32"])
def test_noisy(customop):
    customop.check()


@pytest.mark.customop(noisy, samples=one_input, checks=["nondeterminism"], dtypes=["float32"], nondet_tol=1e-4)
def test_noisy_tolerated(customop):
    result = customop.check()
    assert result.notes[0].startswith("largest difference between repeated runs: outputs 0, gradients ")
    assert result.notes[0].endswith("(nondet_tol=0.0001)")
""",
    )
    result = run("-rfs")
    result.assert_outcomes(passed=4, failed=1, skipped=2)
    only_failure(result, "nondeterminism")
    result.stdout.fnmatch_lines(
        [
            f"{ns}::noisy nondeterminism failed on cpu float32: 1 of 1 sample(s)",
            "    gradient of input 'x' differs between two backwards over the same graph * on the same inputs and "
            "grad_output: max |difference| * at index * > nondet_tol=0; if this nondeterminism is expected "
            "(atomic adds on a GPU), set the marker's nondet_tol to at least *",
            "  note: largest difference between repeated runs: outputs 0, gradients * (nondet_tol=0)",
        ]
    )


def test_batched_grad_catches_a_backward_that_breaks_under_vmap(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::clipped", mutates_args=())
def clipped(x: torch.Tensor) -> torch.Tensor:
    return x.sin()


def clipped_backward(ctx, grad):
    x, = ctx.saved_tensors
    if grad.abs().max().item() > 1e6:  # a data-dependent guard: fine eagerly, impossible under vmap
        grad = grad.clamp(-1e6, 1e6)
    return grad * x.cos()


clipped.register_autograd(clipped_backward, setup_context=save_x)


@pytest.mark.customop(clipped, samples=one_input, checks=ALL)
def test_clipped(customop):
    customop.check()
""",
    )
    result = run("-rfs")
    result.assert_outcomes(passed=8, failed=2, skipped=2)
    only_failure(result, "batched_grad")
    result.stdout.fnmatch_lines(
        [
            f"{ns}::clipped batched_grad failed on cpu float64: 1 of 1 sample(s)",
            "    backward fails under vmap (is_grads_batched=True, as torch.func.jacrev and vmap users run it): "
            "the backward calls .item() (or float()/int()) on a tensor; RuntimeError: *item*",
            "*in clipped_backward*",
        ]
    )


def test_batched_grad_catches_a_wrong_vmap_rule(pytester, ns, run):
    write(
        pytester,
        ns,
        """
"""
        + vmul_op(WRONG_VMAP_RULE)
        + """

@pytest.mark.customop(vmul, samples=two_inputs, checks=ALL)
def test_vmul(customop):
    customop.check()
""",
    )
    result = run("-rfs")
    result.assert_outcomes(passed=8, failed=2, skipped=2)
    only_failure(result, "batched_grad")
    result.stdout.fnmatch_lines(
        [
            f"{ns}::vmul batched_grad failed on cpu float64: 1 of 1 sample(s)",
            f"    the registered vmap rule of {ns}::vmul is wrong: output 0 with every input under test batched at "
            "its last dim (batch of 3): shape * (vmap) but * (a loop of forwards)",
        ]
    )


REFUSING_VMAP_RULE = """
    if in_dims[1] is None:
        raise NotImplementedError("vmul's vmap rule needs y batched too")
    x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x
    y = y.movedim(in_dims[1], 0) if in_dims[1] is not None else y
    return x.sin() * y, 0"""


def test_batched_grad_skips_a_vmap_rule_that_declines_explicitly_and_quotes_it(pytester, ns, run):
    write(
        pytester,
        ns,
        vmul_op(REFUSING_VMAP_RULE)
        + """

@pytest.mark.customop(vmul, samples=two_inputs, checks=["batched_grad"], dtypes=["float64"])
def test_vmul(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED * the registered vmap rule of {ns}::vmul declines: sample 0: only 'x' batched (dim 0), "
            "the others not: NotImplementedError: vmul's vmap rule needs y batched too",
        ]
    )


def test_batched_grad_batches_only_the_inputs_under_test_not_a_float_table(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::scaled_rows", mutates_args=())
def scaled_rows(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    return x * table


scaled_rows.register_autograd(
    lambda ctx, grad: (grad * ctx.saved_tensors[0], None),
    setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[1]),
)


@scaled_rows.register_vmap
def scaled_rows_vmap(info, in_dims, x, table):
    assert in_dims[1] is None, "the table is a constant buffer: never batched"
    x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x
    return x * table, 0 if in_dims[0] is not None else None


def with_table(device, dtype, requires_grad):
    # a float table the op takes as a constant: it does not require grad
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad), torch.rand(3, 4, dtype=dtype) + 1)


@pytest.mark.customop(scaled_rows, samples=with_table, checks=["batched_grad"], dtypes=["float64"])
def test_scaled_rows(customop):
    print("NOTES:", customop.check().notes)
""",
    )
    result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*NOTES: *the registered vmap rule of {ns}::scaled_rows agreed with a loop of forwards*"])


def test_noncontiguous_makes_each_tensor_list_element_non_contiguous(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@torch.library.custom_op(f"{NS}::flat_sum", mutates_args=())
def flat_sum(xs: list[torch.Tensor]) -> torch.Tensor:
    # a kernel reading each element's storage as if it were contiguous
    return sum(torch.as_strided(x, (x.numel(),), (1,), x.storage_offset()).reshape(x.shape) for x in xs)


flat_sum.register_autograd(
    lambda ctx, grad: [grad.clone() for _ in range(ctx.count)],
    setup_context=lambda ctx, inputs, output: setattr(ctx, "count", len(inputs[0])),
)


def two_matrices(device, dtype, requires_grad):
    yield SampleInput([torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad) for _ in range(2)])


@pytest.mark.customop(flat_sum, samples=two_matrices, checks=["noncontiguous", "gradcheck"], dtypes=["float64"])
def test_flat_sum(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "    output 0 differs on non-contiguous inputs ('xs'[[]0[]] strides (2, 6), 'xs'[[]1[]] strides (2, 6)): *",
        ]
    )
