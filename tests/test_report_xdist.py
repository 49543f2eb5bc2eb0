"""``--customop-report`` under pytest-xdist: the same report as without workers, and a worker that
crashes leaves error rows, a warning naming it, and a report still written."""

from __future__ import annotations

import json
import re

import pytest
from report_suite import suite

pytest.importorskip("xdist")

FILES = ("json:report.json", "md:report.md", "html:report.html")


def _report_lines(result: pytest.RunResult) -> list[str]:
    """The terminal report, from its header line to its totals line."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "= customop report =" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("customop: ") and i > start)
    return lines[start + 1 : end + 1]


def _files(pytester: pytest.Pytester) -> dict[str, str]:
    return {name: (pytester.path / name).read_text() for name in ("report.json", "report.md", "report.html")}


def _without_html_durations(text: str) -> str:
    """The page without what differs between any two runs: each cell's and each result's duration."""
    text = re.sub(r'<span class="duration">[^<]*</span>', "", text)
    return re.sub(r", (&lt;1 ms|\d+ ms|[\d.]+ s)<br>", "<br>", text)


def _without_durations(text: str) -> dict:
    document = json.loads(text)
    assert document.pop("created")  # when each was built: the one field two runs never share
    for row in document["results"]:
        assert isinstance(row.pop("duration_s"), float)
    return document


def test_two_workers_give_the_same_report_and_files_as_none(pytester: pytest.Pytester, ns: str, run, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    pytester.makepyfile(test_suite=suite(ns))
    args = ["--customop-report", "--junitxml=junit.xml"] + [f"--customop-report={target}" for target in FILES]

    serial = run(*args, "-n", "0")  # in-process: one torch import fewer
    serial.assert_outcomes(passed=5, failed=1, skipped=2, xfailed=1, xpassed=1, errors=1)
    serial_files, serial_lines = _files(pytester), _report_lines(serial)

    # The controller runs no test: it must not pay torch's import while the workers start.
    pytester.makepyfile(
        controller_probe="""
        import sys

        def pytest_unconfigure(config):
            if not hasattr(config, "workerinput"):
                print("CONTROLLER IMPORTED TORCH:", "torch" in sys.modules)
    """
    )
    parallel = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "controller_probe", "--customop-seed=1234", *args, "-n", "2"
    )
    parallel.assert_outcomes(passed=5, failed=1, skipped=2, xfailed=1, xpassed=1, errors=1)
    parallel.stdout.fnmatch_lines(
        [
            "customop: torch *, devices: found by each worker, seed=1234*",
            "created: 2/2 workers",
            "customop report (json) written to *report.json",
            "CONTROLLER IMPORTED TORCH: False",
        ]
    )
    parallel_files = _files(pytester)

    assert _report_lines(parallel) == serial_lines
    assert parallel_files["report.md"] == serial_files["report.md"]
    assert _without_html_durations(parallel_files["report.html"]) == _without_html_durations(serial_files["report.html"])
    assert _without_durations(parallel_files["report.json"]) == _without_durations(serial_files["report.json"])
    document = json.loads(parallel_files["report.json"])
    assert len(document["results"]) == 10 and document["coverage"][0]["untested"] == [f"{ns}::composite", f"{ns}::untested"]
    assert document["warnings"] == []
    assert "customop_outcome" in (pytester.path / "junit.xml").read_text()


def _crash_suite(ns: str) -> str:
    """A module whose first test aborts the process inside the op's forward, then two that pass."""
    return f"""
import os
import pytest, torch
from torch.library import custom_op
from pytest_customop import SampleInput

@custom_op("{ns}::segfault", mutates_args=())
def segfault(x: torch.Tensor) -> torch.Tensor:
    os.abort()  # as a C++ kernel that dereferences a null pointer would

segfault.register_autograd(lambda ctx, grad: grad)

@custom_op("{ns}::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2

double.register_autograd(lambda ctx, grad: grad * 2)

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.ones(2, device=device, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(segfault, samples=samples, dtypes=["float64"], checks=["gradcheck"])
def test_segfault(customop):
    customop.check()

@pytest.mark.customop(double, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck"])
def test_double(customop):
    customop.check()
"""


CRASH_LINE = (
    "  ERROR gradcheck cpu/float64: worker 'gw?' crashed while running 'test_crash.py::test_segfault[[]cpu-float64-gradcheck[]]'"
)
WARNING_LINE = (
    "warning: pytest-xdist worker(s) gw? crashed; the item each was running, and any item left unrun, are reported as errors"
)


def test_a_crashed_worker_leaves_error_rows_a_warning_and_the_report(pytester: pytest.Pytester, ns: str, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # each reason on one line
    pytester.makepyfile(test_crash=_crash_suite(ns))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--customop-seed=5", "-n", "2", "--customop-report", "--customop-report=json:report.json"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            f"{ns}::segfault  (1 error)",
            "  check      cpu/float64",
            "  gradcheck  ERROR",
            CRASH_LINE,
            WARNING_LINE,
            "",
            "customop: 2 passed, 1 error in 3 item(s) over 2 op(s)",
            "customop report (json) written to *report.json",
        ]
    )
    result.stdout.fnmatch_lines(["*PytestWarning: pytest-customop: pytest-xdist worker(s) gw? crashed*"])
    document = json.loads((pytester.path / "report.json").read_text())
    outcomes = {(row["op"], row["dtype"]): row["outcome"] for row in document["results"]}
    assert outcomes == {
        (f"{ns}::double", "float64"): "passed",
        (f"{ns}::double", "float32"): "passed",
        (f"{ns}::segfault", "float64"): "error",
    }
    assert len(document["warnings"]) == 1 and "crashed" in document["warnings"][0]


def test_items_left_unrun_by_a_crash_are_error_rows(pytester: pytest.Pytester, ns: str, monkeypatch) -> None:
    # One worker, not replaced when it crashes on the first item: the other two never run.
    monkeypatch.setenv("COLUMNS", "300")
    pytester.makepyfile(test_crash=_crash_suite(ns))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--customop-seed=5", "-n", "1", "--max-worker-restart=0", "--customop-report"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"{ns}::double  (2 error)",
            "  check      cpu/float64  cpu/float32",
            "  gradcheck  ERROR        ERROR",
            "  ERROR gradcheck cpu/float64: not run: pytest-xdist worker(s) gw0 crashed",
            "*reproduce: pytest 'test_crash.py::test_double[[]cpu-float64-gradcheck[]]' --customop-seed=5",
            "  ERROR gradcheck cpu/float32: not run: pytest-xdist worker(s) gw0 crashed",
            "*reproduce: *",
            "",
            f"{ns}::segfault  (1 error)",
            "  check      cpu/float64",
            "  gradcheck  ERROR",
            CRASH_LINE,
            "*",
            WARNING_LINE,
            "",
            "customop: 3 error in 3 item(s) over 2 op(s)",
        ]
    )
