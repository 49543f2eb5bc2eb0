"""Keep Python's garbage collector off torch's objects.

A process that imported torch and ``torch._dynamo`` (every first call of a ``torch.library.custom_op``
op imports it) holds millions of long-lived objects, and every full collection walks all of them:
about 0.45 s each on 2 cores. pytest runs five full collections at the end of every session (to
surface unraisable exceptions), Python one more at exit, and the run itself one every so often. The
plugin moves the objects alive after collection, and again those alive at session end, into the
collector's permanent generation (``gc.freeze``), each time after one collection so that no garbage
is frozen with them, and freezes everything at exit. Objects the tests create are collected as
before; what was alive after collection (modules, test items) stays alive, as it would have until
the end anyway.

Measured on the benchmark's default-configuration suite: 1.5-5 s less per pytest process, and per
pytest-xdist worker (docs/performance.md). ``--customop-no-gc-freeze`` turns it off.
"""

from __future__ import annotations

import atexit
import gc
import sys

__all__ = ["freeze_objects_alive_now", "freeze_at_exit"]

_exit_hook_registered = False


def _torch_imported() -> bool:
    return "torch" in sys.modules


def freeze_objects_alive_now() -> bool:
    """Collect once, then freeze what survives, if this process imported torch; True when done."""
    if not _torch_imported():
        return False
    gc.collect()
    gc.freeze()
    return True


def _freeze_if_torch_imported() -> None:
    if _torch_imported():
        gc.freeze()


def freeze_at_exit() -> None:
    """Freeze everything when this process exits, if it imported torch: Python's last collection then
    skips it (1-2 s). Registered once per process; atexit handlers and reference counting still run."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_freeze_if_torch_imported)
        _exit_hook_registered = True
