"""The verification report's records: one row per test item, the outcome rules, and the whole report.

Plain data only (no pytest, no torch): rows are built from what pytest's reports carry, which under
pytest-xdist arrive on the controller as builtins, so a ``-n 0`` and a ``-n 2`` run build the same rows.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "OUTCOMES",
    "REPORT_VERSION",
    "ItemOutcome",
    "NamespaceCoverage",
    "Phase",
    "Report",
    "Row",
    "finding_notes",
    "first_line",
    "repro_command",
]

#: How the notes of a passing item that report a finding begin (edge_shapes' suspected edges, which fail
#: only with --customop-strict-edges). Such notes come last in an item's notes.
FINDING_NOTE_PREFIXES = ("suspected edge:",)

#: Version of the JSON document; raised when a field changes meaning or disappears (published as the
#: JSON Schema ``report-customop.schema.json`` in this package, see docs/report.md). Version 2 added
#: ``kind``, ``environment`` and the per-result ``ran_on``, ``device_name``, ``details`` and ``heatmap``.
REPORT_VERSION = 2

#: Every outcome a row can have, best first.
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")

#: The order in which the outcome of a cell that holds several items is chosen: the worst wins.
_SEVERITY = {"error": 0, "failed": 1, "xpassed": 2, "xfailed": 3, "skipped": 4, "passed": 5}


def repro_command(nodeid: str, seed: int) -> str:
    """The command line that reruns one item with the same seed (a ``--customop-namespace`` item by
    its namespace and name: its node id ``customop::ns::op[...]`` is no path pytest can collect)."""
    if nodeid.startswith("customop::"):
        name = nodeid[len("customop::") :]
        namespace = name.split("::", 1)[0]
        return f"pytest --customop-namespace={namespace} -k {shlex.quote(name)} --customop-seed={seed}"
    return f"pytest {shlex.quote(nodeid)} --customop-seed={seed}"


def first_line(text: str) -> str:
    """The first non-empty line of ``text``, stripped."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def finding_notes(message: str) -> list[str]:
    """The notes of ``message`` (an item's notes joined by "; ") that report a finding, each whole."""
    starts = sorted(index for prefix in FINDING_NOTE_PREFIXES for index in _occurrences(message, prefix))
    return [message[start:end].rstrip("; ").strip() for start, end in zip(starts, starts[1:] + [len(message)])]


def _occurrences(text: str, prefix: str) -> list[int]:
    found, start = [], text.find(prefix)
    while start >= 0:
        if start == 0 or text[max(0, start - 2) : start] == "; ":
            found.append(start)
        start = text.find(prefix, start + 1)
    return found


def worst(outcomes: list[str]) -> str:
    """The outcome that decides a cell holding several items."""
    return min(outcomes, key=lambda outcome: _SEVERITY.get(outcome, -1))


@dataclass(frozen=True)
class Phase:
    """What one of pytest's setup/call/teardown reports said about an item.

    ``when`` is ``"setup"``, ``"call"``, ``"teardown"``, or ``"???"`` for the report pytest-xdist makes
    for the item a worker crashed on. ``message`` is the one-line reason of a failure or skip.
    """

    when: str
    outcome: str  # "passed", "failed" or "skipped", as on pytest's report
    message: str = ""
    wasxfail: Optional[str] = None  # set when the item is marked xfail
    duration: float = 0.0
    details: str = ""  # the whole message (every line of a failure, with its reproduce command)


@dataclass
class ItemOutcome:
    """The phases seen so far of one item, and the outcome and message they add up to."""

    phases: list[Phase] = field(default_factory=list)

    def add(self, phase: Phase) -> None:
        self.phases.append(phase)

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.phases)

    def details(self) -> str:
        """The whole message of the phase that decides the outcome (a failure's or a skip's)."""
        deciding = next((p for p in self.phases if p.when == "call" and p.outcome == "failed"), None)
        deciding = deciding or next((p for p in self.phases if p.outcome != "passed"), None)
        return deciding.details if deciding is not None else ""

    def outcome(self) -> tuple[str, str]:
        """``(outcome, message)``: pytest's own rules, in the report's vocabulary.

        A failing call is ``failed`` (also when teardown fails after it); a failing setup, teardown or
        crashed worker is ``error``; a skip of an xfail item is ``xfailed``; a pass of one is
        ``xpassed``.
        """
        call = next((p for p in self.phases if p.when == "call"), None)
        if call is not None and call.outcome == "failed":
            return "failed", call.message
        broken = next((p for p in self.phases if p.outcome == "failed"), None)
        if broken is not None:
            return "error", broken.message
        skipped = next((p for p in self.phases if p.outcome == "skipped"), None)
        if skipped is not None:
            if skipped.wasxfail is not None:
                return "xfailed", skipped.wasxfail or skipped.message
            return "skipped", skipped.message
        if call is not None and call.wasxfail is not None:
            return "xpassed", call.wasxfail
        if call is None:
            return "error", "the item did not run"
        return "passed", call.message


@dataclass
class Row:
    """One test item of the report: which op, check, device and dtype, and how it ended.

    ``op``, ``check``, ``device`` and ``dtype`` are None for an item whose marker could not be read far
    enough to know them. ``samples`` is ``{"checked": n, "total": m}`` when the item's check ran.
    """

    op: Optional[str]
    check: Optional[str]
    device: Optional[str]
    dtype: Optional[str]
    outcome: str
    message: str
    duration_s: float
    nodeid: str
    samples: Optional[dict[str, int]] = None
    ran_on: Optional[str] = None  # the concrete device: "cuda:1" for an item on "cuda" run by worker gw1
    device_name: Optional[str] = None  # "NVIDIA H200", the CPU's model name
    details: str = ""  # the whole message (the one-line ``message`` is its summary)
    #: For a failed gradient: ``{"input", "shape", "grid"}``, |got - expected| per element of that input,
    #: max-pooled to a small 2-D grid (see report/heatmap.py).
    heatmap: Optional[dict[str, Any]] = None

    @property
    def column(self) -> str:
        """The report table's column of this row: ``cpu/float64``."""
        return f"{self.device or '?'}/{self.dtype or '?'}"

    @property
    def finding_notes(self) -> list[str]:
        """What a passing or skipped item found without failing (suspected edges), one text each."""
        return finding_notes(self.message) if self.outcome in ("passed", "skipped") else []

    def where(self) -> str:
        """``gradcheck cpu/float64``, or the node id for an item whose check is not known."""
        return f"{self.check} {self.column}" if self.check is not None else self.nodeid

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "check": self.check,
            "device": self.device,
            "dtype": self.dtype,
            "outcome": self.outcome,
            "message": self.message,
            "duration_s": round(self.duration_s, 6),
            "nodeid": self.nodeid,
            "samples": dict(self.samples) if self.samples is not None else None,
            "ran_on": self.ran_on,
            "device_name": self.device_name,
            "details": self.details,
            "heatmap": self.heatmap,
        }


@dataclass
class NamespaceCoverage:
    """For one namespace that a tested op lives in: every op registered there, those no test
    covers, and those without an autograd formula."""

    namespace: str
    ops: list[str]
    untested: list[str]
    no_autograd: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "ops": list(self.ops),
            "untested": list(self.untested),
            "no_autograd": list(self.no_autograd),
        }


@dataclass
class Report:
    """The whole run: header facts, one row per item, coverage per namespace, warnings."""

    torch: str
    seed: int
    devices: list[str]
    rows: list[Row] = field(default_factory=list)
    coverage: list[NamespaceCoverage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Check names in the order their items were collected (a marker's checks=, else registration order).
    check_order: list[str] = field(default_factory=list)
    #: The machine the run used (devices.run_environment): torch, cuda, rocm, python, platform, device names.
    environment: dict[str, Any] = field(default_factory=dict)
    #: When the report was built: ISO 8601, UTC, to the second ("2026-12-01T10:30:00+00:00").
    created: Optional[str] = None

    def check_sort_key(self, check: Optional[str]) -> tuple:
        name = check or ""
        return (self.check_order.index(name), "") if name in self.check_order else (len(self.check_order), name)

    def checks_of(self, rows: list[Row]) -> list[str]:
        """The checks among ``rows``, in check order: a table's row labels."""
        return sorted({row.check or "?" for row in rows}, key=self.check_sort_key)

    def sorted_rows(self) -> list[Row]:
        """Rows by op, check (in check order), then in the table's column order (devices found, dtypes
        wide to narrow)."""
        return sorted(
            self.rows,
            key=lambda r: (r.op or "", self.check_sort_key(r.check), column_sort_key(r.column, self.devices), r.nodeid),
        )

    def ops(self) -> list[str]:
        """Every op with at least one row, sorted."""
        return sorted({row.op for row in self.rows if row.op is not None})

    def rows_of(self, op: Optional[str]) -> list[Row]:
        return [row for row in self.sorted_rows() if row.op == op]

    def totals(self) -> dict[str, int]:
        """How many rows ended in each outcome (every outcome listed, zeros included)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        for row in self.rows:
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
        return counts

    def totals_text(self) -> str:
        """``3 passed, 1 failed in 4 items over 2 ops`` (zero counts left out)."""
        counts = [f"{n} {outcome}" for outcome, n in self.totals().items() if n]
        return f"{', '.join(counts) or 'no results'} in {len(self.rows)} item(s) over {len(self.ops())} op(s)"

    def header_text(self) -> str:
        return f"torch {self.torch}, devices: {', '.join(self.devices) or 'none'}, seed: {self.seed}"

    def repro(self, row: Row) -> str:
        return repro_command(row.nodeid, self.seed)

    def to_json(self) -> dict[str, Any]:
        """The JSON document (see docs/report.md); rows sorted so that runs compare equal."""
        return {
            "version": REPORT_VERSION,
            "kind": "run",
            "torch": self.torch,
            "seed": self.seed,
            "devices": list(self.devices),
            "results": [row.to_json() for row in self.sorted_rows()],
            "coverage": [c.to_json() for c in sorted(self.coverage, key=lambda c: c.namespace)],
            "warnings": list(self.warnings),
            "environment": dict(self.environment),
            "check_order": list(self.check_order),
            "created": self.created,
        }


def column_sort_key(column: str, devices: list[str]) -> tuple:
    """Columns ``device/dtype``: devices in the order found, then dtypes from wide to narrow."""
    device, _, dtype = column.partition("/")
    device_rank = devices.index(device) if device in devices else len(devices)
    dtype_rank = _DTYPE_ORDER.index(dtype) if dtype in _DTYPE_ORDER else len(_DTYPE_ORDER)
    return (device_rank, device, dtype_rank, dtype)


_DTYPE_ORDER = ["float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32"]
