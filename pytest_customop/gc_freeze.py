"""Keep Python's garbage collector off torch's objects.

A process that imported torch and ``torch._dynamo`` (every first call of a ``torch.library.custom_op``
op imports it) holds millions of long-lived objects, and every full collection walks all of them:
about 0.45 s each on 2 cores. pytest runs five full collections at the end of every session (to
surface unraisable exceptions), Python one more at exit, and the run itself one every so often. The
plugin moves the objects alive after collection, and again those alive at session end, into the
collector's permanent generation (``gc.freeze``), each time after one collection so that no garbage
is frozen with them. Objects the tests create are collected as before; what was alive after
collection (modules, test items) stays alive, as it would have until the end anyway.

Only where it pays and without side effects: only in a top-level run that collected customop items
(a run without any neither imports torch nor touches the collector), and everything is unfrozen at
exit, so that Python's shutdown frees it as usual. Frozen objects are never collected, even at
shutdown: left frozen, torch 2.15's nanobind-bound objects would be reported as leaked
(``nanobind: leaked N instances``) at every exit.

Measured on the benchmark's default-configuration suite: 1.5-5 s less per pytest process, and per
pytest-xdist worker (docs/performance.md). ``--customop-no-gc-freeze`` turns it off.
"""

from __future__ import annotations

import atexit
import gc
import sys

__all__ = ["freeze_objects_alive_now", "unfreeze_at_exit"]

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


def unfreeze_at_exit() -> None:
    """Give the frozen objects back to the collector when this process exits (registered once per
    process), so that the interpreter's shutdown finalizes them as it would without the freeze."""
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(gc.unfreeze)
        _exit_hook_registered = True
