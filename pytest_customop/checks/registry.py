"""The set of known checks, filled through the ``pytest_customop_register_checks`` hook."""

from __future__ import annotations

import re
from typing import Iterator

from .base import Check

__all__ = ["CheckRegistry", "CheckRegistrationError"]

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class CheckRegistrationError(ValueError):
    """A check could not be registered (bad or duplicate name, missing ``run``)."""


class CheckRegistry:
    """Checks by name, in registration order (the order of their test items)."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def register(self, check: Check) -> Check:
        """Add ``check``; its ``name`` becomes usable in ``checks=``, ids, ``-k`` and the report."""
        name = getattr(check, "name", None)
        if not isinstance(name, str) or not _NAME.match(name):
            raise CheckRegistrationError(f"{check!r}: a check's name must be a lower_case identifier, got {name!r}")
        if name in self._checks:
            raise CheckRegistrationError(f"a check named {name!r} is already registered ({self._checks[name]!r})")
        if not callable(getattr(check, "run", None)):
            raise CheckRegistrationError(f"check {name!r} has no run(ctx) method")
        self._checks[name] = check
        return check

    def __getitem__(self, name: str) -> Check:
        return self._checks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._checks

    def __iter__(self) -> Iterator[Check]:
        return iter(self._checks.values())

    def names(self) -> list[str]:
        return list(self._checks)

    def default_names(self) -> list[str]:
        return [c.name for c in self._checks.values() if getattr(c, "default", True)]
