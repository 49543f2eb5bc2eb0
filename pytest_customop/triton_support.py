"""Triton kernels under test: the interpreter switch, and what Triton's errors mean for a verdict.

A ``torch.library.triton_op`` op is a ``CustomOpDef`` and is checked like any other op. Its kernels run
on CUDA tensors as compiled, and on CPU tensors only through Triton's interpreter, which Triton turns on
when ``TRITON_INTERPRET=1`` is set *before* a kernel is defined (``@triton.jit`` reads it). The plugin
sets it before conftest files and test modules are imported when asked to (``--customop-triton-interpret``
or the ini key ``customop_triton_interpret``; the variable itself, when set, wins).

With the interpreter on, a ``triton_op`` cannot run on fake tensors (the interpreter executes kernels
instead of tracing them): :func:`interpreted_fake_reason` says so, and ``compile`` and opcheck's
fake-tensor and AOT sub-tests do not run (:func:`pytest_customop.fake_kernels.missing_fake_kernel`).

Two failures are not the op's fault and become skips quoting Triton's message
(:func:`environment_refusal`):

- a kernel feature the interpreter does not implement (``InterpreterError`` wrapping a
  ``NotImplementedError`` such as "inline_asm not supported in interpreter mode");
- a kernel launched on CPU tensors with the interpreter off ("0 active drivers", "cpu tensor?").

Any other ``InterpreterError`` (an exception inside the kernel's code) stays a failure of the op.
No pytest here.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import TYPE_CHECKING, Any, Mapping, MutableMapping, Optional

if TYPE_CHECKING:
    from .checks.base import CheckResult

__all__ = [
    "INTERPRET_ENV",
    "INTERPRET_INI",
    "enable_interpreter",
    "environment_refusal",
    "interpreted_fake_reason",
    "interpreter_enabled",
    "is_triton_op",
    "triton_missing_reason",
    "with_environment_refusals_skipped",
]

INTERPRET_ENV = "TRITON_INTERPRET"
INTERPRET_INI = "customop_triton_interpret"
INSTALL = "pip install 'pytest-customop[triton]'"

# An interpreter that cannot run a feature: Triton wraps the NotImplementedError in an InterpreterError.
_UNSUPPORTED_BY_INTERPRETER = re.compile(
    r"InterpreterError: .*(?:NotImplementedError|not supported in interpreter|not (?:yet )?supported|unsupported)",
    re.IGNORECASE,
)
# A compiled kernel launched on CPU tensors (no GPU driver, or a pointer Triton cannot access).
_CPU_WITHOUT_INTERPRETER = re.compile(
    r"\d+ active drivers \(\[\]\)|cannot be accessed from Triton \(cpu tensor\?\)", re.IGNORECASE
)


def triton_missing_reason() -> Optional[str]:
    """Why Triton kernels cannot be tested here (triton is not installed), or None."""
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed: Triton kernels cannot run ({INSTALL})"
    return None


def interpreter_enabled(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` turns Triton's interpreter on (Triton reads ``TRITON_INTERPRET`` as a bool)."""
    return environ.get(INTERPRET_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def enable_interpreter(environ: MutableMapping[str, str], requested: bool) -> bool:
    """Set ``TRITON_INTERPRET=1`` in ``environ`` when ``requested`` and the variable is not set already
    (an explicit ``TRITON_INTERPRET=0`` wins). Returns whether it was set here, so it can be undone."""
    if not requested or INTERPRET_ENV in environ:
        return False
    environ[INTERPRET_ENV] = "1"
    return True


def is_triton_op(qualname: str) -> bool:
    """Whether ``qualname`` was registered with ``torch.library.triton_op`` (torch >= 2.6 keeps a table)."""
    try:
        from torch._library.triton import triton_ops_to_kernels
    except ImportError:
        return False
    return qualname in triton_ops_to_kernels


def interpreted_fake_reason(op: Any, environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why a ``triton_op`` cannot run on fake tensors here: with Triton's interpreter on, its kernels are
    executed, not traced, even on fake tensors (``torch.compile`` and opcheck's fake-tensor and AOT
    sub-tests fail inside Triton on pointers to meta storage). None for other ops, or without the
    interpreter."""
    if not interpreter_enabled(os.environ if environ is None else environ) or not is_triton_op(op.qualname):
        return None
    return (
        f"{op.name} is a triton_op and Triton's interpreter is on ({INTERPRET_ENV}=1): the interpreter runs "
        "its kernels instead of tracing them, so they cannot run on fake tensors; run this check on a GPU "
        "without the interpreter"
    )


def _quoted(message: str) -> str:
    line = next(
        (
            line.strip()
            for line in message.splitlines()
            if _UNSUPPORTED_BY_INTERPRETER.search(line) or _CPU_WITHOUT_INTERPRETER.search(line)
        ),
        message.strip().splitlines()[0] if message.strip() else "",
    )
    return line


def environment_refusal(messages: list[str]) -> Optional[str]:
    """The skip reason when every one of a failed check's ``messages`` is Triton refusing to run the
    kernel here (not the kernel being wrong), else None."""
    if not messages:
        return None
    if all(_UNSUPPORTED_BY_INTERPRETER.search(m) for m in messages):
        return (
            f"Triton's interpreter does not support a feature this kernel uses ({_quoted(messages[0])}): "
            "not a failure of the op; run this check on a GPU"
        )
    if all(_CPU_WITHOUT_INTERPRETER.search(m) for m in messages):
        return (
            f"a Triton kernel was launched on CPU tensors with Triton's interpreter off ({_quoted(messages[0])}): "
            f"run with --customop-triton-interpret (or ini {INTERPRET_INI} = true, or {INTERPRET_ENV}=1) "
            "to run it on CPU, or test it on a GPU"
        )
    return None


def with_environment_refusals_skipped(result: CheckResult) -> CheckResult:
    """``result``, or a skip quoting Triton when it failed only because Triton refused to run here."""
    from .checks.base import CheckResult, Outcome

    if result.outcome is not Outcome.FAILED:
        return result
    reason = environment_refusal([finding.message for finding in result.findings])
    if reason is None:
        return result
    return CheckResult(result.check, Outcome.SKIPPED, reason=reason, notes=result.notes, samples_total=result.samples_total)
