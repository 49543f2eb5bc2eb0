"""The report as terminal lines: a table per op (rows = checks, columns = device/dtype), the reasons of
failed cells with the command that reruns them, coverage, and a totals line.

Pure layout: :func:`render` returns lines of ``(text, markup)`` segments, where markup is the keyword
arguments of pytest's terminal writer (``{"green": True}``); the caller writes them, so ``--color`` is
honoured. Tables wider than the terminal are folded into several tables of fewer columns.
"""

from __future__ import annotations

import textwrap

from .model import OUTCOMES, Report, Row, column_sort_key, worst

__all__ = ["CELL_TEXT", "Line", "render"]

Segment = tuple[str, dict]
Line = list[Segment]

#: What a cell shows for each outcome, and its colour.
CELL_TEXT = {
    "passed": ("passed", {"green": True}),
    "failed": ("FAILED", {"red": True, "bold": True}),
    "error": ("ERROR", {"red": True, "bold": True}),
    "skipped": ("skipped", {"yellow": True}),
    "xfailed": ("xfail", {"yellow": True}),
    "xpassed": ("XPASS", {"yellow": True, "bold": True}),
}
_NO_ITEM: tuple[str, dict[str, bool]] = ("-", {})
_GAP = "  "
_INDENT = "  "


def _cell(rows: list[Row]) -> tuple[str, dict]:
    """A cell's text and colour: the worst outcome of its items, ``FAILED 1/2`` when they differ."""
    if not rows:
        return _NO_ITEM
    outcomes = [row.outcome for row in rows]
    decided = worst(outcomes)
    text, markup = CELL_TEXT.get(decided, (decided, {}))
    if len(set(outcomes)) > 1:
        text = f"{text} {outcomes.count(decided)}/{len(outcomes)}"
    return text, markup


def _fold(widths: list[int], label_width: int, width: int) -> list[list[int]]:
    """Split column indexes into groups whose table fits ``width`` (at least one column a group)."""
    groups: list[list[int]] = []
    used = len(_INDENT) + label_width
    for index, column_width in enumerate(widths):
        if groups and used + len(_GAP) + column_width <= width:
            groups[-1].append(index)
            used += len(_GAP) + column_width
        else:
            groups.append([index])
            used = len(_INDENT) + label_width + len(_GAP) + column_width
    return groups


def _op_table(report: Report, rows: list[Row], width: int) -> list[Line]:
    checks = report.checks_of(rows)
    columns = sorted({row.column for row in rows}, key=lambda c: column_sort_key(c, report.devices))
    cells = {
        (check, column): _cell([r for r in rows if (r.check or "?") == check and r.column == column])
        for check in checks
        for column in columns
    }
    label_width = max(len("check"), *(len(c) for c in checks))
    widths = [max(len(column), *(len(cells[(check, column)][0]) for check in checks)) for column in columns]
    lines: list[Line] = []
    for group in _fold(widths, label_width, width):
        header = _INDENT + "check".ljust(label_width)
        header += "".join(_GAP + columns[i].ljust(widths[i]) for i in group)
        lines.append([(header.rstrip(), {"bold": True})])
        for check in checks:
            line: Line = [(_INDENT + check.ljust(label_width), {})]
            for i in group:
                text, markup = cells[(check, columns[i])]
                line.append((_GAP, {}))
                line.append((text, markup))
                line.append((" " * (widths[i] - len(text)), {}))
            # trailing padding is dropped so lines compare cleanly
            while line and not line[-1][0].strip():
                line.pop()
            lines.append(line)
    return lines


def _wrapped(text: str, width: int, indent: str) -> list[str]:
    return textwrap.wrap(
        text,
        width=max(width, 40),
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,
        break_on_hyphens=False,
    ) or [indent]


def _reasons(report: Report, rows: list[Row], width: int) -> list[Line]:
    lines: list[Line] = []
    for row in rows:
        if row.outcome not in ("failed", "error"):
            continue
        text, markup = CELL_TEXT[row.outcome]
        where = row.where()
        first, *rest = _wrapped(f"{text} {where}: {row.message or '(no message)'}", width, _INDENT)
        lines.append([(first[: len(_INDENT) + len(text)], markup), (first[len(_INDENT) + len(text) :], {})])
        lines.extend([(line, {})] for line in rest)
        lines.append([(f"{_INDENT * 2}reproduce: {report.repro(row)}", {})])  # unwrapped: copy-pasteable
    for row in rows:
        for note in row.finding_notes:  # found without failing the item: a suspected edge
            first, *rest = _wrapped(f"NOTE {row.where()}: {note}", width, _INDENT)
            lines.append([(first[: len(_INDENT) + 4], {"yellow": True, "bold": True}), (first[len(_INDENT) + 4 :], {})])
            lines.extend([(line, {})] for line in rest)
    return lines


def _coverage(report: Report, width: int) -> list[Line]:
    lines: list[Line] = []
    for entry in sorted(report.coverage, key=lambda c: c.namespace):
        head = f"coverage of namespace {entry.namespace}: {len(entry.ops)} op(s) registered"
        lines.append([(head, {"bold": True})])
        for label, names in (("not tested", entry.untested), ("no autograd formula", entry.no_autograd)):
            if names:
                for line in _wrapped(f"{label}: {', '.join(names)}", width, _INDENT):
                    lines.append([(line, {"yellow": True})])
        if not entry.untested and not entry.no_autograd:
            lines.append([(f"{_INDENT}every op is tested and has an autograd formula", {"green": True})])
    return lines


def _totals_markup(report: Report) -> dict:
    totals = report.totals()
    if totals["failed"] or totals["error"]:
        return {"red": True, "bold": True}
    if totals["xpassed"] or totals["skipped"] or totals["xfailed"]:
        return {"yellow": True}
    return {"green": True}


def render(report: Report, width: int) -> list[Line]:
    """The report's lines for a terminal ``width`` characters wide (header line first, totals last)."""
    width = max(width, 40)
    lines: list[Line] = [[(report.header_text(), {})]]
    for op in report.ops():
        rows = report.rows_of(op)
        outcomes = ", ".join(f"{n} {o}" for o, n in _count(rows).items())
        lines.append([])
        lines.append([(op, {"bold": True}), (f"  ({outcomes})", {})])
        table_rows = [row for row in rows if row.check is not None]
        if table_rows:
            lines.extend(_op_table(report, table_rows, width))
        lines.extend(_reasons(report, rows, width))
    unnamed = report.rows_of(None)
    if unnamed:
        lines.append([])
        lines.append([("items whose op is not known", {"bold": True})])
        lines.extend(_reasons(report, unnamed, width))
    if report.coverage:
        lines.append([])
        lines.extend(_coverage(report, width))
    for warning in report.warnings:
        lines.extend([(line, {"yellow": True, "bold": True})] for line in _wrapped(f"warning: {warning}", width, ""))
    lines.append([])
    lines.append([(f"customop: {report.totals_text()}", _totals_markup(report))])
    return lines


def _count(rows: list[Row]) -> dict[str, int]:
    outcomes = [row.outcome for row in rows]
    return {outcome: outcomes.count(outcome) for outcome in OUTCOMES if outcome in outcomes}
