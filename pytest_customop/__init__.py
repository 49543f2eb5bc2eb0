"""pytest-customop: prove the gradients of PyTorch custom operators right.

Public API (imported lazily, so that loading the plugin does not import torch)::

    from pytest_customop import SampleInput, XFail, Skip, Check, CheckResult, register_dict_backward
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SampleInput": "pytest_customop.samples",
    "XFail": "pytest_customop.expectations",
    "Skip": "pytest_customop.expectations",
    "Check": "pytest_customop.checks.base",
    "CheckContext": "pytest_customop.checks.base",
    "CheckResult": "pytest_customop.checks.base",
    "Finding": "pytest_customop.checks.base",
    "Tolerance": "pytest_customop.dtypes",
    "register_dict_backward": "pytest_customop.legacy",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_customop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
