"""What every check is, gets and returns.

A check is an object with a ``name``, a ``description``, an optional ``not_applicable(op, spec)`` that
decides at collection time whether it applies (returning the reason when it does not), and
``run(ctx) -> CheckResult``. Checks know nothing of pytest: the plugin turns a failed result into a
test failure and a skipped one into a skip.
"""

from __future__ import annotations

import enum
import os
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from ..dtypes import Tolerance, dtype_id
from ..samples import SampleInput

if TYPE_CHECKING:
    from ..marker import CustomOpSpec
    from ..ops import ResolvedOp

__all__ = ["Check", "CheckContext", "CheckResult", "Finding", "Outcome", "format_user_traceback"]


class Outcome(str, enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass
class Finding:
    """One thing wrong, on one sample: what, where (input by schema name), expected and got."""

    sample_index: Optional[int]
    message: str
    input_name: Optional[str] = None
    #: Where an element-by-element comparison disagrees: report.heatmap.difference_grid's dict (builtins).
    heatmap: Optional[dict[str, Any]] = None


@dataclass
class CheckResult:
    """The result of one check on one (op, device, dtype): the unit of the report."""

    check: str
    outcome: Outcome
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""  # why skipped
    notes: list[str] = field(default_factory=list)  # facts worth reporting on a pass too
    samples_checked: int = 0
    samples_total: int = 0

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED

    def summary(self) -> str:
        """One line: the first finding, the skip reason, or what was checked."""
        if self.outcome is Outcome.FAILED and self.findings:
            first = self.findings[0]
            where = f"sample {first.sample_index}: " if first.sample_index is not None else ""
            more = f" (+{len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
            return f"{where}{first.message.splitlines()[0]}{more}"
        if self.outcome is Outcome.SKIPPED:
            return self.reason
        return f"{self.samples_checked}/{self.samples_total} samples checked"


def _plugin_or_torch_frame(filename: str) -> bool:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__))
    return filename.startswith(here) or filename.startswith(torch_dir)


def format_user_traceback(exc: BaseException, limit: int = 4) -> str:
    """``Type: message`` plus the last frames of ``exc`` that are the author's code (not torch's or
    the plugin's), so a crash inside a backward points at the backward."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _plugin_or_torch_frame(f.filename)]
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    if frames:
        where = "".join(traceback.format_list(frames[-limit:])).rstrip()
        text += "\n" + where
    return text


@dataclass
class CheckContext:
    """Everything a check needs for one item: the op, the marker's spec, device, dtype and samples."""

    op: ResolvedOp
    spec: CustomOpSpec
    device: str
    dtype: torch.dtype
    seed: int
    check: str
    make_samples: Callable[[torch.dtype, bool], list[SampleInput]]
    fast_mode_threshold: int = 1024
    full_jacobian: bool = False
    strict_edges: bool = False  # --customop-strict-edges: suspected edge findings fail too
    cache: dict[Any, Any] = field(default_factory=dict)

    @property
    def tolerance(self) -> Tolerance:
        return self.spec.tolerance(self.dtype)

    @property
    def options(self) -> dict[str, Any]:
        """This check's entry in the marker's ``options=``."""
        return self.spec.check_options(self.check)

    def samples(self, requires_grad: bool = True, dtype: Optional[torch.dtype] = None) -> list[SampleInput]:
        """The item's samples (built once per item and cached), fresh copies each call."""
        return self.make_samples(dtype or self.dtype, requires_grad)

    def where(self) -> str:
        """``op check on device dtype``: how a warning raised by a check names its item."""
        return f"{self.op.name} {self.check} on {self.device} {dtype_id(self.dtype)}"

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the item's seed, for grad_outputs and directions.

        Not the item's seed itself: samples are drawn from torch's generator seeded with it, and a
        grad_output equal to the sample's input (same seed, same shape) is parallel to the output of a
        scale-invariant op (a norm), along which its vector-Jacobian product is zero: a vacuous check."""
        generator = torch.Generator()
        generator.manual_seed((self.seed * 0x9E3779B1 + 0x632BE5AB + salt) % (2**63))
        return generator

    # -- results ----------------------------------------------------------------------------
    def passed(self, checked: int, total: int, notes: Optional[list[str]] = None) -> CheckResult:
        return CheckResult(self.check, Outcome.PASSED, samples_checked=checked, samples_total=total, notes=notes or [])

    def failed(self, findings: list[Finding], total: int, checked: int = 0, notes: Optional[list[str]] = None) -> CheckResult:
        return CheckResult(
            self.check, Outcome.FAILED, findings=findings, samples_checked=checked, samples_total=total, notes=notes or []
        )

    def skipped(self, reason: str, total: int = 0, notes: Optional[list[str]] = None) -> CheckResult:
        return CheckResult(self.check, Outcome.SKIPPED, reason=reason, samples_total=total, notes=notes or [])


class Check:
    """Base class of checks. Subclasses set ``name`` and ``description`` and implement :meth:`run`."""

    name: str = ""
    description: str = ""
    #: Run by markers that do not list their checks.
    default: bool = True
    #: The keys this check reads from the marker's ``options={name: {...}}``; others are a marker
    #: error. None: not declared, any key is accepted (a project's own check that says nothing).
    options_accepted: Optional[tuple[str, ...]] = None

    def not_applicable(self, op: ResolvedOp, spec: CustomOpSpec) -> Optional[str]:
        """At collection: the reason this check cannot apply to ``op``, or None when it can."""
        return None

    def run(self, ctx: CheckContext) -> CheckResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<check {self.name}>"
