"""How report files are written: each on its own (one that fails is a warning, the others, junit.xml
and the terminal still come out), through symlinks, in place for a fifo, with control characters and
lone surrogates escaped; and the report targets that are usage errors."""

from __future__ import annotations

import json
import os
import threading

import pytest
from report_suite import double_op


def test_reports_are_written_each_on_its_own_and_safely(pytester: pytest.Pytester, ns: str, run, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")
    pytester.makepyfile(
        double_op(ns)
        + """

@pytest.mark.customop(double, samples=samples, dtypes=["float64"], checks=["gradcheck"])
def test_double(customop):
    customop.check()

@pytest.mark.customop(double, samples=samples, dtypes=["float32"], checks=["gradcheck"])
def test_loud(customop):
    # the folder of one report is replaced by a file while the run goes: that report cannot be written
    import os, shutil
    shutil.rmtree("gone")
    open("gone", "w").close()
    pytest.fail("\\x1b[31mred text\\x1b[0m, a bell\\x07 and a lone surrogate \\udcff")
"""
    )
    (pytester.path / "gone").mkdir()
    (pytester.path / "real").mkdir()
    (pytester.path / "real" / "report.json").write_text("old")
    os.chmod(pytester.path / "real" / "report.json", 0o640)
    (pytester.path / "link.json").symlink_to(pytester.path / "real" / "report.json")
    fifo = pytester.path / "pipe.md"
    os.mkfifo(fifo)
    from_fifo: list[bytes] = []
    reader = threading.Thread(target=lambda: from_fifo.append(fifo.read_bytes()), daemon=True)
    reader.start()

    result = run(
        "--customop-report=json:link.json",
        "--customop-report=md:gone/report.md",
        "--customop-report=html:page.html",
        f"--customop-report=md:{fifo}",
        "--customop-report",
        "--junitxml=junit.xml",
    )
    reader.join(timeout=30)
    if reader.is_alive():  # the fifo was replaced, not written: unblock the reader before failing
        with open(fifo, "wb"):
            pass
        pytest.fail("the fifo report was not written in place")
    result.assert_outcomes(passed=1, failed=1)
    # the failing file: a warning naming it, a red line, and the journal kept to rebuild it
    result.stdout.fnmatch_lines(
        [
            "*PytestWarning: pytest-customop: could not write the md report to */gone/report.md: *",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "customop report (json) written to */link.json",
            "customop report (md) NOT written to */gone/report.md: *",
            "customop journal kept at *real/report.json.journal: rebuild with pytest --customop-report-from-journal=*",
        ]
    )
    # the symlink stays a link, its target has the report and keeps its mode
    assert (pytester.path / "link.json").is_symlink()
    document = json.loads((pytester.path / "real" / "report.json").read_text())
    assert (os.stat(pytester.path / "real" / "report.json").st_mode & 0o777) == 0o640
    loud = next(row for row in document["results"] if "test_loud" in row["nodeid"])
    assert loud["message"] == "\x1b[31mred text\x1b[0m, a bell\x07 and a lone surrogate \udcff"  # JSON keeps the text
    # html, md (through the fifo, which is still a fifo) and terminal: no escape sequence, visible escapes
    page = (pytester.path / "page.html").read_text(encoding="utf-8")
    markdown = from_fifo[0].decode("utf-8")
    assert fifo.exists() and not fifo.is_file()
    for text in (page, markdown):
        assert "\x1b" not in text and "\x07" not in text and "\udcff" not in text
    assert "red text, a bell\\x07 and a lone surrogate \\udcff" in page
    result.stdout.fnmatch_lines([r"  FAILED gradcheck cpu/float32: red text, a bell\x07 and a lone surrogate \udcff"])
    assert (pytester.path / "junit.xml").exists()


def test_report_targets_that_are_usage_errors(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    for args, message in [
        (
            ["--customop-report=json:newdir/"],
            "*--customop-report=json:newdir/: the path ends with a slash, so it names a folder; give a file path such as newdir/report.json*",
        ),
        (
            ["--customop-report=json:r.txt", "--customop-report=md:./r.txt"],
            "*--customop-report=md:./r.txt: */r.txt is also given by --customop-report=json:r.txt; one file holds one report*",
        ),
    ]:
        result = pytester.runpytest("-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([message])
    assert not (pytester.path / "newdir").exists() and not (pytester.path / "r.txt").exists()
    result = pytester.runpytest("-p", "no:cacheprovider", "--customop-report", "--customop-report")  # one table
    assert result.ret == 0
