"""Which accelerator each pytest-xdist worker uses: pure rules, no torch (``--customop-worker-devices``).

``auto`` (the default): worker ``gw<i>`` runs its items on the bare accelerator (``cuda``) on device
``i mod N`` of the N present; ``off``: every worker uses the current device (``cuda:0``); ``2,3``: worker
i uses the (i mod 2)-th index of the list. Items that name an index (``cuda:1``) keep it.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = ["parse_worker_devices", "worker_device_index"]


def parse_worker_devices(text: str) -> Optional[list[int]]:
    """``auto`` -> ``[]``, ``off`` -> None, ``0,2,3`` -> ``[0, 2, 3]``; ValueError for anything else."""
    value = text.strip().lower()
    if value in ("", "auto"):
        return []
    if value in ("off", "no", "none", "false"):
        return None
    try:
        indexes = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError("expected auto, off or comma-separated device indexes") from None
    if not indexes or any(index < 0 for index in indexes):
        raise ValueError("expected auto, off or comma-separated device indexes >= 0")
    return indexes


def worker_device_index(worker_id: Optional[str], count: int, mapping: Optional[list[int]]) -> Optional[int]:
    """The accelerator index pytest-xdist worker ``worker_id`` (``gw3``) runs on, or None to leave the
    current device alone (not a worker, no accelerator, or the mapping is off)."""
    if mapping is None or worker_id is None or count <= 0:
        return None
    match = re.fullmatch(r"gw(\d+)", worker_id)
    if match is None:
        return None
    number = int(match.group(1))
    return mapping[number % len(mapping)] if mapping else number % count
