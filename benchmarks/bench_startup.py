"""What an installed but unused pytest-customop costs: pytest's wall time over a project without customop
tests, with the plugin and without it (``-p no:customop``).

    python benchmarks/bench_startup.py                 # 40 plain tests, 15 interleaved pairs
    python benchmarks/bench_startup.py --runs 5 --json out.json

The goal (issue 17): within 5% of ``-p no:customop``, with torch never imported. Each pair runs the two
commands back to back (the order alternating), so a background load hits both alike; the ratio is the
median of the pairs' ratios. The plugin must be installed (its ``pytest11`` entry point loads it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLAIN_TESTS = """
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_plain(n):
    assert n >= 0
"""

# Printed by the project's conftest at the end of the run: proof that the plugin imported no torch.
PROBE_CONFTEST = """
import sys
import pytest

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    print("TORCH IMPORTED:", "torch" in sys.modules)
"""


def make_project(root: Path, count: int) -> None:
    (root / "test_plain.py").write_text(PLAIN_TESTS.format(count=count))
    (root / "conftest.py").write_text(PROBE_CONFTEST)
    (root / "pytest.ini").write_text("[pytest]\n")


def pytest_command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *extra]


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, proc.stdout


def measure(runs: int, count: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, count)
        with_plugin, without_plugin = pytest_command(), pytest_command("-p", "no:customop")
        _, output = timed(with_plugin, root)  # warm-up (file system caches, .pyc files)
        timed(without_plugin, root)
        torch_imported = "TORCH IMPORTED: True" in output
        with_s, without_s, ratios = [], [], []
        for index in range(runs):
            pair = [(with_plugin, with_s), (without_plugin, without_s)]
            for command, times in pair if index % 2 == 0 else pair[::-1]:
                times.append(timed(command, root)[0])
            ratios.append(with_s[-1] / without_s[-1])
    return {
        "tests": count,
        "runs": runs,
        "with_plugin_s": statistics.median(with_s),
        "without_plugin_s": statistics.median(without_s),
        "ratio": statistics.median(ratios),
        "torch_imported": torch_imported,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="interleaved pairs (default 15)")
    parser.add_argument("--tests", type=int, default=40, help="plain tests in the project (default 40)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    result = measure(args.runs, args.tests)
    print(f"## pytest over {result['tests']} plain tests, median of {result['runs']} interleaved pairs")
    print(f"with the plugin:          {result['with_plugin_s']:.3f} s")
    print(f"with -p no:customop:      {result['without_plugin_s']:.3f} s")
    print(f"ratio (median of pairs):  {result['ratio']:.3f}")
    print(f"torch imported:           {result['torch_imported']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
