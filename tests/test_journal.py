"""The journal (a run that loses nothing): every collected item is in the report, also after ``-x``,
Ctrl-C or a process that dies; the report of a run that never finished is rebuilt from its journal;
``--collect-only`` and ``--customop-list`` leave earlier reports alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from report_suite import double_op

DTYPES = '["float64", "float32"]'
CHECKS = '["gradcheck", "gradgradcheck"]'


def _results(path) -> dict[str, dict]:
    return {row["nodeid"].split("[")[-1].rstrip("]"): row for row in json.loads(path.read_text())["results"]}


def test_stopped_by_x_and_interrupted_runs_list_every_collected_item(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makepyfile(
        double_op(ns)
        + f"""

@pytest.mark.customop(double, samples=samples, dtypes={DTYPES}, checks={CHECKS})
def test_double(customop, customop_dtype, request):
    if request.config.getoption("-x") and customop_dtype == torch.float64 and customop.check_name == "gradgradcheck":
        pytest.fail("the failure -x stops at")
    if not request.config.getoption("-x") and customop_dtype == torch.float32:
        raise KeyboardInterrupt
    customop.check()

def test_other():  # not a customop item: not in the report
    pass
"""
    )
    # -x: the run stops at the second item; the other two are in the report, not run
    result = run("-x", "--customop-report=json:stopped.json", "-k", "double")
    result.assert_outcomes(passed=1, failed=1, deselected=1)
    rows = _results(pytester.path / "stopped.json")
    assert sorted(rows) == sorted(f"cpu-{d}-{c}" for d in ("float64", "float32") for c in ("gradcheck", "gradgradcheck"))
    assert rows["cpu-float64-gradcheck"]["outcome"] == "passed"
    assert rows["cpu-float64-gradgradcheck"]["outcome"] == "failed"
    for name in ("cpu-float32-gradcheck", "cpu-float32-gradgradcheck"):
        assert rows[name]["outcome"] == "skipped"
        assert rows[name]["message"].startswith("not run: stopped early (stopping after 1 failures")
    warnings = json.loads((pytester.path / "stopped.json").read_text())["warnings"]
    assert any("2 of 4 item(s) not run" in w for w in warnings), warnings
    assert not (pytester.path / "stopped.json.journal").exists()  # every report written: the journal is gone

    # Ctrl-C in the third item: the report says the run was interrupted, and which items did not run
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "--customop-report=json:interrupted.json",
        "--customop-report=md:interrupted.md",
        no_reraise_ctrlc=True,
    )
    assert result.ret == pytest.ExitCode.INTERRUPTED
    rows = _results(pytester.path / "interrupted.json")
    assert len(rows) == 4
    assert [rows[f"cpu-float64-{c}"]["outcome"] for c in ("gradcheck", "gradgradcheck")] == ["passed", "passed"]
    assert rows["cpu-float32-gradcheck"]["message"] == "not run to the end: interrupted (KeyboardInterrupt)"
    assert rows["cpu-float32-gradgradcheck"]["message"] == "not run: interrupted (KeyboardInterrupt)"
    assert (
        r"the run was interrupted \(KeyboardInterrupt\): 2 of 4 item\(s\) not run"
        in (pytester.path / "interrupted.md").read_text()
    )

    # --collect-only and --customop-list leave the earlier reports alone
    before = (pytester.path / "stopped.json").read_text()
    for args in (["--collect-only"], ["--customop-list"]):
        result = run(*args, "--customop-report=json:stopped.json")
        assert result.ret == 0
        assert (pytester.path / "stopped.json").read_text() == before
        assert not (pytester.path / "stopped.json.journal").exists()


def test_a_process_that_dies_leaves_a_journal_the_report_is_rebuilt_from(pytester: pytest.Pytester, ns: str) -> None:
    pytester.makepyfile(
        double_op(ns)
        + f"""
import os

@pytest.mark.customop(double, samples=samples, dtypes={DTYPES}, checks={CHECKS})
def test_double(customop, customop_dtype):
    if customop_dtype == torch.float32:
        os.abort()  # as a C++ kernel's segfault: no Python code runs after it
    customop.check()
"""
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--customop-seed=1234", "--customop-report=json:out/report.json"
    )
    assert result.ret != 0
    assert not (pytester.path / "out" / "report.json").exists()
    journal = pytester.path / "out" / "report.json.journal"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert lines[0]["kind"] == "run" and lines[0]["seed"] == 1234
    assert [line["outcome"] for line in lines if line["kind"] == "result"] == ["passed", "passed"]

    rebuilt = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--customop-report-from-journal={journal}",
        "--customop-report=json:rebuilt.json",
        "--customop-report",
    )
    assert rebuilt.ret == 0, rebuilt.stdout.str()
    rebuilt.stdout.fnmatch_lines(
        ["customop report (json) written to *rebuilt.json", "*2 passed, 1 skipped, 1 error in 4 item(s)*"]
    )
    document = json.loads((pytester.path / "rebuilt.json").read_text())
    rows = _results(pytester.path / "rebuilt.json")
    assert rows["cpu-float32-gradcheck"]["outcome"] == "error"
    assert rows["cpu-float32-gradcheck"]["message"].startswith("crashed: the process ended while this item ran")
    assert rows["cpu-float32-gradgradcheck"] == {
        **rows["cpu-float32-gradgradcheck"],
        "outcome": "skipped",
        "message": "not run: the run never finished",
    }
    assert document["seed"] == 1234 and "cpu" in document["devices"]
    assert any("the run never finished" in w and str(journal) in w for w in document["warnings"])

    # `pytest-customop merge` reads the journal of the dead run as one run beside a finished one
    from pytest_customop.report.merge import merge_runs, read_inputs

    runs = read_inputs([str(journal), str(pytester.path / "rebuilt.json")])
    assert [run.kind for run in runs] == ["journal", "report"]
    matrix = merge_runs(runs)
    cell = matrix.cell(f"{ns}::double", "gradcheck", "cpu/float32")
    assert cell is not None and cell.outcome == "error" and not cell.conflict

    # a file that is no journal is a usage error naming it
    (pytester.path / "not_a_journal.txt").write_text("hello\n")
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--customop-report-from-journal=not_a_journal.txt")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--customop-report-from-journal=not_a_journal.txt: *not_a_journal.txt*not a*journal*"])


def test_under_xdist_the_controller_journals_and_every_item_is_reported(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makepyfile(
        double_op(ns)
        + f"""

@pytest.mark.customop(double, samples=samples, dtypes={DTYPES}, checks={CHECKS})
def test_double(customop, customop_dtype):
    if customop_dtype == torch.float64 and customop.check_name == "gradcheck":
        pytest.fail("the failure -x stops at")
    customop.check()
"""
    )
    result = run("-n", "2", "-x", "--customop-report=json:report.json")
    assert result.ret != 0
    rows = _results(pytester.path / "report.json")
    assert len(rows) == 4  # the failure, what ran before -x stopped the workers, and the rest as not run
    assert rows["cpu-float64-gradcheck"]["outcome"] == "failed"
    not_run = [row for row in rows.values() if row["message"].startswith("not run")]
    assert all(row["outcome"] == "skipped" and "stopping after 1 failures" in row["message"] for row in not_run), rows
    assert not (pytester.path / "report.json.journal").exists()


def test_a_journal_cut_short_mid_line_is_read_up_to_its_last_whole_line(tmp_path) -> None:
    from pytest_customop.report.journal import Journal, JournalError, is_journal, parse_journal, report_from_journal_text

    path = str(tmp_path / "report.json.journal")
    journal = Journal(path, {"seed": 5, "torch": "2.13.0"})
    meta = {"op": "ns::norm", "check": "gradcheck", "device": "cpu", "dtype": "float64"}
    journal.record("items", items={"t.py::a[x]": meta, "t.py::b[x]": meta})
    journal.record("start", nodeid="t.py::a[x]")
    journal.record("result", nodeid="t.py::a[x]", **meta, outcome="passed", message="", duration_s=0.5, samples=None)
    journal.record("start", nodeid="t.py::b[x]")
    journal.close(remove=False)
    text = Path(path).read_text() + '{"kind": "result", "nodeid": "t.py::b'  # the process died writing this line
    assert is_journal(text[:4096]) and not is_journal('{"version": 1, "results": []}')
    report = report_from_journal_text(path, text)
    assert [(r.nodeid, r.outcome) for r in report.rows] == [("t.py::a[x]", "passed"), ("t.py::b[x]", "error")]
    assert report.seed == 5 and report.torch == "2.13.0"
    with pytest.raises(JournalError, match=r"report.json.journal:2: not a JSON line"):
        parse_journal(text.replace('"kind": "items"', "oops", 1), path)
