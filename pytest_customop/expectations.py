"""Expected failures and skips, per check, dtype and device (the marker's ``xfails=`` and ``skips=``).

Modelled on OpInfo's ``DecorateInfo``: each names the items it applies to; an omitted field matches all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

__all__ = ["Expectation", "Skip", "XFail"]


def _as_tuple(value: Any) -> Optional[tuple[Any, ...]]:
    if value is None:
        return None
    if isinstance(value, (list, tuple, set, frozenset)):
        return tuple(value)
    return (value,)


@dataclass(frozen=True, init=False)
class Expectation:
    """Base of :class:`XFail` and :class:`Skip`: which (check, dtype, device) items it applies to."""

    reason: str
    checks: Optional[tuple[str, ...]]
    dtypes: Optional[tuple[Any, ...]]
    devices: Optional[tuple[str, ...]]

    def __init__(
        self,
        reason: str,
        *,
        checks: str | Sequence[str] | None = None,
        dtypes: Any = None,
        devices: str | Sequence[str] | None = None,
    ) -> None:
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "checks", _as_tuple(checks))
        object.__setattr__(self, "dtypes", _as_tuple(dtypes))
        object.__setattr__(self, "devices", _as_tuple(devices))

    def field_problem(self, known_checks: Sequence[str]) -> Optional[str]:
        """What is wrong with this expectation's fields (a typo in ``checks=``, a reason that is not
        text), or None. ``dtypes=`` and ``devices=`` are checked by the marker, which knows torch."""
        kind = type(self).__name__
        if not isinstance(self.reason, str) or not self.reason.strip():
            return f"{kind}'s reason must be a non-empty string, got {self.reason!r}"
        for field_name in ("checks", "devices"):
            for value in getattr(self, field_name) or ():
                if not isinstance(value, str):
                    return f"{kind}'s {field_name}= takes strings, got {type(value).__name__} {value!r}"
        unknown = [c for c in self.checks or () if c not in known_checks]
        if unknown:
            return f"{kind}'s checks= names unknown check(s) {', '.join(map(repr, unknown))}; known: {', '.join(known_checks)}"
        strict = getattr(self, "strict", False)
        if not isinstance(strict, bool):
            return f"{kind}'s strict= takes True or False, got {strict!r}"
        return None

    def matches(self, check: str, dtype: Any, device: str) -> bool:
        """True when this expectation applies to the item for ``check`` at ``dtype`` on ``device``."""
        if self.checks is not None and check not in self.checks:
            return False
        if self.dtypes is not None and dtype not in self.dtypes:
            return False
        # "cuda" covers "cuda:0"; "cuda:1" only itself.
        return self.devices is None or any(device == d or device.split(":")[0] == d for d in self.devices)


@dataclass(frozen=True, init=False)
class XFail(Expectation):
    """The matching items are expected to fail: ``XFail("bf16 accumulates", checks="gradcheck",
    dtypes=torch.bfloat16)``. ``strict=True`` (the default) makes an unexpected pass a failure."""

    strict: bool

    def __init__(self, reason: str, *, strict: bool = True, **where: Any) -> None:
        super().__init__(reason, **where)
        object.__setattr__(self, "strict", strict)


@dataclass(frozen=True, init=False)
class Skip(Expectation):
    """The matching items are skipped with ``reason``: ``Skip("no CUDA kernel", devices="cuda")``."""
