"""The ``opcheck`` and ``compile`` checks: wrong registrations are caught, correct ops pass."""

from __future__ import annotations

from customop_sources import CORRECT_OPS, HEADER, write


# -- opcheck ----------------------------------------------------------------------------------------
def test_opcheck_passes_a_correct_op_and_reports_each_sub_test(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        mul = define_mul("mul", lambda x, y: torch.empty_like(x * y))

        @pytest.mark.customop(mul, samples=pair, checks=["opcheck"], dtypes=[torch.float64], devices=["cpu"])
        def test_mul(customop):
            result = customop.check()
            print("NOTES:", " | ".join(result.notes))
    """,
    )
    result = run("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*NOTES:*test_schema: passed on 2 sample(s)*test_autograd_registration: passed on 2 sample(s)"
            "*test_faketensor: passed on 2 sample(s)*test_aot_dispatch_dynamic: passed on 2 sample(s)*",
        ]
    )


def test_opcheck_catches_a_wrong_fake_kernel_naming_the_sub_test_and_sample(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        # The fake kernel drops the last dimension: compiled code would get the wrong shape.
        mul = define_mul("bad_fake", lambda x, y: x.new_empty(x.shape[:-1]))

        @pytest.mark.customop(mul, samples=pair, checks=["opcheck"], dtypes=[torch.float64], devices=["cpu"])
        def test_mul(customop):
            customop.check()
    """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{ns}::bad_fake opcheck failed on cpu float64: 2 of 2 sample(s)",
            "  sample 0: SampleInput(Tensor([[]3, 4[]], float64, cpu, requires_grad)*",
            "    test_faketensor failed: MetadataMismatchError: *Shapes torch.Size([[]3, 4[]]) and torch.Size([[]3[]]) are not equal*",
            "*note: test_schema: passed on 2 sample(s)",
            "*note: test_faketensor: FAILED on sample(s) 0, 1",
        ]
    )
    # torch's pages of text are cut to their first lines
    assert "scroll up for stack trace" not in result.stdout.str()
    assert "BEGIN REPRO SCRIPT" not in result.stdout.str()


def test_opcheck_catches_a_schema_that_hides_a_mutation(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        @torch.library.custom_op("NS::sneaky", mutates_args=())
        def sneaky(x: torch.Tensor) -> torch.Tensor:
            x.add_(1)  # mutates its input although the schema says it does not
            return x.clone()

        sneaky.register_fake(lambda x: torch.empty_like(x))

        def one(device, dtype, requires_grad):
            yield SampleInput(torch.randn(3, dtype=dtype))

        @pytest.mark.customop(sneaky, samples=one, checks=["opcheck"], dtypes=[torch.float64], devices=["cpu"])
        def test_sneaky(customop):
            customop.check()
    """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["    test_schema failed: *mutated*"])


def test_opcheck_sub_test_missing_from_this_torch_is_a_skip_with_the_reason(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        mul = define_mul("mul", lambda x, y: torch.empty_like(x * y))

        @pytest.mark.customop(mul, samples=pair, checks=["opcheck"], dtypes=[torch.float64], devices=["cpu"],
                              options={"opcheck": {"test_utils": ["test_from_the_future"]}})
        def test_mul(customop):
            customop.check()
    """,
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED * none of the requested opcheck sub-tests (test_from_the_future) exists in torch *; it has test_schema*",
        ]
    )


# -- compile ----------------------------------------------------------------------------------------
def test_compile_passes_a_correct_op_on_both_default_backends(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        mul = define_mul("mul", lambda x, y: torch.empty_like(x * y))

        @pytest.mark.customop(mul, samples=pair, checks=["compile"], dtypes=[torch.float64, torch.float32], devices=["cpu"])
        def test_mul(customop):
            result = customop.check()
            print("NOTES:", " | ".join(result.notes))
    """,
    )
    result = run("-s")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*NOTES: backends: eager, aot_eager (fullgraph=True, dynamic=False)*"])


def test_compile_catches_a_fake_kernel_with_the_wrong_shape(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        mul = define_mul("bad_fake", lambda x, y: x.new_empty(x.shape[:-1]))

        @pytest.mark.customop(mul, samples=pair, checks=["compile"], dtypes=[torch.float64], devices=["cpu"])
        def test_mul(customop):
            customop.check()
    """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{ns}::bad_fake compile failed on cpu float64: 2 of 2 sample(s)",
            "  sample 0: *",
            "    torch.compile(backend='aot_eager') raised *",
        ]
    )
    assert "TORCHDYNAMO_VERBOSE" not in result.stdout.str()


def test_opcheck_catches_a_fake_kernel_with_the_wrong_dtype(pytester, ns, run):
    # torch.compile's eager and aot_eager backends run the real kernel, so only opcheck sees this one.
    write(
        pytester,
        ns,
        """
        mul = define_mul("bad_dtype", lambda x, y: torch.empty_like(x * y, dtype=torch.float16))

        @pytest.mark.customop(mul, samples=pair, checks=["opcheck"], dtypes=[torch.float64], devices=["cpu"])
        def test_mul(customop):
            customop.check()
    """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*{ns}::bad_dtype opcheck failed on cpu float64*",
            "    test_faketensor failed: MetadataMismatchError: *dtype*",
        ]
    )


def test_compile_catches_data_dependent_python_and_honours_the_backends_option(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        lib = torch.library.Library("NS", "DEF")
        lib.define("branchy(Tensor x) -> Tensor")

        def branchy(x):
            if x.sum() > 0:  # data-dependent Python: dynamo cannot trace it into one graph
                return x * 2
            return x * 3

        lib.impl("branchy", branchy, "CompositeImplicitAutograd")

        def one(device, dtype, requires_grad):
            yield SampleInput(torch.randn(4, dtype=dtype, requires_grad=requires_grad))

        @pytest.mark.customop("NS::branchy", samples=one, checks=["compile"], dtypes=[torch.float64],
                              devices=["cpu"], options={"compile": {"backends": ["eager"]}})
        def test_branchy(customop):
            customop.check()
    """,
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "    torch.compile(backend='eager') raised *data-dependent*",
            "  note: backends: eager (fullgraph=True, dynamic=False)",
        ]
    )
    assert "aot_eager" not in result.stdout.str()


# -- correct ops of every kind pass both ---------------------------------------------------------------
def test_correct_ops_of_every_kind_pass_opcheck_and_compile(pytester, ns, run):
    body = """
@pytest.mark.customop("NS::square", samples=singles, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
def test_square(customop):
    customop.check()

@pytest.mark.customop(scale_, samples=scale_samples, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
def test_scale_(customop):
    customop.check()

@pytest.mark.customop(top, samples=singles, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
def test_top(customop):
    customop.check()

@pytest.mark.customop(scaled_copies, samples=list_samples, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
def test_scaled_copies(customop):
    customop.check()
"""
    pytester.makepyfile(test_ops=(HEADER + CORRECT_OPS + body).replace("NS", ns))
    result = run("-v")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(
        [
            "*test_square[[]cpu-float64-opcheck[]] PASSED*",
            "*test_scale_[[]cpu-float64-compile[]] PASSED*",
            "*test_top[[]cpu-float64-compile[]] PASSED*",
            "*test_scaled_copies[[]cpu-float64-opcheck[]] PASSED*",
        ]
    )


# -- eager-only ops: the fake-tensor parts do not apply ------------------------------------------------
def test_an_op_without_a_fake_kernel_runs_opchecks_other_sub_tests_and_skips_compile(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        # custom_op without register_fake, and a Library op with only a CPU kernel: eager-only ops.
        @torch.library.custom_op("NS::eager_mul", mutates_args=())
        def eager_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x * y

        eager_mul.register_autograd(mul_backward, setup_context=save_inputs)

        lib = torch.library.Library("NS", "FRAGMENT")
        lib.define("cpu_sin(Tensor x) -> Tensor")
        lib.impl("cpu_sin", lambda x: torch.sin(x), "CompositeImplicitAutograd")
        lib.define("cpu_cos(Tensor x) -> Tensor")
        lib.impl("cpu_cos", lambda x: torch.cos(x), "CPU")

        def one(device, dtype, requires_grad):  # no autograd formula for cpu_cos: inputs need no grad
            yield SampleInput(torch.randn(3, dtype=dtype, device=device))

        @pytest.mark.customop(eager_mul, samples=pair, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
        def test_eager_mul(customop):
            print("NOTES:", " | ".join(customop.check().notes))

        @pytest.mark.customop("NS::cpu_cos", samples=one, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
        def test_cpu_cos(customop):
            print("NOTES:", " | ".join(customop.check().notes))

        # A composite kernel decomposes into aten ops that run on fake tensors: compile applies.
        @pytest.mark.customop("NS::cpu_sin", samples=one, checks=["compile"], dtypes=[torch.float64], devices=["cpu"])
        def test_cpu_sin(customop):
            customop.check()
    """,
    )
    result = run("-rs", "-s", "-v")
    result.assert_outcomes(passed=3, skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_eager_mul[[]cpu-float64-opcheck[]] NOTES: test_schema: passed on 2 sample(s) | "
            "test_autograd_registration: passed on 2 sample(s)*",
            f"*test_faketensor: not run: {ns}::eager_mul has no fake (meta) kernel*register_fake*",
            f"*test_aot_dispatch_dynamic: not run: {ns}::eager_mul has no fake (meta) kernel*",
            "*test_eager_mul[[]cpu-float64-compile[]] SKIPPED*",
            f"SKIPPED [[]1[]] test_ops.py:*: torch.compile traces with fake tensors: "
            f"{ns}::eager_mul has no fake (meta) kernel*register_fake*",
            f"SKIPPED [[]1[]] test_ops.py:*: torch.compile traces with fake tensors: {ns}::cpu_cos has no fake (meta) kernel*",
            "*test_cpu_cos[[]cpu-float64-opcheck[]] NOTES: test_schema: passed on 1 sample(s)*",
            "*test_cpu_sin[[]cpu-float64-compile[]] PASSED*",
        ]
    )


def test_a_fake_kernel_that_raises_is_a_finding_not_a_missing_kernel(pytester, ns, run):
    write(
        pytester,
        ns,
        """
        def broken_fake(x, y):
            raise NotImplementedError("forgot the broadcast case")

        mul = define_mul("raising_fake", broken_fake)

        @pytest.mark.customop(mul, samples=pair, checks=["opcheck", "compile"], dtypes=[torch.float64], devices=["cpu"])
        def test_mul(customop):
            customop.check()
    """,
    )
    result = run("-v")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*test_faketensor failed: *NotImplementedError*forgot the broadcast case*",
            "*torch.compile(backend='eager') raised *",
            "*got NotImplementedError('forgot the broadcast case')*",
        ]
    )


# -- the default configuration on correct ops of every kind ---------------------------------------------
def test_correct_ops_of_every_kind_pass_every_default_check_or_skip_with_a_reason(pytester, ns, run):
    body = """
@pytest.mark.customop("NS::square", samples=singles, dtypes=[torch.float64, torch.float32], devices=["cpu"])
def test_square(customop):
    customop.check()

@pytest.mark.customop(scale_, samples=scale_samples, dtypes=[torch.float64, torch.float32], devices=["cpu"])
def test_scale_(customop):
    customop.check()

@pytest.mark.customop(top, samples=singles, dtypes=[torch.float64, torch.float32], devices=["cpu"])
def test_top(customop):
    customop.check()

@pytest.mark.customop(scaled_copies, samples=list_samples, dtypes=[torch.float64, torch.float32], devices=["cpu"])
def test_scaled_copies(customop):
    customop.check()
"""
    pytester.makepyfile(test_ops=(HEADER + CORRECT_OPS + body).replace("NS", ns))
    result = run("-rs")
    outcomes = result.parseoutcomes()
    # no marker names its checks: every registered default check runs, 4 ops x 2 dtypes of them
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-4000:]
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == 4 * 2 * 11
    skips = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert skips and all(line.split(": ", 1)[1].strip() for line in skips)  # each skip says why
    text = "\n".join(skips)
    assert "refuses double backward" in text  # square
    assert f"{ns}::scale_ mutates 'x'" in text  # the gradient checks of the mutating op
    assert "forward-mode AD" in text  # custom_op ops cannot register a jvp
