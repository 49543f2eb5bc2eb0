"""Cases: one per generated test item, the (device, dtype, check) product of a marker's spec."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional

import torch

from .checks.registry import CheckRegistry
from .devices import available_devices, device_id, unavailable_reason
from .dtypes import dtype_id
from .expectations import XFail
from .marker import CustomOpSpec
from .options import Settings

__all__ = ["Case", "build_cases", "item_seed"]


@dataclass(frozen=True)
class Case:
    """One item: the spec, and the device, dtype and check it runs."""

    spec: CustomOpSpec
    device: str
    dtype: torch.dtype
    check: str
    skip_reason: Optional[str] = None
    xfail: Optional[XFail] = None

    @property
    def id(self) -> str:
        return f"{device_id(self.device)}-{dtype_id(self.dtype)}-{self.check}"

    def __repr__(self) -> str:  # shown by pytest --collect-only and in the fixture's repr
        return f"<customop {self.spec.op.name} {self.id}>"


def build_cases(spec: CustomOpSpec, registry: CheckRegistry, settings: Settings) -> list[Case]:
    """Every (device, dtype, check) item of ``spec``, with its skip reason or expected failure."""
    devices = spec.devices or settings.devices or available_devices()
    checks = spec.checks or settings.checks or registry.default_names()
    cases = []
    for device in devices:
        device_reason = unavailable_reason(device)
        if device_reason is None and spec.devices and settings.devices and device not in settings.devices:
            device_reason = f"{device} is not selected ({settings.source_of('customop_devices')})"
        for dtype in spec.dtypes:
            for check in checks:
                reason = device_reason or registry[check].not_applicable(spec.op, spec)
                if reason is None:
                    reason = next((s.reason for s in spec.skips if s.matches(check, dtype, device)), None)
                xfail = next((x for x in spec.xfails if x.matches(check, dtype, device)), None)
                cases.append(Case(spec, device, dtype, check, reason, xfail))
    return cases


def item_seed(run_seed: int, nodeid: str) -> int:
    """The seed of one item: the same for the same run seed and node id, whatever the order or worker."""
    return zlib.crc32(f"{run_seed}:{nodeid}".encode()) & 0x7FFFFFFF
