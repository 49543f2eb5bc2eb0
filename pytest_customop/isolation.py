"""Crash containment: derived samples of compiled ops run where a segfault or abort cannot end the session.

A C++/CUDA kernel handed an edge shape or an unusual layout may crash the process (torchvision's RoI ops
segfault on an empty batch with non-empty rois). The checks that derive inputs run those steps through
:func:`run_contained`: on the CPU, on POSIX, for a compiled op (or when a check's ``isolate`` option asks
for it), the steps run in a forked child process that streams each step's result back through a pipe.
A child killed by a signal is reported as :class:`Crash` for the step it had started, and a fresh
child goes on with the next step, so one crashing sample costs one finding, not the run.

Why fork, and only on the CPU:

- the child inherits the op, its samples and the check's state as they are, with no re-import; a
  fork costs ~7 ms for a process holding torch;
- the child runs with one intra-op thread: GNU OpenMP's thread pool does not survive a fork (a child
  entering a parallel region after the parent used one hangs), and one thread is what torch's DataLoader
  workers do too;
- CUDA cannot be used in a forked child (the driver's context is not inherited, torch refuses with
  "Cannot re-initialize CUDA in forked subprocess"). On CUDA the steps run in-process and the device is
  synchronized after each, so an asynchronous kernel fault ("illegal memory access") surfaces as an
  exception of that step, with its sample, instead of at some later item; a host-side segfault there
  still ends the process (under pytest-xdist, one worker, which xdist reports and replaces).

No pytest here.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["Crash", "compiled_kernel", "isolation_available", "phase", "run_contained", "should_isolate"]

#: Seconds a contained step may take before its child is killed and the step reported as hung.
STEP_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Crash:
    """A contained step ended its process: the signal (or exit status), and whether it timed out."""

    signal_name: str
    hung: bool = False
    during: str = ""  # the phase the step had announced (:func:`phase`): "the forward", "the backward"

    def describe(self) -> str:
        what = self.during or "it"
        if self.hung:
            return f"{what} did not finish within {STEP_TIMEOUT_S:.0f} s (the child process running it was killed)"
        return f"{what} crashed the process with {self.signal_name}"


# In a contained child: where phase records go (None in the parent and in-process runs).
_records: Any = None
_current_step = -1


def phase(name: str) -> None:
    """Announce what the current contained step does next ("the forward", "the backward"), so that a
    crash names it. Nothing happens outside a contained child."""
    if _records is not None:
        pickle.dump(("phase", _current_step, name), _records)
        _records.flush()


def isolation_available() -> bool:
    """Whether this platform can fork (POSIX)."""
    return hasattr(os, "fork") and sys.platform != "win32"


def _kernel_locations(qualname: str, overload_name: str) -> dict[str, str]:
    """Dispatch key -> where its kernel was registered, from the dispatcher's table of the op."""
    import torch

    name = qualname if overload_name in ("", "default") else f"{qualname}.{overload_name}"
    try:
        table = torch._C._dispatch_dump_table(name)
    except RuntimeError:
        return {}
    locations = {}
    for line in table.splitlines():
        key, sep, rest = line.partition(": ")
        if sep and "registered at " in rest and "fallback" not in rest:
            locations[key.strip()] = rest.split("registered at ", 1)[1].rsplit(" [", 1)[0]
    return locations


def _is_python_location(location: str) -> bool:
    path = location.rsplit(":", 1)[0]
    return path.endswith(".py") or path.startswith("<")  # a file, or <stdin>/<string>


def compiled_kernel(op: Any, device: str) -> Optional[str]:
    """Where ``op``'s compiled (C++/CUDA) kernel for ``device`` or its autograd kernel was registered,
    or None when every kernel the op runs there is Python."""
    backend = "CUDA" if device.startswith("cuda") else device.split(":")[0].upper()
    locations = _kernel_locations(op.qualname, op.overload_name)
    keys = [backend, f"Autograd{backend}", "Autograd", "CompositeImplicitAutograd", "CompositeExplicitAutograd"]
    for key in keys:
        location = locations.get(key)
        if location is not None and not _is_python_location(location):
            return f"{key} kernel registered at {location}"
    return None


def should_isolate(op: Any, device: str, option: Any = None) -> bool:
    """Contain derived steps of ``op`` on ``device``: for compiled kernels, or as ``option`` (a check's
    ``isolate`` option: True or False) says; only on the CPU of a POSIX system."""
    if not device.startswith("cpu") or not isolation_available():
        return False
    if option is not None:
        return bool(option)
    return compiled_kernel(op, device) is not None


def _signal_name(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return signal.Signals(number).name
        except ValueError:
            return f"signal {number}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _child(first: int, count: int, run_step: Callable[[int], Any], write_fd: int) -> None:
    global _records, _current_step
    import torch

    torch.set_num_threads(1)  # see the module docstring: OpenMP's pool does not survive a fork
    if faulthandler.is_enabled():
        faulthandler.disable()  # the crash is reported by the parent, with its sample
    with os.fdopen(write_fd, "wb") as out:
        _records = out
        for step in range(first, count):
            _current_step = step
            pickle.dump(("start", step, None), out)
            out.flush()
            value = run_step(step)
            try:
                payload = pickle.dumps(("done", step, value))
            except Exception:  # a result that cannot travel: its text does
                payload = pickle.dumps(("done", step, repr(value)))
            out.write(payload)
            out.flush()


def _read_records(read_fd: int, pid: int) -> tuple[list[tuple[str, int, Any]], bool]:
    """Records from the child until it closes the pipe; True as second value if a step hung."""
    buffer = b""
    records: list[tuple[str, int, Any]] = []
    deadline = time.monotonic() + STEP_TIMEOUT_S
    with os.fdopen(read_fd, "rb") as stream:
        fd = stream.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                return records, True
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return records, False
            buffer += chunk
            while buffer:
                try:
                    record, consumed = _unpickle_prefix(buffer)
                except (EOFError, pickle.UnpicklingError, ValueError):
                    break  # incomplete: wait for more bytes
                buffer = buffer[consumed:]
                records.append(record)
                deadline = time.monotonic() + STEP_TIMEOUT_S  # per step


def _unpickle_prefix(buffer: bytes) -> tuple[Any, int]:
    import io

    stream = io.BytesIO(buffer)
    record = pickle.load(stream)
    return record, stream.tell()


def run_contained(count: int, run_step: Callable[[int], Any], isolate: bool) -> list[Any]:
    """``[run_step(0), ..., run_step(count - 1)]``; with ``isolate``, run in forked children, a step that
    ends its child's process giving a :class:`Crash` instead of a value.

    ``run_step`` must not raise (it returns what went wrong) and its results must pickle (dataclasses,
    strings, None); a result that does not is replaced by its ``repr``. On CUDA, callers synchronize
    themselves (see the module docstring)."""
    if not isolate:
        return [run_step(step) for step in range(count)]
    results: dict[int, Any] = {}
    first = 0
    while first < count:
        read_fd, write_fd = os.pipe()
        with warnings.catch_warnings():
            # Python 3.12 warns on fork in a multi-threaded process (pytest-xdist's execnet threads):
            # the child only computes and writes to its pipe, then leaves with os._exit.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its coverage is not collected
            code = 0
            try:
                os.close(read_fd)
                _child(first, count, run_step, write_fd)
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(write_fd)
        records, hung = _read_records(read_fd, pid)
        _, status = os.waitpid(pid, 0)
        started, during = None, ""
        for kind, step, value in records:
            if kind == "start":
                started, during = step, ""
            elif kind == "phase":
                during = value
            else:
                results[step] = value
                started = None
        if started is None:
            started = max(results, default=first - 1) + 1
            if started >= count:
                break
        results[started] = Crash(_signal_name(status), hung=hung, during=during)
        first = started + 1
    return [results[step] for step in range(count)]
