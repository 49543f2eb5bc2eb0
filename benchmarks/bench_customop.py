"""Benchmark of pytest-customop: what the plugin costs against doing the same checks by hand.

    PYTHONPATH=. python benchmarks/bench_customop.py            # full run (~5 min on 2 cores)
    PYTHONPATH=. python benchmarks/bench_customop.py --smoke    # tiny sizes (~30 s), run by the tests

Every ratio printed is measured in this one run on this machine (described first). Timings are medians
of interleaved repeats, so a background load hits both sides alike. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # this checkout's pytest_customop, and the helpers beside this file


def plugin_args() -> list[str]:
    """``-p pytest_customop.plugin`` where the package is not installed (its entry point loads it otherwise)."""
    from importlib.metadata import entry_points

    installed = any(e.name == "customop" for e in entry_points(group="pytest11"))
    return [] if installed else ["-p", "pytest_customop.plugin"]


@dataclass(frozen=True)
class Sizes:
    """What one run measures; ``--smoke`` shrinks everything."""

    overhead_sizes: tuple[int, ...]  # square inputs for the per-check overhead table
    repeat: int
    large_sizes: tuple[int, ...]  # the default configuration on large inputs
    full_jacobian_sizes: tuple[int, ...]  # gradcheck defaults measured here, extrapolated beyond
    measured_full_jacobian: int  # also measured for real (0: skip), to validate the extrapolation
    failing_size: int
    collect_items: int
    xdist_items: int
    xdist_size: int
    xdist_heavy_size: int  # a suite of heavier items (slow-mode gradgradcheck grows fast with size); 0: none
    spin_iterations: int  # CPU-bound work for the machine's parallel ceiling
    memory_size: int
    memory_full_jacobian_size: int


FULL = Sizes((4, 64), 15, (128, 512), (24, 48), 128, 64, 10_000, 200, 12, 20, 30_000_000, 512, 64)
SMOKE = Sizes((3,), 2, (6,), (3, 5), 0, 6, 40, 8, 3, 0, 1_000_000, 6, 6)


# -- machine and timing -------------------------------------------------------------------------------
def describe_machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores usable": usable,
        "torch threads": torch.get_num_threads(),
        "load average at start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def interleaved(functions: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median seconds of each function, calls interleaved round-robin after one warm-up call each."""
    for fn in functions.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def fmt_time(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.2f} ms"


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print(f"\n## {title}\n")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


# -- the plugin without pytest -------------------------------------------------------------------------
def plugin_check(op_name: str, samples: Callable, dtype: Any, check: str, seed: int = 1) -> Callable[[], Any]:
    """A function running one check through the plugin's API (one item's work, no pytest)."""
    from pytest_customop.cases import Case
    from pytest_customop.checks import builtin
    from pytest_customop.checks.registry import CheckRegistry
    from pytest_customop.marker import parse_marker
    from pytest_customop.options import Settings
    from pytest_customop.under_test import CustomOpUnderTest

    registry = CheckRegistry()
    builtin.pytest_customop_register_checks(registry)
    spec = parse_marker((op_name,), {"samples": samples}, known_checks=registry.names())
    case = Case(spec, "cpu", dtype, check)

    def fail(message: str) -> None:
        raise AssertionError(message)

    def run() -> Any:
        under_test = CustomOpUnderTest(case, registry, Settings(), seed, "", fail=fail, skip=lambda reason: None)
        return under_test.run_check()

    return run


def fast_mode_for(inputs: list[Any], output_numel: int) -> bool:
    from pytest_customop.options import Settings

    return sum(t.numel() for t in inputs) + output_numel > Settings().fast_mode_threshold


def raw_check(check: str, fn: Callable, samples: Callable, dtype: Any) -> Callable[[], None]:
    import workloads

    def run() -> None:
        (sample,) = list(samples("cpu", dtype, True))
        inputs = list(sample.args)
        fast = fast_mode_for(inputs, fn(*inputs).numel())
        workloads.RAW_EQUIVALENTS[check](fn, inputs, fast)

    return run


# -- 1. per (op, sample, check) overhead --------------------------------------------------------------
def bench_overhead(sizes: Sizes, workdir: Path) -> list[dict[str, Any]]:
    import torch
    import workloads

    results = []
    rows = []
    for op_key, (op_name, fn, arity) in workloads.OPS.items():
        for size in sizes.overhead_sizes:
            samples = workloads.make_samples(arity, size)
            for dtype in (torch.float64, torch.float32):
                for check in workloads.RAW_EQUIVALENTS:
                    plugin = plugin_check(op_name, samples, dtype, check)
                    result = plugin()
                    assert result.passed, result.summary()
                    times = interleaved({"plugin": plugin, "raw": raw_check(check, fn, samples, dtype)}, sizes.repeat)
                    item = pytest_item_time(op_name, arity, size, dtype, check, workdir, sizes.repeat)
                    mode = "fast" if fast_mode_for([torch.empty(size, size)] * arity, size * size) else "slow"
                    if dtype != torch.float64:
                        mode = "vs f64"
                    entry = {
                        "op": op_key,
                        "size": f"{size}x{size}",
                        "dtype": str(dtype)[6:],
                        "check": check,
                        "mode": mode,
                        "plugin_s": times["plugin"],
                        "raw_s": times["raw"],
                        "pytest_item_s": item,
                    }
                    results.append(entry)
                    rows.append(
                        [
                            op_key,
                            entry["size"],
                            entry["dtype"],
                            check,
                            mode,
                            fmt_time(times["raw"]),
                            fmt_time(times["plugin"]),
                            f"{times['plugin'] / times['raw'] - 1:+.0%}",
                            fmt_time(item),
                            f"{item / times['raw'] - 1:+.0%}",
                        ]
                    )
    table(
        "Per (op, sample, check): the plugin against the same checks by hand (goal: overhead <= 10%)",
        ["op", "sample", "dtype", "check", "mode", "raw torch", "plugin API", "overhead", "pytest item", "item overhead"],
        rows,
    )
    print("\n'plugin API': CustomOpUnderTest.run_check (samples built, check run, result); 'pytest item': the")
    print("same check as a pytest item in-process (setup+call+teardown, median over items); 'raw torch': the")
    print("same checks written by hand (benchmarks/workloads.py: RAW_EQUIVALENTS), sample built the same way.")
    return results


_ITEM_MODULE = """
import pytest
import torch
import workloads

samples = workloads.make_samples({arity}, {size})

{tests}
"""
_ITEM_TEST = """
@pytest.mark.customop({op!r}, samples=samples, dtypes=[{dtype!r}], checks=[{check!r}])
def test_{index}(customop):
    customop.check()
"""


class _Durations:
    """Collects each item's setup+call+teardown wall time in an in-process pytest run."""

    def __init__(self) -> None:
        self.by_item: dict[str, float] = {}
        self.failed = 0

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.by_item[report.nodeid] = self.by_item.get(report.nodeid, 0.0) + report.duration
        self.failed += report.failed


_item_runs = iter(range(10**6))


def pytest_item_time(op_name: str, arity: int, size: int, dtype: Any, check: str, workdir: Path, repeat: int) -> float:
    import pytest

    name = f"bench_items_{next(_item_runs)}"
    tests = "".join(_ITEM_TEST.format(op=op_name, dtype=str(dtype)[6:], check=check, index=i) for i in range(repeat + 1))
    (workdir / f"test_{name}.py").write_text(_ITEM_MODULE.format(arity=arity, size=size, tests=tests))
    durations = _Durations()
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        code = pytest.main(
            [
                str(workdir / f"test_{name}.py"),
                *plugin_args(),
                "-q",
                "-p",
                "no:cacheprovider",
                "--customop-seed=1",
                "-o",
                "addopts=",
                "--rootdir",
                str(workdir),
            ],
            plugins=[durations],
        )
    if code != 0 or durations.failed:
        raise RuntimeError(f"the pytest items of {op_name} {check} did not pass (exit code {code}):\n{output.getvalue()[-3000:]}")
    values = list(durations.by_item.values())[1:]  # the first item warms up, as in interleaved()
    return statistics.median(values)


# -- 2. the default configuration on large inputs ------------------------------------------------------
def bench_large(sizes: Sizes) -> list[dict[str, Any]]:
    import torch
    import workloads

    results = []
    rows = []
    full_jacobian = {op_key: full_jacobian_model(fn, arity, sizes) for op_key, (_, fn, arity) in workloads.OPS.items()}
    for op_key, (op_name, fn, arity) in workloads.OPS.items():
        for size in sizes.large_sizes:
            samples = workloads.make_samples(arity, size)
            inputs = [t.detach().requires_grad_(True) for t in next(iter(samples("cpu", torch.float64, True))).args]

            def forward_backward(fn=fn, inputs=inputs) -> None:  # bound now: timed within this iteration
                out = fn(*inputs)
                out.backward(torch.ones_like(out))

            gc = plugin_check(op_name, samples, torch.float64, "gradcheck")
            ggc = plugin_check(op_name, samples, torch.float64, "gradgradcheck")
            repeat = max(3, sizes.repeat // (2 if size >= 512 else 1))
            times = interleaved({"fwd+bwd": forward_backward, "gradcheck": gc, "gradgradcheck": ggc}, repeat)
            measured, seconds = full_jacobian[op_key](size)
            entry = {
                "op": op_key,
                "size": f"{size}x{size}",
                "forward_backward_s": times["fwd+bwd"],
                "plugin_gradcheck_s": times["gradcheck"],
                "plugin_gradgradcheck_s": times["gradgradcheck"],
                "torch_gradcheck_defaults_s": seconds,
                "torch_defaults_measured": measured,
            }
            results.append(entry)
            fb = times["fwd+bwd"]
            rows.append(
                [
                    op_key,
                    entry["size"],
                    fmt_time(fb),
                    fmt_time(times["gradcheck"]),
                    f"{times['gradcheck'] / fb:.1f}x",
                    fmt_time(times["gradgradcheck"]),
                    f"{times['gradgradcheck'] / fb:.1f}x",
                    fmt_time(seconds) + ("" if measured else " (extrapolated)"),
                    f"{seconds / times['gradcheck']:,.1f}x",
                ]
            )
    table(
        "Default configuration, float64 (goal: gradcheck within 10x of one forward+backward)",
        [
            "op",
            "input",
            "fwd+bwd",
            "plugin gradcheck",
            "/fwd+bwd",
            "plugin gradgradcheck",
            "/fwd+bwd",
            "torch gradcheck defaults",
            "defaults/plugin",
        ],
        rows,
    )
    float32_rows = []
    for op_key, (op_name, fn, arity) in workloads.OPS.items():
        for size in sizes.large_sizes:
            samples = workloads.make_samples(arity, size)
            inputs32 = [t.detach().requires_grad_(True) for t in next(iter(samples("cpu", torch.float32, True))).args]

            def forward_backward32(fn: Callable = fn, inputs32: list = inputs32) -> None:
                out = fn(*inputs32)
                out.backward(torch.ones_like(out))

            gc32 = plugin_check(op_name, samples, torch.float32, "gradcheck")
            repeat = max(3, sizes.repeat // (2 if size >= 512 else 1))
            times = interleaved(
                {"fwd+bwd": forward_backward32, "plugin": gc32, "raw": raw_check("gradcheck", fn, samples, torch.float32)}, repeat
            )
            fb = times["fwd+bwd"]
            results.append(
                {
                    "op": op_key,
                    "size": f"{size}x{size}",
                    "dtype": "float32",
                    "forward_backward_s": fb,
                    "plugin_gradcheck_s": times["plugin"],
                    "raw_gradcheck_s": times["raw"],
                }
            )
            float32_rows.append(
                [
                    op_key,
                    f"{size}x{size}",
                    fmt_time(fb),
                    fmt_time(times["raw"]),
                    fmt_time(times["plugin"]),
                    f"{times['plugin'] / times['raw'] - 1:+.0%}",
                    f"{times['plugin'] / fb:.1f}x",
                ]
            )
    table(
        "float32-only marker: gradcheck against float64 gradients proven by finite differences (plugin vs raw torch)",
        ["op", "input", "fwd+bwd (f32)", "raw torch", "plugin gradcheck", "overhead", "/fwd+bwd"],
        float32_rows,
    )
    print("\nraw torch: the float32 backward, the float64 backward of the same values, their comparison and the")
    print("float64 reference's proof (one central difference along a joint random direction: two forwards).")
    print("\ntorch gradcheck defaults = torch.autograd.gradcheck(fn, inputs) (slow mode: the full Jacobian).")
    print(
        "Measured at "
        + ", ".join(f"{s}x{s}" for s in sizes.full_jacobian_sizes)
        + (
            f" and {sizes.measured_full_jacobian}x{sizes.measured_full_jacobian} (elementwise)"
            if sizes.measured_full_jacobian
            else ""
        )
        + "; larger sizes extrapolated from the two smallest by a fitted power law (it would take hours)."
    )
    return results


def full_jacobian_model(fn: Callable, arity: int, sizes: Sizes) -> Callable[[int], tuple[bool, float]]:
    """Seconds of torch.autograd.gradcheck defaults at a size: measured where cheap, else t = c * n^k
    fitted on two measured sizes."""
    import math

    import torch

    measured: dict[int, float] = {}

    def run(size: int) -> float:
        inputs = [torch.randn(size, size, dtype=torch.float64, requires_grad=True) for _ in range(arity)]
        start = time.perf_counter()
        torch.autograd.gradcheck(fn, tuple(inputs))
        return time.perf_counter() - start

    for size in sizes.full_jacobian_sizes:
        measured[size] = min(run(size) for _ in range(2))
    (s1, t1), (s2, t2) = sorted(measured.items())[:2]
    exponent = math.log(t2 / t1) / math.log(s2 / s1)

    def seconds(size: int) -> tuple[bool, float]:
        if size in measured:
            return True, measured[size]
        if arity == 1 and size == sizes.measured_full_jacobian:
            measured[size] = run(size)
            print(
                f"  (measured gradcheck defaults at {size}x{size}: {fmt_time(measured[size])}; the fit "
                f"t = c*n^{exponent:.2f} predicted {fmt_time(t2 * (size / s2) ** exponent)})"
            )
            return True, measured[size]
        return False, t2 * (size / s2) ** exponent

    return seconds


# -- 2b. a failing check costs what a passing one does ------------------------------------------------
def bench_failing(sizes: Sizes) -> dict[str, Any]:
    import torch
    import workloads

    op_name, fn, arity = workloads.OPS["elementwise"]
    samples = workloads.make_samples(arity, sizes.failing_size)
    passing = plugin_check(op_name, samples, torch.float64, "gradcheck")
    times: dict[str, float] = {}
    start = time.perf_counter()
    passing()
    times["plugin, passing"] = interleaved({"p": passing}, sizes.repeat)["p"]
    workloads.set_backward_factor(2.0)
    try:
        result = passing()
        assert not result.passed, "the 2x backward was not caught"
        times["plugin, failing"] = interleaved({"p": passing}, sizes.repeat)["p"]
        inputs = [torch.randn(sizes.failing_size, sizes.failing_size, dtype=torch.float64, requires_grad=True)]
        start = time.perf_counter()
        caught = not torch.autograd.gradcheck(fn, tuple(inputs), fast_mode=True, raise_exception=False)
        times["torch fast gradcheck, failing (recomputes the full Jacobian for its message)"] = time.perf_counter() - start
        assert caught
    finally:
        workloads.set_backward_factor(1.0)
    size = f"{sizes.failing_size}x{sizes.failing_size}"
    rows = [[name, fmt_time(t), f"{t / times['plugin, passing']:.1f}x"] for name, t in times.items()]
    mode = "fast" if fast_mode_for(inputs, inputs[0].numel()) else "slow"
    table(
        f"A failing check costs what a passing one does (elementwise, {size} float64, {mode} mode, backward 2x)",
        ["run", "time", "/ passing"],
        rows,
    )
    return {"size": size, **dict(times.items())}


# -- 3. collection -------------------------------------------------------------------------------------
def _pytest(args: list[str], cwd: Path, extra_env: Optional[dict[str, str]] = None) -> float:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(cwd)]), **(extra_env or {}))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *plugin_args(), "-p", "no:cacheprovider", "-o", "addopts=", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"pytest {' '.join(args)} in {cwd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def bench_collection(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    import suites

    functions = sizes.collect_items // 4
    customop_dir, plain_dir = workdir / "collect_customop", workdir / "collect_plain"
    items = suites.write_customop_suite(
        customop_dir, "bcollect", functions, ["float64", "float32"], ["gradcheck", "gradgradcheck"]
    )
    suites.write_plain_suite(plain_dir, "plain", functions, 4)
    args = ["--collect-only", "-q"]
    runs = 1 if sizes.collect_items < 1000 else 2
    plain = min(_pytest(args, plain_dir) for _ in range(runs))
    customop = min(_pytest(args, customop_dir) for _ in range(runs))
    table(
        f"Collecting {items:,} items (goal: <= 1.5x a plain parametrize suite)",
        ["suite", "pytest --collect-only", "ratio"],
        [
            ["plain @pytest.mark.parametrize (imports torch too)", fmt_time(plain), "1.00x"],
            ["@pytest.mark.customop", fmt_time(customop), f"{customop / plain:.2f}x"],
        ],
    )
    print("\nBoth suites import torch (the customop one through its op module), so the ratio is the plugin's")
    print("own collection work: marker parsing, op resolution, cases, parametrize. Best of 2 subprocess runs\n(1 in --smoke).")
    return {"items": items, "plain_s": plain, "customop_s": customop}


# -- 4. xdist -----------------------------------------------------------------------------------------
_SPIN = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"


def parallel_ceiling(iterations: int) -> float:
    """What two processes can gain here at best: one CPU-bound Python process doing all the work,
    against two doing half each at once (cores shared with hyperthreads or a noisy neighbour, memory
    bandwidth and turbo clocks keep it below 2x)."""

    def wall(processes: int) -> float:
        start = time.perf_counter()
        running = [subprocess.Popen([sys.executable, "-c", _SPIN, str(iterations // processes)]) for _ in range(processes)]
        for process in running:
            process.wait()
        return time.perf_counter() - start

    # Medians of alternating runs: a neighbour's burst should not decide the ceiling.
    ones, twos = [], []
    for _ in range(3):
        ones.append(wall(1))
        twos.append(wall(2))
    return statistics.median(ones) / statistics.median(twos)


def bench_xdist(sizes: Sizes, workdir: Path) -> dict[str, Any]:
    import suites

    from pytest_customop.checks import builtin
    from pytest_customop.checks.registry import CheckRegistry

    registry = CheckRegistry()
    builtin.pytest_customop_register_checks(registry)
    defaults = registry.default_names()
    dtypes = ["float64", "float32"]
    configurations = [
        ("gradcheck + gradgradcheck", ["gradcheck", "gradgradcheck"], True, sizes.xdist_size),
        ("gradcheck + gradgradcheck", ["gradcheck", "gradgradcheck"], True, sizes.xdist_heavy_size),
        (f"default ({len(defaults)} checks)", defaults, False, sizes.xdist_size),
    ]
    # The README's test command: one torch thread per worker, so that workers do not fight over cores.
    env = {"OMP_NUM_THREADS": "1"}
    rows, results = [], {}
    for index, (label, checks, name_checks, size) in enumerate(configurations):
        if not size:
            continue
        directory = workdir / f"xdist{index}"
        functions = max(1, sizes.xdist_items // (len(dtypes) * len(checks)))
        items = suites.write_customop_suite(
            directory, f"bxdist{index}", functions, dtypes, checks, rows=size, cols=size, name_checks=name_checks
        )
        serial = _pytest(["-q", "-n", "0"], directory, env)
        parallel = _pytest(["-q", "-n", "2"], directory, env)
        rows.append([label, f"{size}x{size}", str(items), fmt_time(serial), fmt_time(parallel), f"{serial / parallel:.2f}x"])
        results[f"{label}, {size}x{size}"] = {"items": items, "serial_s": serial, "parallel_s": parallel}
    ceiling = parallel_ceiling(sizes.spin_iterations)
    rows.append(["(machine ceiling: CPU-bound Python, 1 process vs 2)", "", "", "", "", f"{ceiling:.2f}x"])
    table(
        f"pytest -n 2 against -n 0 on about {sizes.xdist_items} check items (goal: >= 1.7x faster)",
        ["checks per marker", "samples", "items", "-n 0", "-n 2", "speed-up"],
        rows,
    )
    print(
        "\nDtypes float64 and float32, OMP_NUM_THREADS=1. Wall time of the whole pytest process, start-up"
        " included: each process (each worker under -n 2) imports torch and, at its first custom-op call,"
        " torch._dynamo; opcheck and torch.compile add their one-time warm-ups where selected."
    )
    results["machine_ceiling"] = ceiling
    return results


# -- 5. peak memory ------------------------------------------------------------------------------------
def memory_probe(config: str, size: int) -> None:
    """Run in a subprocess: one configuration, then print this process's peak RSS in bytes."""
    import torch
    import workloads

    op_name, fn, arity = workloads.OPS["elementwise"]
    samples = workloads.make_samples(arity, size)
    inputs = [t.detach().requires_grad_(True) for t in next(iter(samples("cpu", torch.float64, True))).args]
    out = fn(*inputs)  # pays the op's first-call cost (imports) in every configuration
    out.backward(torch.ones_like(out))
    if config == "plugin":
        for check in ("gradcheck", "gradgradcheck"):
            assert plugin_check(op_name, samples, torch.float64, check)().passed
    elif config == "torch-defaults":
        torch.autograd.gradcheck(fn, tuple(inputs))
    elif config != "baseline":
        raise ValueError(config)
    print(peak_rss_bytes())


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux's VmHWM starts afresh at exec; ``ru_maxrss`` would
    carry over the peak of the (large) benchmark process that forked this one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def bench_memory(sizes: Sizes) -> dict[str, Any]:
    @functools.cache
    def peak(config: str, size: int) -> int:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-probe", config, str(size)], env=env, capture_output=True, text=True, check=True
        )
        return int(proc.stdout.strip().splitlines()[-1])

    big, small = sizes.memory_size, sizes.memory_full_jacobian_size
    base_big, plugin_big = peak("baseline", big), peak("plugin", big)
    base_small, plugin_small, torch_small = peak("baseline", small), peak("plugin", small), peak("torch-defaults", small)
    # Slow mode holds the numerical and the analytical Jacobian, each inputs x outputs float64 elements.
    jacobians_big = 2 * (big * big) ** 2 * 8
    mib = 2**20
    rows = (
        [
            [
                f"{big}x{big}",
                "plugin default (gradcheck + gradgradcheck)",
                f"{plugin_big / mib:,.0f} MiB",
                f"{(plugin_big - base_big) / mib:+,.1f} MiB",
            ],
            [
                f"{big}x{big}",
                "torch.autograd.gradcheck defaults",
                "not run",
                f">= {jacobians_big / 2**30:,.1f} GiB (two dense Jacobians)",
            ],
        ]
        if big != small
        else []
    )
    rows += [
        [
            f"{small}x{small}",
            "plugin default (gradcheck + gradgradcheck)",
            f"{plugin_small / mib:,.0f} MiB",
            f"{(plugin_small - base_small) / mib:+,.1f} MiB",
        ],
        [
            f"{small}x{small}",
            "torch.autograd.gradcheck defaults",
            f"{torch_small / mib:,.0f} MiB",
            f"{(torch_small - base_small) / mib:+,.1f} MiB",
        ],
    ]
    table(
        "Peak memory (max RSS of a subprocess; elementwise op, float64)",
        ["input", "configuration", "peak RSS", "above baseline"],
        rows,
    )
    print(
        f"\nBaseline: the same process after importing torch and one forward+backward ({base_big / mib:,.0f} MiB at "
        f"{big}x{big}). torch's defaults at {big}x{big} would need the Jacobians' memory: not run."
    )
    return {
        "size": big,
        "baseline_bytes": base_big,
        "plugin_bytes": plugin_big,
        "small_size": small,
        "small_baseline_bytes": base_small,
        "small_plugin_bytes": plugin_small,
        "small_torch_defaults_bytes": torch_small,
        "torch_defaults_jacobians_bytes": jacobians_big,
    }


# -- main ----------------------------------------------------------------------------------------------
SECTIONS = ("overhead", "large", "failing", "collection", "xdist", "memory")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works (~30 s)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections: {', '.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    parser.add_argument("--memory-probe", nargs=2, metavar=("CONFIG", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_probe:
        memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
        return 0
    sizes = SMOKE if args.smoke else FULL
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")

    started = time.perf_counter()
    # The benchmark is about the CPU: no accelerator items, even where one is present.
    os.environ.setdefault("CUSTOMOP_DEVICES", "cpu")
    import torch
    import workloads

    machine = describe_machine()
    print("# pytest-customop benchmark" + (" (smoke: tiny sizes, ratios meaningless)" if args.smoke else ""))
    print()
    for key, value in machine.items():
        print(f"- {key}: {value}")
    # Every process pays the first custom-op call once (torch imports torch._dynamo there, ~2 s): not
    # the plugin's cost, and paid by the raw side too; done here so neither side is charged for it.
    warm = time.perf_counter()
    workloads.scaled_tanh(torch.ones(1))
    print(f"- first custom-op call in a process (torch's one-time import): {fmt_time(time.perf_counter() - warm)}")

    report: dict[str, Any] = {"machine": machine, "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="customop-bench-") as tmp:
        workdir = Path(tmp)
        sys.path.insert(0, str(workdir))
        if "overhead" in sections:
            report["overhead"] = bench_overhead(sizes, workdir)
        if "large" in sections:
            report["large"] = bench_large(sizes)
        if "failing" in sections:
            report["failing"] = bench_failing(sizes)
        if "collection" in sections:
            report["collection"] = bench_collection(sizes, workdir)
        if "xdist" in sections:
            report["xdist"] = bench_xdist(sizes, workdir)
        if "memory" in sections:
            report["memory"] = bench_memory(sizes)
    report["total_s"] = time.perf_counter() - started
    print(f"\nTotal: {fmt_time(report['total_s'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
