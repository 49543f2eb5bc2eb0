"""``--customop-namespace``: items for every op of a namespace that no marker covers."""

from __future__ import annotations

import textwrap

import pytest

# Four ops: `scale` is covered by a marked test; `double` and `square` are right; `cube` has a wrong
# backward (3 * x instead of 3 * x**2), caught in float64 (float32 items compare the op's float32
# gradients with its own float64 ones, which share the bug).
LIBRARY = """
import torch
from torch import Tensor

NS = {ns!r}

def _define(name, forward, derivative):
    op = torch.library.custom_op(f"{{NS}}::{{name}}", mutates_args=())(forward)
    op.register_autograd(
        lambda ctx, g: g * derivative(ctx.saved_tensors[0]),
        setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]),
    )
    return op

def scale(x: Tensor) -> Tensor:
    return x * 5

def double(x: Tensor) -> Tensor:
    return x * 2

def square(x: Tensor) -> Tensor:
    return x * x

def cube(x: Tensor) -> Tensor:
    return x * x * x

_define("scale", scale, lambda x: 5.0)
_define("double", double, lambda x: 2.0)
_define("square", square, lambda x: 2 * x)
_define("cube", cube, lambda x: 3 * x)
"""


@pytest.fixture
def library(pytester: pytest.Pytester, ns: str) -> str:
    """A conftest that loads a library of four ops, and a test that covers one of them."""
    pytester.makeconftest(f"import mylib_{ns}  # loads the library, as a project's conftest would\n")
    pytester.makepyfile(**{f"mylib_{ns}": LIBRARY.format(ns=ns)})
    pytester.makepyfile(
        test_scale=textwrap.dedent(
            f"""
            import pytest

            @pytest.mark.customop("{ns}::scale", dtypes=["float64"], checks=["gradcheck"])
            def test_scale(customop):
                customop.check()
            """
        )
    )
    return ns


def test_namespace_covers_exactly_the_untested_ops(run, library):
    ns = library
    result = run("-v", f"--customop-namespace={ns}", "--customop-checks=gradcheck", "-p", "no:randomly")
    # cube's backward is wrong at every dtype: its float32 item fails too (its reference is proven)
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_scale.py::test_scale[[]cpu-float64-gradcheck[]] PASSED*",
            f"customop::{ns}::cube[[]cpu-float64-gradcheck[]] FAILED*",
            f"customop::{ns}::cube[[]cpu-float32-gradcheck[]] FAILED*",
            f"customop::{ns}::double[[]cpu-float64-gradcheck[]] PASSED*",
            f"customop::{ns}::double[[]cpu-float32-gradcheck[]] PASSED*",
            f"customop::{ns}::square[[]cpu-float64-gradcheck[]] PASSED*",
            f"customop::{ns}::square[[]cpu-float32-gradcheck[]] PASSED*",
        ]
    )
    result.stdout.no_fnmatch_line(f"customop::{ns}::scale*")
    result.stdout.fnmatch_lines(
        [
            f"*{ns}::cube gradcheck failed on cpu float64*",
            "*gradient of input 'x'*",
            f"*reproduce: pytest --customop-namespace={ns} -k '{ns}::cube[[]cpu-float64-gradcheck[]]' --customop-seed=1234",
        ]
    )


def test_discovered_items_select_with_k_and_rerun_from_the_repro_line(run, library):
    ns = library
    result = run(
        "-v",
        f"--customop-namespace={ns}",
        "--customop-checks=gradcheck,gradgradcheck",
        "-k",
        f"{ns}::cube[cpu-float64-gradcheck]",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"customop::{ns}::cube[[]cpu-float64-gradcheck[]] FAILED*", "*12 deselected*"])


def test_namespaces_from_ini(pytester, run, library):
    ns = library
    pytester.makeini(f"[pytest]\ncustomop_namespaces = {ns}\ncustomop_checks = gradcheck\n")
    result = run("-v", "-k", "double")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"customop::{ns}::double[[]cpu-float64-gradcheck[]] PASSED*"])


def test_empty_namespace_fails_with_how_to_load_it(run, library):
    result = run(f"--customop-namespace={library}_absent", "-k", "absent")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"*--customop-namespace={library}_absent: no op is registered in namespace '{library}_absent'*"
            "torch.ops.load_library('path/to/lib.so')*"
        ]
    )


def test_discovery_under_xdist(pytester, library):
    ns = library
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", f"--customop-namespace={ns}", "--customop-checks=gradcheck", "--customop-seed=7"
    )
    result.assert_outcomes(passed=5, failed=2)
    result.stdout.fnmatch_lines([f"*FAILED customop::{ns}::cube[[]cpu-float64-gradcheck[]]*"])


def test_discovered_items_are_in_the_report(pytester, run, library):
    ns = library
    result = run(
        f"--customop-namespace={ns}", "--customop-checks=gradcheck", "--customop-report", "--customop-report=md:report.md"
    )
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["customop: 6 passed, 1 failed in 7 item(s) over 4 op(s)"])  # scale (marked) and six discovered
    markdown = (pytester.path / "report.md").read_text()
    assert f"{ns}::cube" in markdown
    # the discovered item's repro line reruns it by namespace and name, not by a node id pytest cannot collect
    assert f"pytest --customop-namespace={ns} -k '{ns}::cube[cpu-float64-gradcheck]' --customop-seed=1234" in markdown


def test_a_discovered_item_skipped_at_collection_is_reported_as_a_skip(run, library):
    # forward_ad does not apply to a torch.library.custom_op op: a skip mark at collection, whose
    # location pytest reads from reportinfo (an INTERNALERROR when its line was None)
    ns = library
    result = run("-rs", f"--customop-namespace={ns}", "--customop-checks=gradcheck,forward_ad", "-k", "double")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines([f"SKIPPED [[]2[]] *{ns}::double: torch.library.custom_op ops cannot register a jvp*"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
