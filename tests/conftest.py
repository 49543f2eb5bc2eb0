"""Shared helpers for the test suite: every test runs real pytest sessions with ``pytester``."""

from __future__ import annotations

import itertools
import os

import pytest

_counter = itertools.count()


@pytest.fixture
def ns() -> str:
    """A fresh op namespace per test: in-process pytester runs share torch's op registry, and an op
    name can be defined only once per process."""
    return f"cot{os.getpid()}_{next(_counter)}"


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Run pytest in-process over the files written to ``pytester``, with a fixed seed."""

    def run_pytest(*args: str) -> pytest.RunResult:
        return pytester.runpytest("-p", "no:cacheprovider", "--customop-seed=1234", *args)

    return run_pytest
