"""Devices: which exist on this machine, parsing what the marker or the command line names, which
accelerator a pytest-xdist worker uses, and the environment a run's report records."""

from __future__ import annotations

import platform
import sys
from functools import cache
from typing import Any, Optional

import torch

from .worker_devices import worker_device_index

__all__ = [
    "WorkerDeviceError",
    "available_devices",
    "bind_worker_device",
    "device_id",
    "parse_device",
    "run_environment",
    "unavailable_reason",
    "where_item_runs",
]


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


# -- which accelerator a pytest-xdist worker uses ------------------------------------------------
class WorkerDeviceError(ValueError):
    """A ``--customop-worker-devices`` index that this machine does not have."""


def _accelerator_module(kind: str) -> Any:
    module = getattr(torch, kind, None)
    if module is None or not callable(getattr(module, "is_available", None)) or not module.is_available():
        return None
    return module


_bound: dict[str, Optional[str]] = {}  # accelerator kind -> the device this process was bound to


def bind_worker_device(worker_id: Optional[str], mapping: Optional[list[int]], device: str) -> Optional[str]:
    """Make this pytest-xdist worker's device of the accelerator ``device`` names (``cuda``) the current
    one, once per process, so that items on the bare device run there (see worker_devices.py); returns
    it (``cuda:1``), or None when nothing was changed. Items that name an index (``cuda:0``) keep it."""
    kind = torch.device(device).type
    if kind == "cpu":
        return None
    if kind in _bound:
        return _bound[kind]
    module = _accelerator_module(kind)
    count = int(module.device_count()) if module is not None else 0
    index = worker_device_index(worker_id, count, mapping)
    if module is None or index is None or not callable(getattr(module, "set_device", None)):
        _bound[kind] = None
        return None
    if index >= count:
        raise WorkerDeviceError(
            f"--customop-worker-devices gives worker {worker_id} {kind}:{index}, but {count} {kind} device(s) are present"
        )
    module.set_device(index)
    _device_name.cache_clear()
    _bound[kind] = f"{kind}:{index}"
    return _bound[kind]


# -- what a report records about where things ran ---------------------------------------------------
@cache
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@cache
def _device_name(device: str) -> tuple[str, str]:
    """``(concrete device, its name)``: ``("cuda:1", "NVIDIA H200")``; ``("cpu", "<cpu model>")``."""
    parsed = torch.device(device)
    if parsed.type == "cpu":
        return "cpu", _cpu_name()
    module = _accelerator_module(parsed.type)
    if module is None:
        return device, ""
    current = getattr(module, "current_device", None)  # torch.mps has none: one device, no index
    if parsed.index is not None:
        index = parsed.index
    elif current is None:
        return device, ""
    else:
        index = int(current())
    name_of = getattr(module, "get_device_name", None)
    try:
        name = str(name_of(index)) if name_of is not None else ""
    except Exception:  # a backend without names: the index says enough
        name = ""
    return f"{parsed.type}:{index}", name


def where_item_runs(device: Optional[str]) -> dict[str, str]:
    """``{"ran_on": "cuda:1", "device_name": "NVIDIA H200"}`` for an item on ``device`` (builtins, for the
    report); empty for an item whose device is not known or cannot run here."""
    if not device:
        return {}
    try:
        ran_on, name = _device_name(device)
    except RuntimeError:
        return {}
    return {"ran_on": ran_on, "device_name": name}


def run_environment() -> dict[str, Any]:
    """What a report records about the machine a run used: torch, CUDA/ROCm, Python, platform, and the
    name of each device present (``{"cpu": "...", "cuda:0": "NVIDIA H200"}``). Builtins only."""
    names = {"cpu": _cpu_name()}
    for kind in ("cuda", "xpu", "mps"):
        module = _accelerator_module(kind)
        if module is None:
            continue
        name_of = getattr(module, "get_device_name", None)
        for index in range(int(getattr(module, "device_count", lambda: 1)())):
            try:
                names[f"{kind}:{index}"] = str(name_of(index)) if name_of is not None else kind
            except Exception:
                names[f"{kind}:{index}"] = kind
    version = getattr(torch, "version", None)
    import pytest

    from . import __version__

    return {
        "pytest_customop": __version__,  # which plugin, pytest and torch wrote the report
        "pytest": pytest.__version__,
        "torch": str(torch.__version__),
        "cuda": getattr(version, "cuda", None),
        "rocm": getattr(version, "hip", None),
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "os": platform.platform(terse=True),
        "implementation": sys.implementation.name,
        "devices": names,
    }
