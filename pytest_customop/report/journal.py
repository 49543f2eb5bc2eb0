"""The journal: the run's results as they happen, one JSON object a line, so that nothing that finished
is lost (as pytest-reportlog). The process that gathers the report (the only one, or the pytest-xdist
controller) appends a line when an item starts and when it ends, and flushes each line: a crash, a kill
or Ctrl-C loses at most the result of the item that was running. The final reports are built from the
journal (:func:`build_report`), so they list every collected item: what did not run is ``skipped`` with
``not run: <why>`` (interrupted, stopped by ``-x``, the run never finished), what a crash ended is an
``error``.

Lines (``kind`` says which): ``run`` (first: seed, torch), ``items`` (the collected customop items and
their op/check/device/dtype), ``start`` and ``result`` (one item; a result holds a report row),
``environment``, ``coverage``, ``warning``, and ``end`` (last, only when the session finished: why it
stopped early, which xdist workers crashed). A journal without ``end`` is a run that never finished;
``pytest --customop-report-from-journal=PATH --customop-report=json:out.json`` rebuilds its reports.

Pure data and files: no pytest, no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Optional

from .model import NamespaceCoverage, Report, Row

__all__ = [
    "JOURNAL_KIND",
    "JOURNAL_VERSION",
    "Journal",
    "JournalError",
    "build_report",
    "is_journal",
    "journal_path_for",
    "parse_journal",
    "read_journal",
    "report_from_journal_text",
]

JOURNAL_KIND = "pytest-customop-journal"
#: Version of the journal's lines; raised when a field changes meaning or disappears.
JOURNAL_VERSION = 1


class JournalError(ValueError):
    """A journal that cannot be read; the message names the file."""


def journal_path_for(report_path: str) -> str:
    """Where the journal of a run that writes ``report_path`` goes: beside it, ``<report_path>.journal``."""
    return os.path.realpath(report_path) + ".journal"


class Journal:
    """The records of one run, kept in memory and (when ``path`` is given) appended to ``path``.

    The file is created (replacing an older run's journal) at the first record, so a run that records
    nothing (``--collect-only``) leaves the disk alone. A file that cannot be written is given up with
    :attr:`error` set; the records stay in memory and the reports are still built from them.
    """

    def __init__(self, path: Optional[str], header: dict[str, Any]) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.error: Optional[str] = None
        self._header = {"kind": "run", "journal": JOURNAL_KIND, "version": JOURNAL_VERSION, **header}
        self._stream: Optional[IO[str]] = None

    def record(self, kind: str, **fields: Any) -> None:
        """Append one line (and, before the first, the ``run`` line)."""
        if not self.records:
            self._append(self._header)
        self._append({"kind": kind, **fields})

    def _append(self, line: dict[str, Any]) -> None:
        self.records.append(line)
        if self.path is None or self.error is not None:
            return
        try:
            if self._stream is None:
                os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
                self._stream = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
            # ensure_ascii: any text (a lone surrogate, a control character) is a valid line
            self._stream.write(json.dumps(line, ensure_ascii=True) + "\n")
            self._stream.flush()
        except OSError as exc:
            self.error = f"cannot write the journal {self.path}: {exc}"

    def close(self, *, remove: bool) -> None:
        """Close the file; ``remove`` it when the reports built from it were all written."""
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
            self._stream = None
        if remove and self.path is not None and self.error is None and os.path.isfile(self.path):
            os.unlink(self.path)


def is_journal(head: str) -> bool:
    """Whether a file whose first characters are ``head`` is a journal (for ``pytest-customop merge``'s
    readers, before the JSON report's: both start with ``{``)."""
    first = head.lstrip().split("\n", 1)[0]
    return first.startswith("{") and f'"journal": "{JOURNAL_KIND}"' in first


def report_from_journal_text(path: str, text: str) -> Report:
    """The report of the journal ``text`` read from ``path`` (what ``--customop-report-from-journal`` writes)."""
    return build_report(parse_journal(text, path), source=path)


def read_journal(path: str) -> list[dict[str, Any]]:
    """The records of the journal at ``path`` (see :func:`parse_journal`)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as stream:
            text = stream.read()
    except OSError as exc:
        raise JournalError(f"cannot read the journal {path}: {exc}") from None
    return parse_journal(text, path)


def parse_journal(text: str, path: str) -> list[dict[str, Any]]:
    """The records of a journal's ``text``. A last line cut short (the process died while writing it)
    is left out; any other bad line is a :class:`JournalError` naming ``path`` and the line."""
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number >= len(lines) - 1:  # the last line, cut short
                break
            raise JournalError(f"{path}:{number}: not a JSON line of a pytest-customop journal") from None
        if not isinstance(record, dict) or "kind" not in record:
            raise JournalError(f"{path}:{number}: not a line of a pytest-customop journal")
        records.append(record)
    if not records or records[0].get("journal") != JOURNAL_KIND:
        raise JournalError(f"{path}: not a pytest-customop journal (its first line is not a 'run' line)")
    if records[0].get("version") != JOURNAL_VERSION:
        raise JournalError(f"{path}: journal version {records[0].get('version')}; this plugin reads version {JOURNAL_VERSION}")
    return records


def _row(
    nodeid: str, meta: dict[str, Any], outcome: str, message: str, duration: float = 0.0, samples: Optional[dict[str, int]] = None
) -> Row:
    return Row(
        meta.get("op"),
        meta.get("check"),
        meta.get("device"),
        meta.get("dtype"),
        outcome,
        message,
        duration,
        nodeid,
        samples,
        ran_on=meta.get("ran_on"),
        device_name=meta.get("device_name"),
        details=meta.get("details") or "",
        heatmap=meta.get("heatmap"),
    )


def build_report(
    records: list[dict[str, Any]],
    *,
    torch: Optional[str] = None,
    devices: Optional[list[str]] = None,
    source: Optional[str] = None,
    environment: Optional[dict[str, Any]] = None,
) -> Report:
    """The report of a journal's records: a row per result, a row per collected item without one.

    ``torch``, ``devices`` and ``environment`` (the run's machine, :func:`..devices.run_environment`) are
    used when no ``environment`` line says them; ``source`` (the journal's
    path) is named in the warning of a run that never finished.
    """
    header = records[0] if records and records[0].get("kind") == "run" else {}
    items: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    started: set[str] = set()
    coverage: dict[str, dict[str, list[str]]] = {}
    warnings: list[str] = []
    machine: dict[str, Any] = dict(environment or {})
    environment_: dict[str, Any] = {
        "torch": header.get("torch") or torch or "?",
        "devices": list(header.get("devices") or devices or []),
    }
    end: Optional[dict[str, Any]] = None
    for record in records:
        kind = record.get("kind")
        if kind == "items":
            for nodeid, meta in (record.get("items") or {}).items():
                items.setdefault(nodeid, meta)
        elif kind == "start":
            started.add(record.get("nodeid", ""))
        elif kind == "result":
            results[record["nodeid"]] = record
        elif kind == "environment":
            environment_["torch"] = record.get("torch") or environment_["torch"]
            environment_["devices"] = list(record.get("devices") or environment_["devices"])
            machine = dict(record.get("environment") or machine)
        elif kind == "coverage":
            for namespace, found in (record.get("coverage") or {}).items():
                known = coverage.setdefault(namespace, {"ops": [], "no_autograd": []})
                for key in ("ops", "no_autograd"):
                    known[key] = sorted(set(known[key]) | set(found.get(key, [])))
        elif kind == "warning":
            warnings.append(str(record.get("text", "")))
        elif kind == "end":
            end = record
    rows = [
        _row(
            nodeid,
            r,
            str(r.get("outcome", "error")),
            str(r.get("message") or ""),
            float(r.get("duration_s") or 0.0),
            r.get("samples"),
        )
        for nodeid, r in results.items()
    ]
    not_run = [nodeid for nodeid in items if nodeid not in results]
    crashed = sorted((end or {}).get("crashed_workers") or [])
    stopped = (end or {}).get("stopped")
    if crashed:
        names = ", ".join(crashed)
        warnings.append(
            f"pytest-xdist worker(s) {names} crashed; the item each was running, and any item left unrun, are reported as errors"
        )
        rows += [_row(n, items[n], "error", f"not run: pytest-xdist worker(s) {names} crashed") for n in not_run]
    elif end is None:
        where = f" (the report is rebuilt from the journal {source})" if source else ""
        warnings.append(
            f"the run never finished: the process died or was killed{where}; {len(results)} of {len(items)} item(s) "
            "have a result, the one running when it ended is an error, the others are not run"
        )
        for nodeid in not_run:
            if nodeid in started:
                rows.append(
                    _row(
                        nodeid, items[nodeid], "error", "crashed: the process ended while this item ran (no result was recorded)"
                    )
                )
            else:
                rows.append(_row(nodeid, items[nodeid], "skipped", "not run: the run never finished"))
    elif not_run:
        why = stopped or "the run ended before it"
        if stopped:
            warnings.append(f"the run was {stopped}: {len(not_run)} of {len(items)} item(s) not run")
        for nodeid in not_run:
            text = f"not run to the end: {why}" if nodeid in started else f"not run: {why}"
            rows.append(_row(nodeid, items[nodeid], "skipped", text))
    elif stopped:
        warnings.append(f"the run was {stopped}")
    tested = {row.op for row in rows if row.op} | {m["op"] for m in items.values() if m.get("op")}
    check_order: list[str] = []
    for meta in list(items.values()) + list(results.values()):  # collection order: checks=, else registration
        if meta.get("check") and meta["check"] not in check_order:
            check_order.append(meta["check"])
    return Report(
        torch=str(environment_["torch"]),
        seed=int(header.get("seed") or 0),
        devices=[str(device) for device in environment_["devices"]],
        rows=rows,
        coverage=[
            NamespaceCoverage(ns, found["ops"], [op for op in found["ops"] if op not in tested], found["no_autograd"])
            for ns, found in sorted(coverage.items())
        ],
        warnings=warnings,
        check_order=check_order,
        environment=machine,
    )
