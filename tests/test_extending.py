"""Checks from a project's conftest are first-class: ids, ``checks=``, ``-k``, defaults, pass and fail.
And which checks a marker without ``checks=`` runs: every applicable one, narrowed by ini or CLI."""

from __future__ import annotations

import textwrap

import pytest

CONFTEST = """
import pytest


def pytest_customop_register_checks(registry):
    import torch
    from pytest_customop import Check, Finding

    class FiniteOutputs(Check):
        name = "finite_outputs"
        description = "the op's outputs are finite on every sample"

        def not_applicable(self, op, spec):
            if not any(r.type == "Tensor" for r in op.returns):
                return f"{op.name} returns no tensor"
            return None

        def run(self, ctx):
            samples = ctx.samples(requires_grad=False)
            findings = []
            for index, sample in enumerate(samples):
                out = ctx.op(*sample.args, **sample.kwargs)
                bad = int((~torch.isfinite(out)).sum())
                if bad:
                    findings.append(Finding(index, f"{bad} of {out.numel()} output element(s) are not finite"))
            if findings:
                return ctx.failed(findings, total=len(samples))
            return ctx.passed(len(samples), len(samples))

    class Expensive(Check):
        name = "expensive"
        description = "opt-in: runs only where checks= names it"
        default = False

        def run(self, ctx):
            return ctx.passed(0, 0)

    registry.register(FiniteOutputs())
    registry.register(Expensive())
"""

OPS = """
import torch
import pytest
from pytest_customop import SampleInput


@torch.library.custom_op("NS::safe_log", mutates_args=())
def safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.abs() + 1)


def _save_x(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _safe_log_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * torch.sign(x) / (x.abs() + 1)


safe_log.register_autograd(_safe_log_backward, setup_context=_save_x)


@torch.library.custom_op("NS::raw_log", mutates_args=())
def raw_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x)  # NaN for negative inputs



@torch.library.custom_op("NS::fill_", mutates_args=("x",))
def fill_(x: torch.Tensor) -> None:
    x.fill_(1.0)


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.tensor([-1.0, 2.0, 3.0], dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(safe_log, samples=samples, checks=["gradcheck", "finite_outputs"], dtypes=[torch.float64], devices=["cpu"])
def test_safe(customop):
    customop.check()


@pytest.mark.customop(raw_log, samples=samples, checks=["finite_outputs"], dtypes=[torch.float64], devices=["cpu"])
def test_raw(customop):
    customop.check()


@pytest.mark.customop(fill_, samples=samples, checks=["finite_outputs"], dtypes=[torch.float64], devices=["cpu"])
def test_fill(customop):
    customop.check()
"""


@pytest.fixture
def project(pytester: pytest.Pytester, ns: str) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_ops=OPS.replace("NS", ns))
    return pytester


def test_a_conftest_check_runs_like_a_built_in_one(project, ns, run):
    result = run("-v", "-rs")
    result.assert_outcomes(passed=2, failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "test_ops.py::test_safe[[]cpu-float64-gradcheck[]] PASSED*",
            "test_ops.py::test_safe[[]cpu-float64-finite_outputs[]] PASSED*",
            "test_ops.py::test_raw[[]cpu-float64-finite_outputs[]] FAILED*",
            "test_ops.py::test_fill[[]cpu-float64-finite_outputs[]] SKIPPED*",
            f"{ns}::raw_log finite_outputs failed on cpu float64: 1 of 1 sample(s)",
            "  sample 0: SampleInput(Tensor([[]3[]], float64, cpu))",
            "    1 of 3 output element(s) are not finite",
            f"SKIPPED * {ns}::fill_ returns no tensor",
        ]
    )


def test_k_selects_a_conftest_check_by_name(project, run):
    result = run("-v", "-k", "finite_outputs and not raw")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "test_ops.py::test_safe[[]cpu-float64-finite_outputs[]] PASSED*",
            "test_ops.py::test_fill[[]cpu-float64-finite_outputs[]] SKIPPED*",
            "*2 deselected*",
        ]
    )


def test_a_marker_without_checks_runs_every_default_check_that_applies(pytester, ns, run):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        test_ops=textwrap.dedent("""
        import torch
        import pytest
        from pytest_customop import SampleInput

        @torch.library.custom_op("NS::double", mutates_args=())
        def double(x: torch.Tensor) -> torch.Tensor:
            return 2 * x

        def samples(device, dtype, requires_grad):
            yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad))

        @pytest.mark.customop(double, samples=samples, dtypes=[torch.float64], devices=["cpu"])
        def test_double(customop):
            customop.check()
    """).replace("NS", ns)
    )
    result = run("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "test_ops.py::test_double[[]cpu-float64-gradcheck[]]",
            "test_ops.py::test_double[[]cpu-float64-gradgradcheck[]]",
            "test_ops.py::test_double[[]cpu-float64-grad_keys[]]",
            "test_ops.py::test_double[[]cpu-float64-forward_ad[]]",
            "test_ops.py::test_double[[]cpu-float64-batched_grad[]]",
            "test_ops.py::test_double[[]cpu-float64-noncontiguous[]]",
            "test_ops.py::test_double[[]cpu-float64-nondeterminism[]]",
            "test_ops.py::test_double[[]cpu-float64-requires_grad_subsets[]]",
            "test_ops.py::test_double[[]cpu-float64-edge_shapes[]]",
            "test_ops.py::test_double[[]cpu-float64-opcheck[]]",
            "test_ops.py::test_double[[]cpu-float64-compile[]]",
            "test_ops.py::test_double[[]cpu-float64-finite_outputs[]]",
            "*12 tests collected*",
        ]
    )
    assert "expensive" not in result.stdout.str()  # default = False: only where checks= names it
    # requires_grad_subsets does not apply to a one-input op: a skip with the reason, not a silent omission
    result = run("-rs", "-k", "requires_grad_subsets")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED * {ns}::double has one tensor input ('x'): there is no subset to try"])


DEFAULTS = """
import torch
import pytest
from pytest_customop import SampleInput

@torch.library.custom_op("NS::double", mutates_args=())
def double(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 2 * x + y

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype), torch.randn(3, dtype=dtype))

@pytest.mark.customop(double, samples=samples, dtypes=[torch.float64], devices=["cpu"])
def test_default(customop):
    customop.check()

@pytest.mark.customop(double, samples=samples, dtypes=[torch.float64], devices=["cpu"], checks=["edge_shapes"])
def test_explicit(customop):
    customop.check()
"""


def test_ini_narrows_the_default_checks_and_the_command_line_overrides_it(pytester, ns, run):
    pytester.makeini("[pytest]\ncustomop_checks = gradcheck, requires_grad_subsets\n")
    pytester.makepyfile(test_ops=DEFAULTS.replace("NS", ns))
    result = run("--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "test_ops.py::test_default[[]cpu-float64-gradcheck[]]",
            "test_ops.py::test_default[[]cpu-float64-requires_grad_subsets[]]",
            "test_ops.py::test_explicit[[]cpu-float64-edge_shapes[]]",  # the marker's checks= wins
            "*3 tests collected*",
        ]
    )
    result = run("--collect-only", "-q", "--customop-checks=opcheck,compile")
    result.stdout.fnmatch_lines(
        [
            "test_ops.py::test_default[[]cpu-float64-opcheck[]]",
            "test_ops.py::test_default[[]cpu-float64-compile[]]",
            "test_ops.py::test_explicit[[]cpu-float64-edge_shapes[]]",
            "*3 tests collected*",
        ]
    )


def test_an_unknown_check_name_in_the_settings_is_a_usage_error(pytester, ns, run):
    pytester.makepyfile(test_ops=DEFAULTS.replace("NS", ns))
    result = run("--customop-checks=gradcheck,opchek")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-customop: --customop-checks=gradcheck,opchek names unknown check(s) opchek; "
            "known: gradcheck, gradgradcheck, grad_keys, *",
        ]
    )


def test_a_check_registered_twice_is_an_error_naming_it(pytester, ns, run):
    pytester.makeconftest("""
        def pytest_customop_register_checks(registry):
            from pytest_customop.checks.edge_shapes import EdgeShapesCheck
            registry.register(EdgeShapesCheck())
    """)
    pytester.makepyfile(test_ops=DEFAULTS.replace("NS", ns))
    result = run()
    assert result.ret == pytest.ExitCode.INTERRUPTED  # found when the first customop marker is collected
    result.stdout.fnmatch_lines(["E   pytest.UsageError: pytest-customop: a check named 'edge_shapes' is already registered*"])
