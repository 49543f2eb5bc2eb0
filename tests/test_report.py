"""``--customop-report``: the verification matrix in the terminal, as JSON, Markdown and HTML files, in
junitxml, with coverage of the namespaces under test, and its usage errors."""

from __future__ import annotations

import json
import os
import re
import textwrap
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from report_suite import double_op, suite

REPORT_FIELDS = {
    "op",
    "check",
    "device",
    "dtype",
    "outcome",
    "message",
    "duration_s",
    "nodeid",
    "samples",
    "ran_on",
    "device_name",
    "details",
    "heatmap",
}


@pytest.fixture
def suite_run(pytester: pytest.Pytester, ns: str, run):
    """Write the every-outcome suite and run it with the given extra arguments."""
    pytester.makepyfile(test_suite=suite(ns))

    def run_suite(*args: str) -> pytest.RunResult:
        return run(*args)

    return run_suite


def test_terminal_table_per_op_with_reasons_and_totals(suite_run, ns: str, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # wide enough for each reason on one line
    result = suite_run("--customop-report", "-n", "0")
    result.assert_outcomes(passed=5, failed=1, skipped=2, xfailed=1, xpassed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*= customop report =*",
            "torch *, devices: cpu*, seed: 1234",
            "",
            f"{ns}::bad  (1 failed, 2 skipped, 1 xpassed)",
            "  check          cpu/float64  cpu/float32",
            "  gradcheck      FAILED       skipped",
            "  gradgradcheck  XPASS        skipped",
            "  FAILED gradcheck cpu/float64: sample 0: gradient of input 'x': 3 of 3 element(s) differ; worst at *",
            "    reproduce: pytest 'test_suite.py::test_bad[[]cpu-float64-gradcheck[]]' --customop-seed=1234",
            "",
            f"{ns}::good  (4 passed)",
            "  check          cpu/float64  cpu/float32",
            "  gradcheck      passed       passed",
            "  gradgradcheck  passed       passed",
            "",
            f"{ns}::missing  (1 error)",
            f"  ERROR test_suite.py::test_missing: customop marker argument 'op': got '{ns}::missing'; no op *",
            "    reproduce: pytest test_suite.py::test_missing --customop-seed=1234",
            "",
            f"{ns}::worse  (1 xfailed)",
            "  check      cpu/float64",
            "  gradcheck  xfail",
            "",
            f"coverage of namespace {ns}: 5 op(s) registered",
            f"  not tested: {ns}::composite, {ns}::untested",
            f"  no autograd formula: {ns}::untested",
            "",
            "customop: 4 passed, 1 failed, 2 skipped, 1 xfailed, 1 xpassed, 1 error in 10 item(s) over 4 op(s)",
        ]
    )
    # the header of the run names torch, the devices and the seed too
    result.stdout.fnmatch_lines(["customop: torch *, devices: cpu*, seed=1234 (--customop-seed=1234 repeats this run)"])


def test_no_report_without_the_option(suite_run) -> None:
    result = suite_run()
    result.assert_outcomes(passed=5, failed=1, skipped=2, xfailed=1, xpassed=1, errors=1)
    result.stdout.no_fnmatch_line("*customop report*")


def test_terminal_table_folds_columns_to_the_terminal_width(pytester: pytest.Pytester, ns: str, run, monkeypatch) -> None:
    pytester.makepyfile(
        double_op(ns)
        + textwrap.dedent("""

        DTYPES = ["float64", "float32", "complex128", "complex64", "float16", "bfloat16"]

        @pytest.mark.customop(double, samples=samples, dtypes=DTYPES, checks=["gradcheck"])
        def test_double(customop):
            pytest.skip("the layout is under test, not the op")
        """)
    )
    monkeypatch.setenv("COLUMNS", "60")
    result = run("--customop-report")
    result.assert_outcomes(skipped=6)
    lines = result.stdout.lines
    start = lines.index(f"{ns}::double  (6 skipped)")
    table = lines[start + 1 : lines.index("", start)]
    assert table == [
        "  check      cpu/float64  cpu/float32  cpu/float16",
        "  gradcheck  skipped      skipped      skipped",
        "  check      cpu/bfloat16  cpu/complex128  cpu/complex64",
        "  gradcheck  skipped       skipped         skipped",
    ]
    assert all(len(line) <= 60 for line in table)


def test_check_rows_follow_the_items_order_not_the_alphabet(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makepyfile(
        double_op(ns)
        + textwrap.dedent("""

        @pytest.mark.customop(double, samples=samples, dtypes=["float64"], devices=["cpu"],
                              checks=["edge_shapes", "gradcheck", "grad_keys", "batched_grad"])
        def test_double(customop):
            pytest.skip("the order is under test, not the op")
        """)
    )
    result = run("--customop-report", "--customop-report=json:report.json")
    lines = result.stdout.lines
    start = lines.index(f"{ns}::double  (4 skipped)")
    labels = [line.split()[0] for line in lines[start + 2 : lines.index("", start)]]
    # the items' order: the marker's checks= here, the checks' registration order without it
    assert labels == ["edge_shapes", "gradcheck", "grad_keys", "batched_grad"]
    rows = json.loads((pytester.path / "report.json").read_text())["results"]
    assert [row["check"] for row in rows] == labels


def test_terminal_table_is_coloured_under_color_yes(suite_run) -> None:
    result = suite_run("--customop-report", "--color=yes")
    # pytest's terminal writer: red and bold for FAILED, green for passed
    lines = result.stdout.lines
    assert "  gradcheck      \x1b[31m\x1b[1mFAILED\x1b[0m       \x1b[33mskipped\x1b[0m" in lines
    assert "  gradcheck      \x1b[32mpassed\x1b[0m       \x1b[32mpassed\x1b[0m" in lines


def test_json_file(suite_run, pytester: pytest.Pytester, ns: str) -> None:
    result = suite_run("--customop-report=json:out/report.json")
    result.stdout.fnmatch_lines([f"customop report (json) written to {pytester.path / 'out' / 'report.json'}"])
    document = json.loads((pytester.path / "out" / "report.json").read_text())
    assert document["version"] == 2 and document["kind"] == "run"
    assert document["environment"]["torch"] == document["torch"] and "cpu" in document["environment"]["devices"]
    assert document["seed"] == 1234
    assert "cpu" in document["devices"]
    assert document["torch"].split("+")[0].count(".") == 2
    rows = document["results"]
    assert all(set(row) == REPORT_FIELDS for row in rows)
    assert all(isinstance(row["duration_s"], float) for row in rows)
    by_node = {row["nodeid"]: row for row in rows}
    assert "test_suite.py::test_plain" not in by_node  # not a customop item
    failed = by_node["test_suite.py::test_bad[cpu-float64-gradcheck]"]
    assert (failed["op"], failed["check"], failed["device"], failed["dtype"], failed["outcome"]) == (
        f"{ns}::bad",
        "gradcheck",
        "cpu",
        "float64",
        "failed",
    )
    assert failed["message"].startswith("sample 0: gradient of input 'x': 3 of 3 element(s) differ")
    assert failed["samples"] == {"checked": 1, "total": 1}
    outcomes = {nodeid.split("::")[1]: row["outcome"] for nodeid, row in by_node.items()}
    assert outcomes == {
        "test_good[cpu-float64-gradcheck]": "passed",
        "test_good[cpu-float64-gradgradcheck]": "passed",
        "test_good[cpu-float32-gradcheck]": "passed",
        "test_good[cpu-float32-gradgradcheck]": "passed",
        "test_bad[cpu-float64-gradcheck]": "failed",
        "test_bad[cpu-float64-gradgradcheck]": "xpassed",
        "test_bad[cpu-float32-gradcheck]": "skipped",
        "test_bad[cpu-float32-gradgradcheck]": "skipped",
        "test_worse[cpu-float64-gradcheck]": "xfailed",
        "test_missing": "error",
    }
    assert by_node["test_suite.py::test_bad[cpu-float32-gradcheck]"]["message"] == "no float32 kernel <yet>"
    assert by_node["test_suite.py::test_worse[cpu-float64-gradcheck]"]["message"] == "known wrong backward"
    marker_error = by_node["test_suite.py::test_missing"]
    assert marker_error["op"] == f"{ns}::missing" and marker_error["check"] is None
    assert f"no op '{ns}::missing' is registered" in marker_error["message"]
    assert document["coverage"] == [
        {
            "namespace": ns,
            "ops": [f"{ns}::bad", f"{ns}::composite", f"{ns}::good", f"{ns}::untested", f"{ns}::worse"],
            "untested": [f"{ns}::composite", f"{ns}::untested"],
            "no_autograd": [f"{ns}::untested"],
        }
    ]
    assert document["warnings"] == []
    leftovers = [p.name for p in (pytester.path / "out").iterdir() if p.name != "report.json"]
    assert leftovers == []  # the temporary file of the atomic write is gone


def test_markdown_file(suite_run, pytester: pytest.Pytester, ns: str) -> None:
    suite_run("--customop-report=md:report.md")
    text = (pytester.path / "report.md").read_text()
    lines = text.splitlines()
    start = lines.index(f"### `{ns}::bad`")
    assert lines[start + 2 : start + 6] == [
        "| check | cpu/float64 | cpu/float32 |",
        "|---|---|---|",
        "| gradcheck | ❌ **FAILED** | ⏭️ skipped |",
        "| gradgradcheck | ⚠️ **XPASS** | ⏭️ skipped |",
    ]
    assert "- **FAILED** gradcheck cpu/float64: sample 0: gradient of input 'x'" in text
    assert "  reproduce: `pytest 'test_suite.py::test_bad[cpu-float64-gradcheck]' --customop-seed=1234`" in text
    assert f"not tested: `{ns}::composite`, `{ns}::untested`; no autograd formula: `{ns}::untested`" in text
    assert "**4 passed, 1 failed, 2 skipped, 1 xfailed, 1 xpassed, 1 error in 10 item\\(s\\) over 4 op\\(s\\)**" in text


class _HTMLTable(HTMLParser):
    """Collects the text of every table cell and every element's tag."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.tags: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


def test_html_file_is_self_contained_and_escaped(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makepyfile(
        double_op(ns)
        + textwrap.dedent("""

        @pytest.mark.customop(double, samples=samples, dtypes=["float64"], checks=["gradcheck"])
        def test_double(customop):
            customop.check()
            raise ValueError("<script>alert('x')</script> & more")
        """)
    )
    result = run("--customop-report=html:report.html")
    result.assert_outcomes(failed=1)
    text = (pytester.path / "report.html").read_text()
    assert "<script>" not in text and "http" not in text  # escaped, and nothing loaded from elsewhere
    assert "ValueError: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in text
    parser = _HTMLTable()
    parser.feed(text)
    assert "script" not in parser.tags
    matrix = parser.cells[parser.cells.index("check") :]  # after the environments table
    assert len(matrix) == 4 and (matrix[0], matrix[2]) == ("check", "gradcheck")
    assert matrix[1].startswith("cpu/float64A: cpu") and re.fullmatch(r"FAILED(<1 ms|\d+ ms|[\d.]+ s)", matrix[3])


def test_junitxml_properties(suite_run, pytester: pytest.Pytester, ns: str) -> None:
    suite_run("--junitxml=junit.xml")
    tree = ET.parse(pytester.path / "junit.xml")
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")} for case in tree.iter("testcase")
    }
    assert properties["test_bad[cpu-float64-gradcheck]"] == {
        "customop_op": f"{ns}::bad",
        "customop_check": "gradcheck",
        "customop_device": "cpu",
        "customop_dtype": "float64",
        "customop_outcome": "failed",
        "customop_message": properties["test_bad[cpu-float64-gradcheck]"]["customop_message"],
        "customop_samples": "1/1",
    }
    assert properties["test_bad[cpu-float64-gradcheck]"]["customop_message"].startswith("sample 0: gradient of input 'x'")
    assert properties["test_good[cpu-float32-gradgradcheck]"]["customop_outcome"] == "passed"
    assert properties["test_worse[cpu-float64-gradcheck]"]["customop_outcome"] == "xfailed"
    assert properties["test_bad[cpu-float32-gradcheck]"]["customop_outcome"] == "skipped"
    assert properties["test_missing"]["customop_outcome"] == "error"
    assert properties["test_plain"] == {}


@pytest.mark.parametrize(
    "value, message",
    [
        ("yaml:report.yaml", "*--customop-report=yaml:report.yaml: expected FORMAT:PATH with FORMAT one of json, md, html"),
        ("json:", "*--customop-report=json:: no path after json:"),
        ("json:a_directory", "*--customop-report=json:a_directory: */a_directory is a directory; give a file path"),
        ("html:a_file/report.html", "*--customop-report=html:a_file/report.html: */a_file is not a directory"),
        ("report.json", "*expected FORMAT:PATH*the bare flag takes no value*"),
    ],
)
def test_bad_report_values_are_usage_errors_before_any_test_runs(
    pytester: pytest.Pytester, run, value: str, message: str
) -> None:
    (pytester.path / "a_directory").mkdir()
    (pytester.path / "a_file").write_text("")
    pytester.makepyfile("def test_records(): open('ran', 'w').close()")
    result = run(f"--customop-report={value}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-customop: {message}"])
    assert not (pytester.path / "ran").exists()


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True, reason="root writes anywhere")
def test_unwritable_directory_is_a_usage_error(pytester: pytest.Pytester, run) -> None:
    locked = pytester.path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    pytester.makepyfile("def test_records(): pass")
    result = run("--customop-report=json:locked/report.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*cannot write in directory */locked"])
