"""``pytest-customop merge``: one matrix from the JSON reports of several runs (other dtypes, shards, other
machines), as a terminal table, Markdown, HTML and merged JSON; conflicts marked; the published schema."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_customop.report import cli
from pytest_customop.report.merge import InputError, merge_runs, read_inputs
from pytest_customop.report.model import Report, Row

SUITE = """
import os

import pytest
import torch
from torch.library import custom_op

from pytest_customop import SampleInput

FACTOR = float(os.environ.get("SCALE_BACKWARD_FACTOR", "3"))  # 3 is right


@custom_op("{ns}::scale", mutates_args=())
def scale(x: torch.Tensor) -> torch.Tensor:
    return x * 3


scale.register_autograd(lambda ctx, grad: grad * FACTOR)


@custom_op("{ns}::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


double.register_autograd(lambda ctx, grad: grad * 2)


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(4, 3, device=device, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(scale, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck", "gradgradcheck"])
def test_scale(customop):
    customop.check()


@pytest.mark.customop(double, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck", "gradgradcheck"])
def test_double(customop):
    customop.check()
"""


@pytest.fixture
def make_report(pytester: pytest.Pytester, ns: str, run, monkeypatch):
    """Run the suite with extra arguments (and a backward factor) and return the JSON report's path."""
    pytester.makepyfile(test_suite=SUITE.replace("{ns}", ns))

    def make(name: str, *args: str, factor: str = "3") -> Path:
        monkeypatch.setenv("SCALE_BACKWARD_FACTOR", factor)
        run(f"--customop-report=json:{name}", "-p", "no:randomly", *args)
        return pytester.path / name

    return make


def _as_other_machine(path: Path, torch_version: str, device_name: str) -> Path:
    """The report as a CUDA runner with another torch would have written it: its environment changed."""
    document = json.loads(path.read_text())
    document["environment"].update(torch=torch_version, cuda="12.8", devices={"cpu": "Xeon", "cuda:0": device_name})
    document["torch"] = torch_version
    other = path.with_name(f"other-{path.name}")
    other.write_text(json.dumps(document))
    return other


def _cells(matrix) -> dict:
    return {key: cell.outcome for key, cell in matrix.cells.items()}


def test_two_runs_of_different_dtypes_fill_one_matrix(make_report, ns: str, capsys, tmp_path) -> None:
    wide = make_report("wide.json", "-k", "float64")
    narrow = make_report("narrow.json", "-k", "float32")
    matrix = merge_runs(read_inputs([str(wide), str(narrow)]))
    assert matrix.columns_of(f"{ns}::scale") == ["cpu/float64", "cpu/float32"]
    assert matrix.labels == ["A", "A"]  # one machine: one environment
    assert not matrix.conflicts() and not matrix.failures()
    assert set(_cells(matrix).values()) == {"passed"} and len(matrix.cells) == 8

    out = tmp_path / "out"
    status = cli.main(
        [
            "merge",
            str(wide),
            str(narrow),
            "--md",
            str(out / "m.md"),
            "--html",
            str(out / "m.html"),
            "--json",
            str(out / "m.json"),
            "--color=no",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out.splitlines()
    assert "customop report merged from 2 run(s)" in printed
    start = printed.index(f"{ns}::scale")
    assert printed[start + 1 : start + 5] == [
        "  check          cpu/float64  cpu/float32",
        "  (ran in)       A            A",
        "  gradcheck      passed       passed",
        "  gradgradcheck  passed       passed",
    ]
    assert "customop: 8 passed in 8 item(s) over 2 op(s) from 2 run(s)" in printed
    assert f"customop merged report (md) written to {out / 'm.md'}" in printed
    markdown = (out / "m.md").read_text()
    assert "| check | cpu/float64 (A) | cpu/float32 (A) |" in markdown
    assert "| gradcheck | ✅ passed | ✅ passed |" in markdown
    assert f"`{wide}`, `{narrow}`" in markdown
    page = (out / "m.html").read_text()
    assert page.count('class="cell passed"') == 8 and "http" not in page and "<script" not in page
    merged = json.loads((out / "m.json").read_text())
    assert merged["kind"] == "merged" and [r["label"] for r in merged["runs"]] == ["A", "A"]
    assert len(merged["results"]) == 8 and {r["run"] for r in merged["results"]} == {0, 1}
    # A merged document is an input too: merging it again gives the same matrix.
    again = merge_runs(read_inputs([str(out / "m.json")]))
    assert _cells(again) == _cells(matrix) and again.labels == matrix.labels


def test_the_same_cells_from_two_machines_show_both_and_mark_the_conflict(make_report, ns: str, capsys, tmp_path) -> None:
    good = make_report("good.json")
    bad = _as_other_machine(make_report("bad.json", factor="2"), "2.15.0+cu128", "NVIDIA H200")
    matrix = merge_runs(read_inputs([str(good), str(bad)]))
    assert matrix.labels == ["A", "B"]
    conflicts = {(op, check, column): cell.outcome_by_label() for op, check, column, cell in matrix.conflicts()}
    # wrong at every dtype: float32's reference is proven against finite differences too, so both disagree
    assert conflicts == {
        (f"{ns}::scale", "gradcheck", column): {"A": "passed", "B": "failed"} for column in ("cpu/float64", "cpu/float32")
    }
    # the wrong backward is linear: its double backward agrees, no conflict there
    assert not matrix.cell(f"{ns}::scale", "gradgradcheck", "cpu/float64").conflict

    status = cli.main(
        [
            "merge",
            str(good),
            str(bad),
            "--color=no",
            "--md",
            str(tmp_path / "c.md"),
            "--json",
            str(tmp_path / "c.json"),
            "--html",
            str(tmp_path / "c.html"),
        ]
    )
    assert status == 1  # a failure and conflicts
    printed = capsys.readouterr().out
    assert "  A  cpu: " in printed and "B  cpu: Xeon; cuda:0: NVIDIA H200; torch 2.15.0+cu128 (CUDA 12.8)" in printed
    assert "  gradcheck      CONFLICT passed@A FAILED@B  CONFLICT passed@A FAILED@B" in printed
    assert "  gradgradcheck  passed@A passed@B" in printed
    assert "  FAILED gradcheck cpu/float64 [B]: sample 0: gradient of input 'x'" in printed
    assert f"{ns}::scale gradcheck cpu/float64: passed in A, failed in B" in printed
    assert "customop: 14 passed, 2 failed in 16 item(s) over 2 op(s) from 2 run(s), 2 conflict(s)" in printed
    markdown = (tmp_path / "c.md").read_text()
    assert "| gradcheck | **CONFLICT ✅ passed@A ❌ \\*\\*FAILED\\*\\*@B** |" in markdown
    assert f"- `{ns}::scale` gradcheck cpu/float64: passed in A, failed in B" in markdown
    document = json.loads((tmp_path / "c.json").read_text())
    assert document["conflicts"][0] == {
        "op": f"{ns}::scale",
        "check": "gradcheck",
        "device": "cpu",
        "dtype": "float64",
        "outcomes": {"A": "passed", "B": "failed"},
    }
    assert document["runs"][1]["environment"]["devices"]["cuda:0"] == "NVIDIA H200"
    page = (tmp_path / "c.html").read_text()
    assert page.count('class="cell failed conflict"') == 2
    assert "(conflict: the runs disagree)" in page and "torch 2.15.0+cu128 (CUDA 12.8)" in page


def test_shards_of_one_suite_merge_into_the_full_runs_matrix(make_report, ns: str, capsys) -> None:
    full = make_report("full.json")
    first = make_report("shard1.json", "-k", "scale")
    second = make_report("shard2.json", "-k", "double")
    merged = merge_runs(read_inputs([str(first), str(second)]))
    alone = merge_runs(read_inputs([str(full)]))
    assert _cells(merged) == _cells(alone) and len(merged.cells) == 8
    assert all(len(cell.entries) == 1 for cell in merged.cells.values())  # disjoint shards: one result a cell
    assert not merged.conflicts()
    assert cli.main(["merge", str(first), str(second), "--color=no"]) == 0
    assert "customop: 8 passed in 8 item(s) over 2 op(s) from 2 run(s)" in capsys.readouterr().out


def test_the_same_cell_twice_in_one_environment_is_shown_as_both(make_report, ns: str) -> None:
    good = make_report("good.json", "-k", "scale and float64 and gradcheck and not gradgrad")
    bad = make_report("bad.json", "-k", "scale and float64 and gradcheck and not gradgrad", factor="2")
    matrix = merge_runs(read_inputs([str(good), str(bad)]))
    cell = matrix.cell(f"{ns}::scale", "gradcheck", "cpu/float64")
    assert cell.conflict and cell.outcome_by_run() == [("A", "passed"), ("A", "failed")]
    from pytest_customop.report.matrix_views import cell_text

    assert cell_text(cell) == "CONFLICT passed@A FAILED@A"


def test_bad_inputs_are_named(tmp_path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "future.json").write_text(json.dumps({"version": 99, "results": []}))
    (tmp_path / "other.json").write_text(json.dumps({"tests": []}))
    for name, message in (
        ("notes.txt", "notes.txt: not an input pytest-customop reads (known: journal, json report)"),
        ("future.json", "future.json: report version 99; this pytest-customop reads versions 1 to 2"),
        ("other.json", "other.json: not a pytest-customop JSON report"),
        ("missing.json", "missing.json: cannot read"),
    ):
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_inputs([str(tmp_path / name)])
        assert cli.main(["merge", str(tmp_path / name)]) == 2
        assert message.split(":", 1)[1].strip()[:20] in capsys.readouterr().err


def test_version_1_reports_are_read(tmp_path) -> None:
    document = {
        "version": 1,
        "torch": "2.4.0",
        "seed": 7,
        "devices": ["cpu"],
        "coverage": [],
        "warnings": [],
        "results": [
            {
                "op": "a::b",
                "check": "gradcheck",
                "device": "cpu",
                "dtype": "float64",
                "outcome": "passed",
                "message": "",
                "duration_s": 0.1,
                "nodeid": "t.py::t",
                "samples": None,
            }
        ],
    }
    (tmp_path / "old.json").write_text(json.dumps(document))
    (run,) = read_inputs([str(tmp_path / "old.json")])
    assert run.environment == {"torch": "2.4.0"} and run.seed == 7 and run.rows[0].outcome == "passed"


def test_the_published_schema_describes_what_is_written() -> None:
    schema = json.loads(cli.schema_text())
    result_fields = set(Row("a::b", "c", "cpu", "float64", "passed", "", 0.0, "t").to_json())
    assert result_fields == set(schema["$defs"]["result"]["properties"]) - {"run"}
    report_fields = set(Report(torch="2", seed=1, devices=["cpu"]).to_json())
    assert report_fields == set(schema["$defs"]["run_report"]["properties"])
    assert set(schema["$defs"]["run_report"]["required"]) <= report_fields
    from pytest_customop.report.merge import Matrix

    merged_fields = set(Matrix([], [], {}, [], [], []).to_json())
    assert merged_fields == set(schema["$defs"]["merged_report"]["properties"])


def test_the_console_script_is_installed(tmp_path) -> None:
    completed = subprocess.run([sys.executable, "-m", "pytest_customop.report.cli", "schema"], capture_output=True, text=True)
    assert completed.returncode == 0 and json.loads(completed.stdout)["title"] == "pytest-customop report"
    script = shutil.which("pytest-customop", path=os.path.dirname(sys.executable)) or shutil.which("pytest-customop")
    if script is None:
        pytest.skip("the pytest-customop console script is not installed (pip install -e . installs it)")
    completed = subprocess.run([script, "merge", "--help"], capture_output=True, text=True)
    assert completed.returncode == 0 and "--html PATH" in completed.stdout
