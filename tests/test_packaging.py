"""Packaged like a real project: one version source, SPDX license metadata, and an sdist that carries
what its own tests need (tests, root conftest, examples, docs, LICENSE, py.typed) and runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from email.parser import Parser
from pathlib import Path

import pytest

import pytest_customop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """The sdist of this checkout, built and unpacked; its root directory."""
    pytest.importorskip("build")
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (pyproject.toml's build-system floor)")
    out = tmp_path_factory.mktemp("sdist")
    # --no-isolation: the build requirements are this environment's (the machine may be offline)
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (archive,) = out.glob("pytest_customop-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data") if sys.version_info >= (3, 12) else tar.extractall(out)
    (root,) = (p for p in out.iterdir() if p.is_dir())
    return root


def test_the_sdist_carries_what_its_tests_need(sdist):
    for path in (
        "LICENSE",
        "README.md",
        "conftest.py",
        "pyproject.toml",
        "pytest_customop/py.typed",
        "tests/conftest.py",
        "tests/test_core.py",
        "examples",
        "docs/index.md",
        "benchmarks/bench_startup.py",
    ):
        assert (sdist / path).exists(), f"{path} missing from the sdist"
    assert sdist.name == f"pytest_customop-{pytest_customop.__version__}"  # the one version source


def test_the_sdist_metadata_is_spdx_and_complete(sdist):
    metadata = Parser().parsestr((sdist / "PKG-INFO").read_text())
    assert metadata["Version"] == pytest_customop.__version__
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert metadata["License-File"] == "LICENSE"
    classifiers = metadata.get_all("Classifier")
    for expected in (
        "Framework :: Pytest",
        "Typing :: Typed",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.13",
    ):
        assert expected in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert metadata["Author"]


def test_the_sdists_own_tests_run(sdist):
    # Its copy of the package first on the path (ahead of this checkout's editable install).
    env = dict(os.environ, PYTHONPATH=str(sdist), OMP_NUM_THREADS="1", PYTEST_ADDOPTS="")
    probe = subprocess.run(
        [sys.executable, "-c", "import pytest_customop; print(pytest_customop.__file__)"],
        cwd=sdist,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == str(sdist / "pytest_customop" / "__init__.py"), probe.stdout + probe.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_core.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "entry_point or disabled or seed_from",
        ],
        cwd=sdist,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout.splitlines()[-1]
