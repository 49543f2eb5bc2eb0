"""The ``requires_grad_subsets`` and ``edge_shapes`` checks: backwards right only where their authors
looked are caught; correct ops of every kind pass."""

from __future__ import annotations

from customop_sources import CORRECT_OPS, HEADER, write

FMA = """
def triple(device, dtype, requires_grad):
    yield SampleInput(*(torch.randn(2, 3, dtype=dtype, requires_grad=requires_grad) for _ in range(3)))


def define_fma(name, backward):
    @torch.library.custom_op(f"NS::{name}", mutates_args=())
    def fma(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x * y + z

    fma.register_fake(lambda x, y, z: torch.empty_like(x))
    fma.register_autograd(backward, setup_context=save_inputs)
    return fma
"""


# -- requires_grad_subsets --------------------------------------------------------------------------
def test_subsets_pass_a_backward_that_uses_needs_input_grad_right(pytester, ns, run):
    write(
        pytester,
        ns,
        prelude=FMA,
        body="""
        def backward(ctx, grad):
            x, y, z = ctx.saved_tensors
            return (grad * y if ctx.needs_input_grad[0] else None,
                    grad * x if ctx.needs_input_grad[1] else None,
                    grad if ctx.needs_input_grad[2] else None)

        fma = define_fma("fma", backward)

        @pytest.mark.customop(fma, samples=triple, checks=["requires_grad_subsets"], dtypes=[torch.float64, torch.float32], devices=["cpu"])
        def test_fma(customop):
            print("NOTES:", customop.check().notes)
    """,
    )
    result = run("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*NOTES: *6 subset(s) of inputs requiring grad compared*"])


def test_subsets_catch_a_misindexed_needs_input_grad(pytester, ns, run):
    write(
        pytester,
        ns,
        prelude=FMA,
        body="""
        def backward(ctx, grad):
            x, y, z = ctx.saved_tensors
            # needs_input_grad indexed off by one: right only when every input requires grad
            return (grad * y if ctx.needs_input_grad[1] else None,
                    grad * x if ctx.needs_input_grad[2] else None,
                    grad if ctx.needs_input_grad[0] else None)

        fma = define_fma("fma_misindexed", backward)

        @pytest.mark.customop(fma, samples=triple, checks=["requires_grad_subsets", "gradcheck"], dtypes=[torch.float64], devices=["cpu"])
        def test_fma(customop):
            customop.check()
    """,
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_fma[[]cpu-float64-requires_grad_subsets[]] FAILED*",
            "*test_fma[[]cpu-float64-gradcheck[]] PASSED*",
            f"*{ns}::fma_misindexed requires_grad_subsets failed on cpu float64: 1 of 1 sample(s)",
            "    when only 'x' requires grad, the gradient of input 'x' is wrong (backward returned None for it): "
            "* differ; worst at index *: expected * (every input requiring grad), got 0 (only 'x' requires grad)*",
            "    when only 'y' requires grad, the gradient of input 'y' is wrong*",
        ]
    )


def test_subsets_catch_gradients_returned_positionally_shifted(pytester, ns, run):
    write(
        pytester,
        ns,
        prelude=FMA,
        body="""
        def backward(ctx, grad):
            x, y, z = ctx.saved_tensors
            # packs only the gradients that are needed, so they shift left when one is skipped
            grads = []
            if ctx.needs_input_grad[0]:
                grads.append(grad * y)
            if ctx.needs_input_grad[1]:
                grads.append(grad * x)
            if ctx.needs_input_grad[2]:
                grads.append(grad)
            return tuple(grads) + (None,) * (3 - len(grads))

        fma = define_fma("fma_shifted", backward)

        @pytest.mark.customop(fma, samples=triple, checks=["requires_grad_subsets"], dtypes=[torch.float64], devices=["cpu"])
        def test_fma(customop):
            customop.check()
    """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "    when only 'y' requires grad, the gradient of input 'y' is wrong (backward returned None for it)*",
            "    when only 'z' requires grad, the gradient of input 'z' is wrong*",
        ]
    )


# -- edge_shapes ------------------------------------------------------------------------------------
SIN = """
def rows(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad))


def define_sin(name, backward, check_forward=None):
    @torch.library.custom_op(f"NS::{name}", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        if check_forward is not None:
            check_forward(x)
        return torch.sin(x)

    op.register_fake(lambda x: torch.empty_like(x))
    op.register_autograd(backward, setup_context=save_inputs)
    return op
"""


def test_edge_shapes_fail_a_backward_that_raises_on_a_proven_empty_batch(pytester, ns, run):
    write(
        pytester,
        ns,
        prelude=SIN,
        body="""
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            scale = grad.abs().max().clamp_min(1e-30)  # against overflow; raises on a zero-size gradient
            return (grad / scale) * torch.cos(x) * scale

        op = define_sin("sin_nonempty", backward)

        @pytest.mark.customop(op, samples=rows, checks=["edge_shapes", "gradcheck"], dtypes=[torch.float64], devices=["cpu"])
        def test_sin(customop):
            customop.check()
    """,
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_sin[[]cpu-float64-gradcheck[]] PASSED*",
            f"*{ns}::sin_nonempty edge_shapes failed on cpu float64: 1 of 1 sample(s)",
            "  sample 0: SampleInput(Tensor([[]3, 4[]], float64, cpu, requires_grad))",
            "    on a proven edge (dimension 0, shared by 'x' and the output, sliced to 0), the backward raised RuntimeError: "
            "max(): Expected reduction dim to be specified for input.numel() == 0*",
            "    derived sample: SampleInput(Tensor([[]0, 4[]], float64, cpu, requires_grad))",
            "    why it is valid: on the given sample, slicing it to 1 gives the first slice of the original output ([[]3, 4[]]); "
            "here the forward gives an output of shape [[]0, 4[]]",
            "*in backward",
            "*scale = grad.abs().max()*",
        ]
    )


def test_edge_shapes_prove_the_reference_of_a_float32_only_marker(pytester, ns, run):
    # Wrong only on a batch of one row, at every dtype: the float32 item's float64 reference is wrong the
    # same way, so it must itself be proven against finite differences to catch the bug.
    write(
        pytester,
        ns,
        prelude=SIN,
        body="""
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            sign = -1.0 if x.shape[0] == 1 else 1.0  # a single-row launch path with the sign flipped
            return sign * grad * torch.cos(x)

        op = define_sin("sin_one_row", backward)

        @pytest.mark.customop(op, samples=rows, checks=["edge_shapes", "gradcheck"], dtypes=[torch.float32], devices=["cpu"])
        def test_sin(customop):
            customop.check()
    """,
    )
    result = run("-v")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_sin[[]cpu-float32-gradcheck[]] PASSED*",
            f"*{ns}::sin_one_row edge_shapes failed on cpu float32: 1 of 1 sample(s)",
            "    on a proven edge (dimension 0, shared by 'x' and the output, sliced to 1)*float64 gradient of input 'x'*",
        ]
    )


ZERO_DIM_BUG = """
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        columns = x.shape[-1]  # a "kernel" launch size: assumes a last dimension, raises for a 0-dim x
        return grad * torch.cos(x)

    op = define_sin("sin_needs_a_dim", backward)

    @pytest.mark.customop(op, samples=rows, checks=["edge_shapes"], dtypes=[torch.float32], devices=["cpu"])
    def test_sin(customop):
        print("NOTES:", customop.check().notes)
"""


def test_edge_shapes_report_a_suspected_edge_as_a_note_and_a_warning(pytester, ns, run):
    write(pytester, ns, prelude=SIN, body=ZERO_DIM_BUG)
    result = run("-s")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*NOTES: *derived sample(s) (* proven by the forward, * suspected): * right, 1 wrong, 0 skipped*"
            "suspected edge: on sample 0 with 'x' made 0-dim, which the forward accepts, the backward raised IndexError: "
            "tuple index out of range; if this is a valid input, this is a bug (derived sample: SampleInput(Tensor([[]], float32, cpu, requires_grad)))*",
            "*warnings summary*",
            "*SuspectedEdgeWarning: *::sin_needs_a_dim edge_shapes on cpu float32: suspected edge: on sample 0 with 'x' made 0-dim*",
        ]
    )


def test_strict_edges_fail_a_suspected_edge_from_the_command_line_the_ini_file_and_the_marker(pytester, ns, run, monkeypatch):
    write(
        pytester,
        ns,
        prelude=SIN,
        body=ZERO_DIM_BUG
        + """
    @pytest.mark.customop(op, samples=rows, checks=["edge_shapes"], dtypes=[torch.float64], devices=["cpu"],
                          options={"edge_shapes": {"strict": True}})
    def test_strict_marker(customop):
        customop.check()
    """,
    )
    result = run("--customop-strict-edges")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            f"{ns}::sin_needs_a_dim edge_shapes failed on cpu float32: 1 of 1 sample(s)",
            "    on a suspected edge ('x' made 0-dim, which the forward accepts; failing because suspected edges are strict), "
            "the backward raised IndexError: tuple index out of range",
            "    derived sample: SampleInput(Tensor([[]], float32, cpu, requires_grad))",
        ]
    )
    result = run()  # the marker's option alone
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    pytester.makeini("[pytest]\ncustomop_strict_edges = true\n")
    run().assert_outcomes(failed=2)
    pytester.makeini("[pytest]\n")
    monkeypatch.setenv("CUSTOMOP_STRICT_EDGES", "1")
    run().assert_outcomes(failed=2)


def test_edge_shapes_skip_derived_samples_the_forward_rejects(pytester, ns, run):
    write(
        pytester,
        ns,
        prelude=SIN,
        body="""
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            scale = grad.abs().max()  # wrong on empty tensors, which this op refuses anyway
            return (grad / scale) * torch.cos(x) * scale

        def matrices_only(x):
            torch._check(x.dim() == 2 and x.numel() > 0, lambda: f"expected a non-empty matrix, got {list(x.shape)}")

        op = define_sin("sin_matrices", backward, check_forward=matrices_only)

        @pytest.mark.customop(op, samples=rows, checks=["edge_shapes"], dtypes=[torch.float64], devices=["cpu"])
        def test_sin(customop):
            print("NOTES:", customop.check().notes)
    """,
    )
    result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*NOTES: *6 derived sample(s) (4 proven by the forward, 2 suspected): 2 right, 0 wrong, 4 skipped*"
            "skipped, e.g. dimension 0, shared by 'x' and the output, sliced to 0: the forward rejects it "
            "(RuntimeError: expected a non-empty matrix, got [[]0, 4[]])*",
        ]
    )


def test_edge_shapes_fail_wrong_gradients_for_a_proven_broadcast_input(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        def backward(ctx, grad):
            x, y = ctx.saved_tensors
            # reduces y's gradient over dimension 0 only: right when y is [[]4[]] or [[]3, 4[]], wrong for [[]3, 1[]]
            grad_y = grad * x if y.shape == x.shape else (grad * x).sum(0).reshape(-1)[: y.numel()].reshape(y.shape)
            return grad * y, grad_y

        @torch.library.custom_op("NS::mul_bcast", mutates_args=())
        def mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x * y

        mul.register_fake(lambda x, y: torch.empty_like(x * y))
        mul.register_autograd(backward, setup_context=save_inputs)

        @pytest.mark.customop(mul, samples=pair, checks=["edge_shapes"], dtypes=[torch.float64], devices=["cpu"])
        def test_mul(customop):
            customop.check()
    """.replace("[[]", "[").replace("[]]", "]"),
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "    on a proven edge ('y' given size 1 in dimension 1, broadcast against the others), gradient of input 'y': "
            "* differ; worst at index *: expected * (finite differences), got * (backward)*",
            "    derived sample: SampleInput(Tensor([[]3, 4[]], *), Tensor([[]3, 1[]], *))",
            "    why it is valid: the forward gives the output of 'y' expanded back to [[]3, 4[]]; here the forward gives an output of shape [[]3, 4[]]",
        ]
    )


# -- correct ops of every kind ------------------------------------------------------------------------
def test_correct_ops_of_every_kind_pass_or_are_skipped_with_the_reason(pytester, ns, run):
    checks = 'checks=["requires_grad_subsets", "edge_shapes"], dtypes=[torch.float64], devices=["cpu"]'
    body = f"""
@pytest.mark.customop("NS::square", samples=singles, {checks})
def test_square(customop):
    customop.check()

@pytest.mark.customop(scale_, samples=scale_samples, {checks})
def test_scale_(customop):
    customop.check()

@pytest.mark.customop(top, samples=singles, {checks})
def test_top(customop):
    customop.check()

@pytest.mark.customop(scaled_copies, samples=list_samples, {checks})
def test_scaled_copies(customop):
    customop.check()
"""
    pytester.makepyfile(test_ops=(HEADER + CORRECT_OPS + body).replace("NS", ns))
    result = run("-v", "-rs")
    result.assert_outcomes(passed=4, skipped=4)
    result.stdout.fnmatch_lines(
        [
            "*test_square[[]cpu-float64-edge_shapes[]] PASSED*",
            "*test_top[[]cpu-float64-edge_shapes[]] PASSED*",
            "*test_scaled_copies[[]cpu-float64-requires_grad_subsets[]] PASSED*",
            "*test_scaled_copies[[]cpu-float64-edge_shapes[]] PASSED*",
        ]
    )
    result.stdout.fnmatch_lines_random(
        [
            f"SKIPPED * {ns}::square has one tensor input ('x'): there is no subset to try",
            f"SKIPPED * {ns}::top has one tensor input ('x'): there is no subset to try",
            f"SKIPPED * {ns}::scale_ mutates 'x': torch allows no autograd formula for an op that mutates its inputs",
        ]
    )
