"""Which torch versions the plugin supports, checked once at start without importing torch (so that
``pytest --help`` stays fast): an unsupported torch is one clear message, not a failing test suite."""

from __future__ import annotations

import re
from typing import Optional

import pytest

__all__ = ["OLDEST_TORCH", "require_supported_torch", "unsupported_reason"]

#: The oldest torch the plugin is tested on (``.ci/run`` runs the examples and a core subset on it).
OLDEST_TORCH = (2, 4)


def _release(version: str) -> Optional[tuple[int, int]]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def unsupported_reason(version: Optional[str]) -> Optional[str]:
    """Why torch ``version`` (None: not installed) cannot run the plugin, or None when it can."""
    floor = ".".join(map(str, OLDEST_TORCH))
    if version is None:
        return f"torch is not installed; pytest-customop needs torch>={floor} (pip install torch)"
    release = _release(version)
    if release is not None and release < OLDEST_TORCH:
        return f"torch {version} is installed; pytest-customop needs torch>={floor} (pip install 'torch>={floor}')"
    return None


def _installed_torch() -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def require_supported_torch() -> None:
    """A usage error naming the installed torch and the version needed, when it is unsupported."""
    reason = unsupported_reason(_installed_torch())
    if reason is not None:
        raise pytest.UsageError(f"pytest-customop: {reason}")
