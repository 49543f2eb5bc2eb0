"""Devices: which exist on this machine, and parsing what the marker or the command line names."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["available_devices", "device_id", "parse_device", "unavailable_reason"]


def _accelerator_type() -> str | None:
    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        if accelerator.is_available():
            current = accelerator.current_accelerator()
            return current.type if current is not None else None
        return None
    return "cuda" if torch.cuda.is_available() else None


def available_devices() -> list[str]:
    """The default device list: ``cpu`` plus the accelerator present, if any."""
    devices = ["cpu"]
    accelerator = _accelerator_type()
    if accelerator is not None:
        devices.append(accelerator)
    return devices


def parse_device(value: Any) -> str:
    """A device string from a ``torch.device`` or a string (``"cuda"``, ``"cuda:1"``).

    Raises ValueError for strings torch does not know as a device.
    """
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, str):
        try:
            return str(torch.device(value.strip()))
        except RuntimeError as exc:
            raise ValueError(f"unknown device {value!r} ({exc})") from None
    raise ValueError(f"expected a device string or torch.device, got {type(value).__name__} {value!r}")


def device_id(device: str) -> str:
    """The form used in test ids: ``cuda:1`` -> ``cuda1`` (pytest ids avoid ``:``)."""
    return device.replace(":", "")


def unavailable_reason(device: str) -> str | None:
    """Why ``device`` cannot run here, or None when it can."""
    parsed = torch.device(device)
    kind = parsed.type
    if kind == "cpu":
        return None
    if kind == "meta":
        return "meta tensors hold no values, so gradients cannot be checked on them"
    module = getattr(torch, kind, None)
    is_available = getattr(module, "is_available", None)
    if is_available is None or not is_available():
        return f"{kind} is not available"
    count = getattr(module, "device_count", lambda: 1)()
    if parsed.index is not None and parsed.index >= count:
        return f"{device} is not available ({count} {kind} device(s) present)"
    return None
