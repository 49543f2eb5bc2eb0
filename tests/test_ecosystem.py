"""The plugin beside the plugins and options people run: pytest-rerunfailures, pytest-randomly, --lf /
--ff / --sw, -W error, pytest-timeout; and a reproduce line pasted where pytest was run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from report_suite import suite

ROOT = Path(__file__).resolve().parent.parent

# `flaky`'s backward is wrong on its first call in the process only; `wrong`'s always (2 for 3x's
# derivative); `good` is right; `slow` sleeps 30 s.
OPS = """
import time

import pytest
import torch
from pytest_customop import SampleInput

NS = "{ns}"
backward_calls = [0]


def _flaky_backward(ctx, grad):
    backward_calls[0] += 1
    return grad * (2.5 if backward_calls[0] == 1 else 2.0)


@torch.library.custom_op(f"{{NS}}::flaky", mutates_args=())
def flaky(x: torch.Tensor) -> torch.Tensor:
    return x * 2


flaky.register_autograd(_flaky_backward)


@torch.library.custom_op(f"{{NS}}::wrong", mutates_args=())
def wrong(x: torch.Tensor) -> torch.Tensor:
    return x * 3


wrong.register_autograd(lambda ctx, grad: grad * 2)


@torch.library.custom_op(f"{{NS}}::good", mutates_args=())
def good(x: torch.Tensor) -> torch.Tensor:
    return x * 4


good.register_autograd(lambda ctx, grad: grad * 4)


@torch.library.custom_op(f"{{NS}}::slow", mutates_args=())
def slow(x: torch.Tensor) -> torch.Tensor:
    time.sleep(30)
    return x.clone()


slow.register_autograd(lambda ctx, grad: grad)


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, device=device, dtype=dtype, requires_grad=requires_grad))
"""


def marked(op: str, checks: str = '["gradcheck"]', dtypes: str = '["float64"]') -> str:
    return (
        f"\n\n@pytest.mark.customop({op}, samples=samples, dtypes={dtypes}, devices=['cpu'], checks={checks})\n"
        f"def test_{op}(customop):\n    customop.check()\n"
    )


def json_rows(path: Path) -> dict[str, tuple[str, str]]:
    """nodeid -> (outcome, message) of a json report."""
    return {row["nodeid"]: (row["outcome"], row["message"]) for row in json.loads(path.read_text())["results"]}


def by_test(rows: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    return {nodeid.split("::")[1].split("[")[0]: value for nodeid, value in rows.items()}


# -- pytest-rerunfailures --------------------------------------------------------------------------
def test_rerunfailures_reruns_are_reruns_and_the_final_outcome_counts(pytester, ns, run):
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(test_ops=OPS.format(ns=ns) + marked("flaky") + marked("wrong") + marked("good"))
    result = run("--reruns=1", "--customop-report=json:report.json", "--customop-report")
    outcomes = result.parseoutcomes()
    assert (outcomes["passed"], outcomes["failed"], outcomes["rerun"]) == (2, 1, 2), outcomes
    rows = by_test(json_rows(pytester.path / "report.json"))
    assert rows["test_flaky"][0] == "passed" and "passed after 1 rerun(s)" in rows["test_flaky"][1]
    assert rows["test_wrong"][0] == "failed", rows["test_wrong"]  # not "error": the last attempt's call failed
    assert rows["test_wrong"][1].startswith("failed after 1 rerun(s); ")
    assert rows["test_good"] == ("passed", "")
    result.stdout.fnmatch_lines(["customop: 2 passed, 1 failed in 3 item(s) over 3 op(s)"])


def test_rerunfailures_under_xdist_gives_the_same_rows(pytester, ns):
    pytest.importorskip("pytest_rerunfailures")
    pytest.importorskip("xdist")
    pytester.makepyfile(test_ops=OPS.format(ns=ns) + marked("flaky") + marked("wrong"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--reruns=1", "-n", "2", "--customop-report=json:report.json"
    )
    rows = by_test(json_rows(pytester.path / "report.json"))
    assert rows["test_flaky"][0] == "passed" and "after 1 rerun(s)" in rows["test_flaky"][1], result.stdout.str()
    assert rows["test_wrong"][0] == "failed"


# -- pytest-randomly -------------------------------------------------------------------------------
def _report_lines(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "= customop report =" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("customop: ") and i > start)
    return lines[start + 1 : end + 1]


def test_randomly_shuffles_the_run_but_not_the_report(pytester, ns, monkeypatch):
    pytest.importorskip("pytest_randomly")
    monkeypatch.setenv("COLUMNS", "120")
    pytester.makepyfile(test_suite=suite(ns))
    runs = []
    for seed in (1, 2):
        result = pytester.runpytest_subprocess(
            "-p",
            "no:cacheprovider",
            "-p",
            "randomly",
            f"--randomly-seed={seed}",
            "-v",
            "--customop-seed=1234",
            "--customop-report",
            f"--customop-report=json:report{seed}.json",
        )
        result.stdout.fnmatch_lines([f"Using --randomly-seed={seed}"])
        order = [line.split(" ")[0] for line in result.outlines if line.startswith("test_suite.py::")]
        runs.append((order, _report_lines(result), json.loads((pytester.path / f"report{seed}.json").read_text())))
    (order1, lines1, doc1), (order2, lines2, doc2) = runs
    assert sorted(order1) == sorted(order2) and order1 != order2  # randomly did shuffle
    assert lines1 == lines2
    strip = lambda doc: [{k: v for k, v in row.items() if k != "duration_s"} for row in doc["results"]]
    assert strip(doc1) == strip(doc2)


# -- --lf, --ff, --sw ------------------------------------------------------------------------------
DISCOVERED = """
import torch

@torch.library.custom_op("{ns}_lib::cube", mutates_args=())
def cube(x: torch.Tensor) -> torch.Tensor:
    return x * x * x

cube.register_autograd(lambda ctx, g: g * 3 * ctx.saved_tensors[0],  # wrong: 3 * x, not 3 * x**2
                       setup_context=lambda ctx, inputs, output: ctx.save_for_backward(inputs[0]))

@torch.library.custom_op("{ns}_lib::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2

double.register_autograd(lambda ctx, g: g * 2)
"""


@pytest.fixture
def lf_project(pytester, ns):
    """Marked items (one failing) and --customop-namespace items (one failing), with the cache on."""
    pytester.makeconftest(f"import lib_{ns}\n")
    pytester.makepyfile(**{f"lib_{ns}": DISCOVERED.format(ns=ns)})
    pytester.makepyfile(test_ops=OPS.format(ns=ns) + marked("wrong") + marked("good"))
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    return ["--customop-seed=1234", f"--customop-namespace={ns}_lib", "--customop-checks=gradcheck", "-v"]


def _ran(result: pytest.RunResult) -> list[str]:
    return [line.split(" ")[0] for line in result.outlines if " PASSED" in line or " FAILED" in line]


def test_last_failed_reruns_only_the_failed_marked_and_discovered_items(pytester, ns, lf_project):
    first = pytester.runpytest(*lf_project)
    outcomes = first.parseoutcomes()
    assert outcomes["passed"] >= 4, outcomes  # good, double at two dtypes, plain
    failed = sorted(line.split(" ")[0] for line in first.outlines if " FAILED" in line)
    assert f"customop::{ns}_lib::cube[cpu-float64-gradcheck]" in failed  # discovered
    assert "test_ops.py::test_wrong[cpu-float64-gradcheck]" in failed  # marked
    assert len(failed) == outcomes["failed"]
    again = pytester.runpytest(*lf_project, "--lf")
    again.assert_outcomes(failed=len(failed))
    assert sorted(_ran(again)) == failed
    again.stdout.fnmatch_lines([f"run-last-failure: rerun previous {len(failed)} failures*"])
    first_failed = pytester.runpytest(*lf_project, "--ff")
    first_failed.assert_outcomes(passed=outcomes["passed"], failed=len(failed))
    assert sorted(_ran(first_failed)[: len(failed)]) == failed  # the failures first, then the rest


def test_stepwise_stops_at_and_resumes_from_a_failed_customop_item(pytester, ns, lf_project):
    first = pytester.runpytest(*lf_project, "--sw")
    assert first.parseoutcomes()["failed"] == 1
    stopped_at = next(line.split(" ")[0] for line in first.outlines if " FAILED" in line)
    resumed = pytester.runpytest(*lf_project, "--sw")
    assert _ran(resumed)[0] == stopped_at  # resumes where it stopped
    assert resumed.parseoutcomes()["failed"] == 1


# -- -W error ---------------------------------------------------------------------------------------
# torch 2.15 warns FutureWarning where 2.13 warns DeprecationWarning when make_dual first scripts its
# jvp decompositions; on 2.13 this conftest makes torch.jit.script warn as 2.15 does.
TORCH_215_WARNING = """
import warnings
import torch

_script = torch.jit.script

def _script_warning_like_torch_2_15(*args, **kwargs):
    warnings.warn("`torch.jit.script` is deprecated. Please switch to `torch.compile` or `torch.export`.",
                  FutureWarning, stacklevel=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return _script(*args, **kwargs)

torch.jit.script = _script_warning_like_torch_2_15
"""

JVP_OP = """
lib = torch.library.Library(NS, "FRAGMENT")
lib.define("sin(Tensor x) -> Tensor")
lib.impl("sin", lambda x: x.sin(), "CompositeExplicitAutograd")


class SinFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        with torch._C._AutoDispatchBelowAutograd():
            return torch.ops.{ns}.sin(x)

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        return grad * x.cos()

    @staticmethod
    def jvp(ctx, tangent):
        x, = ctx.saved_tensors
        return tangent * x.cos()


lib.impl("sin", SinFunction.apply, "Autograd")


@pytest.mark.customop(f"{{NS}}::sin", samples=samples, dtypes=["float64"], devices=["cpu"], checks=["forward_ad"])
def test_sin(customop):
    customop.check()
"""


def test_forward_ad_under_W_error_with_torch_2_15s_futurewarning(pytester, ns):
    pytester.makeconftest(TORCH_215_WARNING)
    pytester.makepyfile(test_ops=OPS.format(ns=ns) + JVP_OP.format(ns=ns) + marked("good", '["forward_ad"]'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-rs")
    result.assert_outcomes(passed=1, skipped=1)  # sin's jvp checked; good (a custom_op) cannot have one
    result.stdout.fnmatch_lines([f"SKIPPED *forward-mode AD is unsupported for {ns}::good*"])


# -- pytest-timeout ---------------------------------------------------------------------------------
def test_timeout_fails_the_slow_item_and_the_report_says_so(pytester, ns):
    pytest.importorskip("pytest_timeout")
    pytester.makepyfile(test_ops=OPS.format(ns=ns) + marked("slow") + marked("good"))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--timeout=3", "--customop-report=json:report.json", "--customop-report"
    )
    result.assert_outcomes(passed=1, failed=1)
    rows = by_test(json_rows(pytester.path / "report.json"))
    assert rows["test_slow"][0] == "failed" and "Timeout" in rows["test_slow"][1], rows
    assert rows["test_good"][0] == "passed"
    result.stdout.fnmatch_lines(["customop: 1 passed, 1 failed in 2 item(s) over 2 op(s)"])


# -- the reproduce line, pasted where pytest ran ----------------------------------------------------
def test_the_reproduce_line_runs_from_the_directory_pytest_was_run_in(pytester, ns):
    pytester.makeini("[pytest]\n")  # the rootdir: one level above where pytest runs
    sub = pytester.mkpydir("suite")
    (sub / "test_ops.py").write_text(OPS.format(ns=ns) + marked("wrong"))
    env = dict(os.environ, PYTEST_ADDOPTS="-p no:randomly -p no:cacheprovider")
    first = subprocess.run([sys.executable, "-m", "pytest"], cwd=sub, env=env, capture_output=True, text=True)
    assert first.returncode == 1, first.stdout
    (repro,) = [line.split("reproduce: ", 1)[1] for line in first.stdout.splitlines() if "reproduce: " in line][:1]
    assert repro.startswith("pytest 'test_ops.py::test_wrong["), repro  # relative to suite/, as pytest's own ids
    command = shlex.split(repro)
    assert command[0] == "pytest"
    again = subprocess.run([sys.executable, "-m", *command], cwd=sub, env=env, capture_output=True, text=True)
    assert again.returncode == 1 and "1 failed" in again.stdout, again.stdout[-2000:]
    assert f"reproduce: {repro}" in again.stdout  # the same seed, the same line


# -- what an unused plugin costs ---------------------------------------------------------------------
def test_the_startup_benchmark_runs_and_the_plugin_imports_no_torch(tmp_path):
    out = tmp_path / "startup.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_startup.py"), "--runs", "1", "--tests", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["torch_imported"] is False
    assert figures["with_plugin_s"] > 0 and figures["without_plugin_s"] > 0


# -- the json report says what wrote it, and when -----------------------------------------------------
def test_the_json_report_names_the_plugin_pytest_and_torch_and_when(pytester, ns, run):
    from datetime import datetime, timedelta, timezone

    import torch

    import pytest_customop

    pytester.makepyfile(test_ops=OPS.format(ns=ns) + marked("good"))
    before = datetime.now(timezone.utc).replace(microsecond=0)
    run("--customop-report=json:report.json").assert_outcomes(passed=1)
    document = json.loads((pytester.path / "report.json").read_text())
    environment = document["environment"]
    assert environment["pytest_customop"] == pytest_customop.__version__
    assert environment["pytest"] == pytest.__version__
    assert environment["torch"] == torch.__version__
    created = datetime.fromisoformat(document["created"])
    assert created.tzinfo is not None and before <= created <= datetime.now(timezone.utc) + timedelta(seconds=1)


# -- settings: typed ini keys, every environment variable in --help ------------------------------------
def test_help_names_every_settings_environment_variable_and_ini_key(pytester):
    from pytest_customop.options import OPTIONS

    text = " ".join(pytester.runpytest("--help").stdout.str().split())  # --help wraps its lines
    for option in OPTIONS:
        flag_help = text[text.index(f"{option.flag}") :]
        assert f"Env: {option.env}; ini: {option.ini}." in flag_help[:600], option.flag
    assert "Env: CUSTOMOP_NAMESPACES" in text


SEED_PROBE = """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    from pytest_customop.session import session_key
    print("SEED", config.stash[session_key].settings.seed)
"""


def test_integer_ini_keys_are_integers(pytester):
    pytester.makepyfile(seed_probe=SEED_PROBE)
    pytester.makeini("[pytest]\ncustomop_seed = 0\n")  # 0 is a seed, not "absent"
    pytester.runpytest_subprocess("-p", "seed_probe", "--co", "-s").stdout.fnmatch_lines(["SEED 0"])
    pytester.makeini("[pytest]\ncustomop_seed = abc\n")
    result = pytester.runpytest_subprocess("-p", "seed_probe", "--co")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-customop: ini key customop_seed*abc*"])
    if int(pytest.__version__.split(".")[0]) < 9:
        return  # pytest 7.4 and 8 know no "int" ini type: the plugin parses the string
    (pytester.path / "tox.ini").unlink()
    pytester.makepyprojecttoml("[tool.pytest]\ncustomop_seed = 7\n")  # pytest 9's native TOML: an int
    result = pytester.runpytest_subprocess("-p", "seed_probe", "--co", "-s", "-W", "error::pytest.PytestDeprecationWarning")
    result.stdout.fnmatch_lines(["SEED 7"])
    assert "customop_seed (int)" in pytester.runpytest("--help").stdout.str()
