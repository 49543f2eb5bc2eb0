"""The benchmark script runs end to end (tiny sizes): every section prints its table.

No timing is asserted (machines are noisy); docs/performance.md holds the numbers of a full run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_smoke_prints_every_section(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_customop.py"), "--smoke", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for heading in (
        "- cores usable:",
        "## Per (op, sample, check): the plugin against the same checks by hand",
        "## Default configuration, float64",
        "## A failing check costs what a passing one does",
        "## Collecting 40 items",
        "## pytest -n 2 against -n 0 on about 8 check items",
        "## Peak memory",
    ):
        assert heading in proc.stdout, f"{heading!r} missing from:\n{proc.stdout}"
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    assert {row["check"] for row in report["overhead"]} == {"gradcheck", "gradgradcheck"}
    assert report["collection"]["items"] == 40
    gradchecks, defaults, ceiling = report["xdist"].values()
    assert gradchecks["items"] == 8 and defaults["items"] >= 8 and ceiling > 0
    assert report["memory"]["small_torch_defaults_bytes"] > 0


def test_benchmark_rejects_an_unknown_section():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_customop.py"), "--only", "nope"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "unknown section(s) nope; known: overhead, large, failing, collection, xdist, memory" in proc.stderr
