"""Markers without ``samples=``: samples derived from the op's schema."""

from __future__ import annotations

import textwrap

import pytest


def write_ops(pytester: pytest.Pytester, ns: str, body: str) -> None:
    pytester.makepyfile(
        test_ops=textwrap.dedent(
            f"""
            import pytest
            import torch
            from torch import Tensor
            from typing import Optional

            NS = {ns!r}
            """
        )
        + textwrap.dedent(body)
    )


def test_marker_without_samples_passes_on_many_schema_shapes(pytester, run, ns):
    write_ops(
        pytester,
        ns,
        """
        @torch.library.custom_op(f"{NS}::mul", mutates_args=())
        def mul(x: Tensor, y: Tensor) -> Tensor:
            return x * y

        def _setup_mul(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def _mul_backward(ctx, g):
            x, y = ctx.saved_tensors
            return _reduce_to(g * y, x.shape), _reduce_to(g * x, y.shape)

        mul.register_autograd(_mul_backward, setup_context=_setup_mul)

        @torch.library.custom_op(f"{NS}::bcast_add", mutates_args=())
        def bcast_add(x: Tensor, y: Tensor, alpha: float) -> Tensor:
            return x + alpha * y

        def _reduce_to(g, shape):
            while g.dim() > len(shape):
                g = g.sum(0)
            for i, size in enumerate(shape):
                if size == 1 and g.shape[i] != 1:
                    g = g.sum(i, keepdim=True)
            return g

        def _setup_add(ctx, inputs, output):
            ctx.shapes = (inputs[0].shape, inputs[1].shape)
            ctx.alpha = inputs[2]

        bcast_add.register_autograd(
            lambda ctx, g: (_reduce_to(g, ctx.shapes[0]), _reduce_to(g * ctx.alpha, ctx.shapes[1]), None),
            setup_context=_setup_add,
        )

        @torch.library.custom_op(f"{NS}::sum_dim", mutates_args=())
        def sum_dim(x: Tensor, dim: int) -> Tensor:
            return x.sum(dim)

        def _setup_sum(ctx, inputs, output):
            ctx.shape, ctx.dim = inputs[0].shape, inputs[1]

        sum_dim.register_autograd(
            lambda ctx, g: (g.unsqueeze(ctx.dim).expand(ctx.shape).clone(), None), setup_context=_setup_sum
        )

        @torch.library.custom_op(f"{NS}::total", mutates_args=())
        def total(xs: list[Tensor]) -> Tensor:
            return torch.stack(xs).sum(0)

        def _setup_total(ctx, inputs, output):
            ctx.count = len(inputs[0])

        total.register_autograd(lambda ctx, g: ([g.clone() for _ in range(ctx.count)],), setup_context=_setup_total)

        @torch.library.custom_op(f"{NS}::affine", mutates_args=())
        def affine(x: Tensor, bias: Optional[Tensor] = None) -> Tensor:
            return x * 2 if bias is None else x * 2 + bias

        def _setup_affine(ctx, inputs, output):
            ctx.has_bias = inputs[1] is not None
            ctx.x_shape = inputs[0].shape
            ctx.bias_shape = inputs[1].shape if ctx.has_bias else None

        affine.register_autograd(
            lambda ctx, g: (_reduce_to(g * 2, ctx.x_shape), _reduce_to(g, ctx.bias_shape) if ctx.has_bias else None), setup_context=_setup_affine
        )

        @pytest.mark.customop(f"{NS}::mul", dtypes=["float64"])
        def test_mul(customop):
            customop.check()

        @pytest.mark.customop(f"{NS}::bcast_add", dtypes=["float64"])
        def test_bcast_add(customop):
            names = [s.name for s in customop.samples()]
            assert "derived: broadcast [2, 3] with [3]" in names
            customop.check()

        @pytest.mark.customop(f"{NS}::sum_dim", dtypes=["float64"])
        def test_sum_dim(customop):
            customop.check()

        @pytest.mark.customop(f"{NS}::total", dtypes=["float64"])
        def test_total(customop):
            lengths = {len(s.args[0]) for s in customop.samples()}
            assert lengths == {2, 3}
            customop.check()

        @pytest.mark.customop(f"{NS}::affine", dtypes=["float64"])
        def test_affine(customop):
            biases = [s.kwargs.get("bias", s.args[1] if len(s.args) > 1 else None) for s in customop.samples()]
            assert any(b is None for b in biases) and any(b is not None for b in biases)
            customop.check()
        """,
    )
    result = run("-v", "-rs")
    # 5 ops x 11 default checks. These custom_ops have no jvp and no fake kernel: forward_ad and compile
    # skip for each; requires_grad_subsets skips for sum_dim, which has one tensor input.
    result.assert_outcomes(passed=44, skipped=11)
    skips = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skips) == 11 and all(
        "forward-mode AD" in line or "no fake (meta) kernel" in line or "no subset to try" in line for line in skips
    ), skips
    result.stdout.fnmatch_lines(
        [
            "*test_mul*cpu-float64-gradcheck* PASSED*",
            "*test_bcast_add*cpu-float64-gradgradcheck* PASSED*",
            "*test_total*cpu-float64-gradcheck* PASSED*",
            "*test_affine*cpu-float64-gradcheck* PASSED*",
        ]
    )


def test_derived_samples_catch_a_wrong_backward(pytester, run, ns):
    write_ops(
        pytester,
        ns,
        """
        @torch.library.custom_op(f"{NS}::mul", mutates_args=())
        def mul(x: Tensor, y: Tensor) -> Tensor:
            return x * y

        # Bug: each input's gradient uses itself instead of the other input.
        def _setup_mul(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def _mul_backward(ctx, g):
            x, y = ctx.saved_tensors
            return g * x, g * y

        mul.register_autograd(_mul_backward, setup_context=_setup_mul)

        @pytest.mark.customop(f"{NS}::mul", dtypes=["float64"], checks=["gradcheck"])
        def test_mul(customop):
            customop.check()
        """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{ns}::mul gradcheck failed on cpu float64*",
            "*sample 0: SampleInput 'derived: every tensor [[]2, 3[]]'*",
            "*gradient of input 'x'*",
        ]
    )


def test_op_rejecting_every_derived_sample_is_skipped_with_how_to(pytester, run, ns):
    write_ops(
        pytester,
        ns,
        """
        @torch.library.custom_op(f"{NS}::needs_five", mutates_args=())
        def needs_five(x: Tensor) -> Tensor:
            if x.shape != (5,):
                raise ValueError(f"needs_five wants a tensor of shape (5,), got {tuple(x.shape)}")
            return x * 3

        needs_five.register_autograd(lambda ctx, g: g * 3)

        @pytest.mark.customop(f"{NS}::needs_five", dtypes=["float64"], checks=["gradcheck"])
        def test_needs_five(customop):
            customop.check()
        """,
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            f"SKIPPED*{ns}::needs_five rejected every sample derived from its schema (2 tried; first: "
            "derived: every tensor [[]2, 3[]]: ValueError: needs_five wants a tensor of shape (5,), got (2, 3)); "
            f"give the op inputs it accepts: @pytest.mark.customop('{ns}::needs_five', samples=my_samples)*",
        ]
    )


def test_op_returning_nan_on_some_samples_keeps_the_others(pytester, run, ns):
    write_ops(
        pytester,
        ns,
        """
        @torch.library.custom_op(f"{NS}::log", mutates_args=())
        def log(x: Tensor) -> Tensor:
            return torch.log(x)

        log.register_autograd(
            lambda ctx, g: g / ctx.saved_tensors[0],
            setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
        )

        @pytest.mark.customop(f"{NS}::log", dtypes=["float64"], checks=["gradcheck"])
        def test_log(customop):
            assert [s.name for s in customop.samples()] == ["derived: every tensor [2, 3], positive values"]
            customop.check()
        """,
    )
    result = run()
    result.assert_outcomes(passed=1)


def test_argument_without_typical_value_skips_with_reason(pytester, run, ns):
    write_ops(
        pytester,
        ns,
        """
        torch.library.define(f"{NS}::reduce", "(Tensor x, str mode) -> Tensor")

        @torch.library.impl(f"{NS}::reduce", "CompositeExplicitAutograd")
        def reduce(x, mode):
            return x.sum() if mode == "sum" else x.mean()

        @pytest.mark.customop(f"{NS}::reduce", dtypes=["float64"], checks=["gradcheck"])
        def test_reduce(customop):
            customop.check()
        """,
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [f"SKIPPED*no samples could be derived from the schema: {ns}::reduce: argument 'mode' (str) has no default*"]
    )


def test_derived_samples_unit():
    """The variants, in order, and their shapes, without pytest in between."""
    import torch

    from pytest_customop.derived_samples import derive_samples
    from pytest_customop.ops import resolve_op

    samples = list(derive_samples(resolve_op("aten::add.Tensor"))("cpu", torch.float32, True))
    names = [s.name for s in samples]
    assert names == [
        "derived: every tensor [2, 3]",
        "derived: every tensor [2, 3], positive values",
        "derived: broadcast [2, 3] with [3]",
        "derived: broadcast [3] with [2, 3]",
        "derived: broadcast [2, 1] with [1, 3]",
    ]
    assert [tuple(t.shape) for t in samples[4].args] == [(2, 1), (1, 3)]
    assert all(t.requires_grad and t.dtype == torch.float32 for s in samples for t in s.args)
    assert samples[0].kwargs == {}  # alpha keeps its default
    assert all(0.5 <= float(v) <= 2.0 for v in samples[0].args[0].detach().abs().flatten())
