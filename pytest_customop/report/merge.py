"""One verification matrix from many runs: JSON reports of CPU and GPU runners, shards of one suite,
other torch versions, read and merged into op x check x device x dtype cells.

Pure data (no pytest, no torch). Inputs are read by :data:`READERS`, tried in order: each says whether it
reads a file and turns it into :class:`Run` objects (a JSON report is one run, a merged document gives
back its runs). Another input kind (a journal of per-item lines) is one more reader.

Runs are grouped by environment (device names, torch, CUDA/ROCm, platform): shards of one suite on
identical machines share an environment letter ``A``, a CUDA runner is ``B``. Each cell keeps every
run's result; a cell is a *conflict* when two runs decided it differently (passed here, failed there;
skips decide nothing: a CPU run skips the cuda items a GPU run passes).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .model import (
    REPORT_VERSION,
    NamespaceCoverage,
    Report,
    Row,
    column_sort_key,
    repro_command,
    worst,
)

__all__ = [
    "READERS",
    "Cell",
    "Entry",
    "InputError",
    "Matrix",
    "Reader",
    "Run",
    "environment_text",
    "matrix_from_report",
    "merge_runs",
    "read_inputs",
]

#: Outcomes that decide a cell; a skip says only that the run did not check it.
_DECIDING = ("passed", "failed", "error", "xfailed", "xpassed")
_ENVIRONMENT_KEYS = ("torch", "cuda", "rocm", "platform", "python")


class InputError(ValueError):
    """An input file that no reader accepts, or that is malformed; the message names the file."""


@dataclass
class Run:
    """One pytest run's results, as read from one input."""

    source: str
    rows: list[Row]
    environment: dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    check_order: list[str] = field(default_factory=list)
    coverage: list[NamespaceCoverage] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    kind: str = "report"  # which reader made it


@dataclass(frozen=True)
class Reader:
    """One input kind: ``accepts(path, head)`` (``head``: the file's first bytes, decoded) and
    ``read(path, text) -> list[Run]``."""

    name: str
    accepts: Callable[[str, str], bool]
    read: Callable[[str, str], list[Run]]


def _row_from_json(data: dict[str, Any]) -> Row:
    return Row(
        op=data.get("op"),
        check=data.get("check"),
        device=data.get("device"),
        dtype=data.get("dtype"),
        outcome=str(data.get("outcome", "error")),
        message=str(data.get("message") or ""),
        duration_s=float(data.get("duration_s") or 0.0),
        nodeid=str(data.get("nodeid") or ""),
        samples=data.get("samples"),
        ran_on=data.get("ran_on"),
        device_name=data.get("device_name"),
        details=str(data.get("details") or ""),
        heatmap=data.get("heatmap"),
    )


def _coverage_from_json(entries: list[dict[str, Any]]) -> list[NamespaceCoverage]:
    return [
        NamespaceCoverage(e["namespace"], list(e.get("ops", [])), list(e.get("untested", [])), list(e.get("no_autograd", [])))
        for e in entries
    ]


def _read_json_report(path: str, text: str) -> list[Run]:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or "version" not in document or "results" not in document:
        raise InputError(f"{path}: not a pytest-customop JSON report (no 'version' and 'results')")
    version = document["version"]
    if not isinstance(version, int) or version > REPORT_VERSION:
        raise InputError(
            f"{path}: report version {version!r}; this pytest-customop reads versions 1 to {REPORT_VERSION} "
            "(upgrade it to merge newer reports)"
        )
    if document.get("kind") == "merged":
        runs = []
        for number, run in enumerate(document.get("runs", [])):
            rows = [_row_from_json(r) for r in document["results"] if r.get("run") == number]
            runs.append(
                Run(
                    run.get("source", f"{path}#{number}"),
                    rows,
                    dict(run.get("environment") or {}),
                    run.get("seed"),
                    list(run.get("check_order") or []),
                    _coverage_from_json(run.get("coverage") or []),
                    list(run.get("warnings") or []),
                    run.get("kind", "report"),
                )
            )
        return runs
    environment = dict(document.get("environment") or {})
    environment.setdefault("torch", document.get("torch"))  # version 1 knew only the torch version
    return [
        Run(
            path,
            [_row_from_json(r) for r in document["results"]],
            environment,
            document.get("seed"),
            list(document.get("check_order") or []),
            _coverage_from_json(document.get("coverage") or []),
            list(document.get("warnings") or []),
        )
    ]


def _read_journal(path: str, text: str) -> list[Run]:
    """A journal (report/journal.py): the run it records, finished or not."""
    from .journal import JournalError, report_from_journal_text

    try:
        report = report_from_journal_text(path, text)
    except JournalError as exc:
        raise InputError(str(exc)) from None
    return [run_of_report(report, path, kind="journal")]


def _is_journal(path: str, head: str) -> bool:
    from .journal import is_journal

    return is_journal(head)


#: The input kinds, tried in order (a journal's lines start with "{" too: it comes first).
READERS: list[Reader] = [
    Reader("journal", _is_journal, _read_journal),
    Reader("json report", lambda path, head: head.lstrip().startswith("{"), _read_json_report),
]


def read_inputs(paths: list[str]) -> list[Run]:
    """Every run in the files at ``paths``, in order; :class:`InputError` for a file no reader takes."""
    runs: list[Run] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        reader = next((r for r in READERS if r.accepts(path, text[:4096])), None)
        if reader is None:
            raise InputError(f"{path}: not an input pytest-customop reads (known: {', '.join(r.name for r in READERS)})")
        runs.extend(reader.read(path, text))
    return runs


# -- the merged matrix --------------------------------------------------------------------------
def _environment_key(environment: dict[str, Any]) -> tuple:
    names = environment.get("devices") or {}
    return tuple(str(environment.get(k)) for k in _ENVIRONMENT_KEYS) + tuple(sorted(names.items()))


def environment_text(environment: dict[str, Any]) -> str:
    """``cpu: AMD EPYC; cuda:0: NVIDIA H200; torch 2.13.0 (CUDA 12.8); Linux-x86_64; Python 3.11.7``."""
    parts = [f"{device}: {name}" for device, name in (environment.get("devices") or {}).items()]
    torch_text = f"torch {environment.get('torch') or '?'}"
    if environment.get("cuda"):
        torch_text += f" (CUDA {environment['cuda']})"
    if environment.get("rocm"):
        torch_text += f" (ROCm {environment['rocm']})"
    parts.append(torch_text)
    parts += [str(environment[k]) for k in ("platform",) if environment.get(k)]
    if environment.get("python"):
        parts.append(f"Python {environment['python']}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Entry:
    """One run's result in a cell."""

    run: int  # index into Matrix.runs
    label: str  # the run's environment letter
    row: Row


@dataclass
class Cell:
    """What every run said about one (op, check, device, dtype)."""

    entries: list[Entry]

    @property
    def outcome(self) -> str:
        """The worst outcome over every entry (the colour of the cell)."""
        return worst([e.row.outcome for e in self.entries])

    def outcome_by_label(self) -> dict[str, str]:
        """Each environment's outcome (the worst of its runs' items), in label order."""
        found: dict[str, list[str]] = {}
        for entry in self.entries:
            found.setdefault(entry.label, []).append(entry.row.outcome)
        return {label: worst(outcomes) for label, outcomes in sorted(found.items())}

    def outcome_by_run(self) -> list[tuple[str, str]]:
        """``(environment letter, outcome)`` of each run that has this cell (the worst of its items), runs
        that agree with an earlier one of their environment left out: ``[("A", "passed"), ("B", "failed")]``."""
        per_run: dict[int, list[Entry]] = {}
        for entry in self.entries:
            per_run.setdefault(entry.run, []).append(entry)
        shown: list[tuple[str, str]] = []
        for entries in per_run.values():
            pair = (entries[0].label, worst([e.row.outcome for e in entries]))
            if pair not in shown:
                shown.append(pair)
        return shown

    @property
    def conflict(self) -> bool:
        """Two runs decided this cell differently (skips decide nothing)."""
        per_run: dict[int, list[str]] = {}
        for entry in self.entries:
            per_run.setdefault(entry.run, []).append(entry.row.outcome)
        decided = {worst(o) for o in per_run.values() if worst(o) in _DECIDING}
        return len(decided) > 1

    @property
    def duration_s(self) -> float:
        return sum(e.row.duration_s for e in self.entries)


@dataclass
class Matrix:
    """Runs merged: per op, checks x columns (``device/dtype``) of cells."""

    runs: list[Run]
    labels: list[str]  # environment letter of each run
    cells: dict[tuple[Optional[str], str, str], Cell]  # (op, check, column) -> cell
    unplaced: list[Entry]  # rows whose check is not known (rejected markers)
    check_order: list[str]
    devices: list[str]

    @property
    def merged(self) -> bool:
        return len(self.runs) > 1

    def environments(self) -> dict[str, dict[str, Any]]:
        """Environment letter -> environment."""
        found: dict[str, dict[str, Any]] = {}
        for run, label in zip(self.runs, self.labels):
            found.setdefault(label, run.environment)
        return found

    def sources_of(self, label: str) -> list[str]:
        return [run.source for run, run_label in zip(self.runs, self.labels) if run_label == label]

    def ops(self) -> list[Optional[str]]:
        ops = {op for op, _, _ in self.cells} | {e.row.op for e in self.unplaced}
        return sorted(op for op in ops if op is not None) + ([None] if None in ops else [])

    def _check_key(self, check: str) -> tuple:
        return (self.check_order.index(check), "") if check in self.check_order else (len(self.check_order), check)

    def checks_of(self, op: Optional[str]) -> list[str]:
        return sorted({check for o, check, _ in self.cells if o == op}, key=self._check_key)

    def columns_of(self, op: Optional[str]) -> list[str]:
        return sorted({column for o, _, column in self.cells if o == op}, key=lambda c: column_sort_key(c, self.devices))

    def cell(self, op: Optional[str], check: str, column: str) -> Optional[Cell]:
        return self.cells.get((op, check, column))

    def column_labels(self, op: Optional[str], column: str) -> list[str]:
        """The environments that decided a column of ``op`` (else every one that has it)."""
        entries = [e for (o, _, c), cell in self.cells.items() if o == op and c == column for e in cell.entries]
        deciding = sorted({e.label for e in entries if e.row.outcome in _DECIDING})
        return deciding or sorted({e.label for e in entries})

    def column_device_names(self, op: Optional[str], column: str) -> list[str]:
        """What the column's results ran on: ``A: cuda:0 NVIDIA H200``, one per environment and device."""
        found = []
        for (o, _, c), cell in self.cells.items():
            if o != op or c != column:
                continue
            for entry in cell.entries:
                if entry.row.outcome not in _DECIDING:
                    continue
                text = f"{entry.label}: {entry.row.ran_on or entry.row.device or '?'}"
                if entry.row.device_name:
                    text += f" {entry.row.device_name}"
                if text not in found:
                    found.append(text)
        return sorted(found)

    def failures(self) -> list[Entry]:
        """Failed and errored entries, in table order (cells first, then unplaced rows)."""
        out = []
        for op in self.ops():
            for check in self.checks_of(op):
                for column in self.columns_of(op):
                    cell = self.cell(op, check, column)
                    out += [e for e in (cell.entries if cell else []) if e.row.outcome in ("failed", "error")]
            out += [e for e in self.unplaced if e.row.op == op and e.row.outcome in ("failed", "error")]
        return out

    def conflicts(self) -> list[tuple[Optional[str], str, str, Cell]]:
        return [
            (op, check, column, cell)
            for (op, check, column), cell in sorted(
                self.cells.items(),
                key=lambda kv: (kv[0][0] or "", self._check_key(kv[0][1]), column_sort_key(kv[0][2], self.devices)),
            )
            if cell.conflict
        ]

    def repro(self, entry: Entry) -> str:
        seed = self.runs[entry.run].seed
        return repro_command(entry.row.nodeid, seed if seed is not None else 0)

    def totals(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in [e for cell in self.cells.values() for e in cell.entries] + self.unplaced:
            counts[entry.row.outcome] = counts.get(entry.row.outcome, 0) + 1
        return counts

    def totals_text(self) -> str:
        counts = self.totals()
        items = sum(counts.values())
        text = ", ".join(
            f"{n} {o}" for o in ("passed", "failed", "skipped", "xfailed", "xpassed", "error") if (n := counts.get(o))
        )
        runs = f" from {len(self.runs)} run(s)" if self.merged else ""
        conflicts = len(self.conflicts())
        extra = f", {conflicts} conflict(s)" if conflicts else ""
        return f"{text or 'no results'} in {items} item(s) over {len([o for o in self.ops() if o])} op(s){runs}{extra}"

    def coverage(self) -> list[NamespaceCoverage]:
        """Coverage over every run: an op is untested when no run tested it."""
        merged: dict[str, dict[str, set[str]]] = {}
        tested = {e.row.op for cell in self.cells.values() for e in cell.entries} | {e.row.op for e in self.unplaced}
        for run in self.runs:
            for entry in run.coverage:
                known = merged.setdefault(entry.namespace, {"ops": set(), "no_autograd": set(), "untested": set()})
                known["ops"] |= set(entry.ops)
                known["no_autograd"] |= set(entry.no_autograd)
                known["untested"] |= set(entry.untested)
        return [
            NamespaceCoverage(
                ns, sorted(k["ops"]), sorted(op for op in k["untested"] if op not in tested), sorted(k["no_autograd"])
            )
            for ns, k in sorted(merged.items())
        ]

    def warnings(self) -> list[str]:
        out = []
        for run, label in zip(self.runs, self.labels):
            out += [f"{run.source} ({label}): {w}" if self.merged else w for w in run.warnings]
        return out

    def to_json(self) -> dict[str, Any]:
        """The merged document (``kind: merged``; see report-customop.schema.json)."""
        results = []
        for number, run in enumerate(self.runs):
            for row in sorted(run.rows, key=lambda r: (r.op or "", r.check or "", r.column, r.nodeid)):
                results.append({**row.to_json(), "run": number})
        return {
            "version": REPORT_VERSION,
            "kind": "merged",
            "runs": [
                {
                    "source": run.source,
                    "label": label,
                    "kind": run.kind,
                    "seed": run.seed,
                    "environment": run.environment,
                    "check_order": run.check_order,
                    "coverage": [c.to_json() for c in run.coverage],
                    "warnings": run.warnings,
                }
                for run, label in zip(self.runs, self.labels)
            ],
            "results": results,
            "conflicts": [
                {
                    "op": op,
                    "check": check,
                    "device": column.partition("/")[0],
                    "dtype": column.partition("/")[2],
                    "outcomes": cell.outcome_by_label(),
                }
                for op, check, column, cell in self.conflicts()
            ],
        }


def _letters(count: int) -> list[str]:
    letters = list(string.ascii_uppercase)
    return [letters[i] if i < 26 else f"{letters[i // 26 - 1]}{letters[i % 26]}" for i in range(count)]


def merge_runs(runs: list[Run]) -> Matrix:
    """The matrix of ``runs``: runs of one environment share a letter; every row is an entry of its cell."""
    keys: list[tuple] = []
    labels = []
    for run in runs:
        key = _environment_key(run.environment)
        if key not in keys:
            keys.append(key)
        labels.append(keys.index(key))
    letters = _letters(len(keys))
    run_labels = [letters[i] for i in labels]
    cells: dict[tuple[Optional[str], str, str], Cell] = {}
    unplaced: list[Entry] = []
    check_order: list[str] = []
    devices: list[str] = []
    for number, run in enumerate(runs):
        for check in run.check_order:
            if check not in check_order:
                check_order.append(check)
        for device in run.environment.get("devices") or {}:
            kind = device.split(":")[0]
            if kind not in devices:
                devices.append(kind)
        for row in run.rows:
            entry = Entry(number, run_labels[number], row)
            if row.check is None:
                unplaced.append(entry)
                continue
            cells.setdefault((row.op, row.check, row.column), Cell([])).entries.append(entry)
    for _op, _check, column in cells:
        device = column.partition("/")[0]
        if device not in devices:
            devices.append(device)
    return Matrix(runs, run_labels, cells, unplaced, check_order, devices)


def run_of_report(report: Report, source: str, kind: str = "report") -> Run:
    """One run's :class:`Report` (this process's, or rebuilt from a journal) as a :class:`Run`."""
    environment = dict(report.environment) or {"torch": report.torch}
    return Run(
        source,
        list(report.rows),
        environment,
        report.seed,
        list(report.check_order),
        list(report.coverage),
        list(report.warnings),
        kind,
    )


def matrix_from_report(report: Report, source: str = "this run") -> Matrix:
    """A single run's report as a matrix (what its HTML page shows)."""
    matrix = merge_runs([run_of_report(report, source)])
    matrix.devices = list(report.devices) + [d for d in matrix.devices if d not in report.devices]
    return matrix
