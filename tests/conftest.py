"""Shared helpers for the test suite: every test runs real pytest sessions with ``pytester``."""

from __future__ import annotations

import itertools
import os

import pytest
from _pytest import pytester as _pytester

_counter = itertools.count()

# pytester restores sys.modules after every test that uses it, so a module first imported inside an
# in-process run is imported again by the next one. torch cannot be imported twice in one process
# (its C++ state keeps pointing at the first copy: a segfault at the next garbage collection), so
# torch and what it brings stay imported for the whole session.
_KEEP_IMPORTED = ("torch", "functorch", "sympy", "mpmath", "numpy", "pytest_customop", "triton", "hypothesis")


class _SysModulesSnapshotKeepingTorch(_pytester.SysModulesSnapshot):
    def __init__(self, preserve=None) -> None:
        super().__init__(preserve=lambda name: name.startswith(_KEEP_IMPORTED) or bool(preserve and preserve(name)))


_pytester.SysModulesSnapshot = _SysModulesSnapshotKeepingTorch


@pytest.fixture
def ns() -> str:
    """A fresh op namespace per test: in-process pytester runs share torch's op registry, and an op
    name can be defined only once per process."""
    return f"cot{os.getpid()}_{next(_counter)}"


class _KeepModulesAlive:
    """pytester restores ``sys.modules`` after an in-process run, and the test modules it imported
    would then be freed with the torch Library objects they hold, deregistering kernels torch still
    points at (a segfault later in the process). Keeping the modules referenced avoids that."""

    modules: list = []

    @pytest.hookimpl
    def pytest_collection_modifyitems(self, items):
        self.modules.extend({id(i.module): i.module for i in items if getattr(i, "module", None)}.values())


@pytest.fixture
def pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """pytester, its runs without pytest-randomly (installed by the test extra for the ecosystem
    tests): its reordering and reseeding would change what the suite's own assertions see. A run
    passing ``-p randomly`` turns it back on."""
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly")  # pytester has just removed the caller's
    return pytester


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Run pytest in-process over the files written to ``pytester``, with a fixed seed."""

    def run_pytest(*args: str) -> pytest.RunResult:
        return pytester.runpytest("-p", "no:cacheprovider", "--customop-seed=1234", *args, plugins=[_KeepModulesAlive()])

    return run_pytest
