"""A merged matrix (report/merge.py) as terminal lines and as Markdown.

A cell that one environment decided shows its outcome (``passed``); a cell several environments have
shows each (``passed@A FAILED@B``), prefixed ``CONFLICT`` when they disagree. The environments (device
names, torch, CUDA/ROCm, platform) are listed under their letters at the top.
"""

from __future__ import annotations

from typing import Optional

from .formats import _MD_CELL, md_code, md_escape
from .merge import Cell, Entry, Matrix, environment_text
from .terminal import CELL_TEXT, Line, _fold, _wrapped

__all__ = ["cell_text", "matrix_markdown", "matrix_terminal"]

_INDENT = "  "
_GAP = "  "


def cell_text(cell: Optional[Cell], names: Optional[dict[str, str]] = None) -> str:
    """A cell's text; ``names`` maps outcomes to the words shown (the terminal's by default)."""
    if cell is None:
        return "-"
    words = names or {outcome: text for outcome, (text, _) in CELL_TEXT.items()}
    shown = cell.outcome_by_run()
    if len(shown) == 1:
        outcomes = [e.row.outcome for e in cell.entries]
        text = words.get(cell.outcome, cell.outcome)
        if cell.conflict or len(set(outcomes)) > 1:
            text += f" {outcomes.count(cell.outcome)}/{len(outcomes)}"
        return ("CONFLICT " if cell.conflict else "") + text
    both = " ".join(f"{words.get(outcome, outcome)}@{label}" for label, outcome in shown)
    return ("CONFLICT " if cell.conflict else "") + both


def _markup(cell: Optional[Cell]) -> dict:
    if cell is None:
        return {}
    if cell.conflict:
        return {"purple": True, "bold": True}
    return CELL_TEXT.get(cell.outcome, ("", {}))[1]


def _where(entry: Entry, merged: bool) -> str:
    row = entry.row
    place = row.where()
    return f"{place} [{entry.label}]" if merged else place


def matrix_terminal(matrix: Matrix, width: int) -> list[Line]:
    """The merged matrix's lines for a terminal ``width`` characters wide."""
    width = max(width, 40)
    lines: list[Line] = [[(f"customop report merged from {len(matrix.runs)} run(s)", {"bold": True})]]
    for label, environment in matrix.environments().items():
        sources = ", ".join(matrix.sources_of(label))
        for wrapped in _wrapped(f"{label}  {environment_text(environment)}  ({sources})", width, _INDENT):
            lines.append([(wrapped, {})])
    for op in matrix.ops():
        lines.append([])
        lines.append([(op or "items whose op is not known", {"bold": True})])
        checks, columns = matrix.checks_of(op), matrix.columns_of(op)
        if checks:
            texts = {(ch, co): cell_text(matrix.cell(op, ch, co)) for ch in checks for co in columns}
            ran = {co: ",".join(matrix.column_labels(op, co)) for co in columns}
            label_width = max(len("check"), len("(ran in)"), *(len(c) for c in checks))
            widths = [max(len(co), len(ran[co]), *(len(texts[(ch, co)]) for ch in checks)) for co in columns]
            for group in _fold(widths, label_width, width):
                header = _INDENT + "check".ljust(label_width) + "".join(_GAP + columns[i].ljust(widths[i]) for i in group)
                lines.append([(header.rstrip(), {"bold": True})])
                if matrix.merged:
                    sub = (
                        _INDENT + "(ran in)".ljust(label_width) + "".join(_GAP + ran[columns[i]].ljust(widths[i]) for i in group)
                    )
                    lines.append([(sub.rstrip(), {})])
                for check in checks:
                    line: Line = [(_INDENT + check.ljust(label_width), {})]
                    for i in group:
                        text = texts[(check, columns[i])]
                        line += [
                            (_GAP, {}),
                            (text, _markup(matrix.cell(op, check, columns[i]))),
                            (" " * (widths[i] - len(text)), {}),
                        ]
                    while line and not line[-1][0].strip():
                        line.pop()
                    lines.append(line)
        for entry in [e for e in matrix.failures() if e.row.op == op]:
            text, markup = CELL_TEXT[entry.row.outcome]
            reason = f"{text} {_where(entry, matrix.merged)}: {entry.row.message or '(no message)'}"
            for number, wrapped in enumerate(_wrapped(reason, width, _INDENT)):
                lines.append([(wrapped, markup if number == 0 else {})])
            lines.append([(f"{_INDENT * 2}reproduce: {matrix.repro(entry)}", {})])
    conflicts = matrix.conflicts()
    if conflicts:
        lines.append([])
        lines.append([(f"{len(conflicts)} conflict(s): runs disagree", {"purple": True, "bold": True})])
        for op, check, column, cell in conflicts:
            outcomes = ", ".join(f"{o} in {label}" for label, o in cell.outcome_by_label().items())
            lines.append([(f"{_INDENT}{op} {check} {column}: {outcomes}", {})])
    for warning in matrix.warnings():
        lines.extend([(wrapped, {"yellow": True, "bold": True})] for wrapped in _wrapped(f"warning: {warning}", width, ""))
    lines.append([])
    lines.append(
        [
            (
                f"customop: {matrix.totals_text()}",
                {"red": True, "bold": True} if matrix.failures() or conflicts else {"green": True},
            )
        ]
    )
    return lines


def matrix_markdown(matrix: Matrix) -> str:
    """The merged matrix as Markdown (a CI job summary): environments, a table per op, failures, conflicts."""
    out = ["## customop report", "", f"**{md_escape(matrix.totals_text())}**", ""]
    out += ["| env | machine | runs |", "|---|---|---|"]
    for label, environment in matrix.environments().items():
        sources = ", ".join(md_code(s) for s in matrix.sources_of(label))
        out.append(f"| {label} | {md_escape(environment_text(environment))} | {sources} |")
    out.append("")
    for op in matrix.ops():
        out += [f"### {md_code(op) if op else 'items whose op is not known'}", ""]
        checks, columns = matrix.checks_of(op), matrix.columns_of(op)
        if checks:
            out.append(
                "| check | " + " | ".join(f"{md_escape(c)} ({', '.join(matrix.column_labels(op, c))})" for c in columns) + " |"
            )
            out.append("|---|" + "---|" * len(columns))
            for check in checks:
                cells = []
                for column in columns:
                    cell = matrix.cell(op, check, column)
                    text = md_escape(cell_text(cell, _MD_CELL))
                    cells.append(f"**{text}**" if cell is not None and cell.conflict else text)
                out.append(f"| {md_escape(check)} | " + " | ".join(cells) + " |")
            out.append("")
        reasons = [
            f"- **{e.row.outcome.upper()}** {md_escape(_where(e, matrix.merged))}: {md_escape(e.row.message or '(no message)')}  \n"
            f"  reproduce: {md_code(matrix.repro(e))}"
            for e in matrix.failures()
            if e.row.op == op
        ]
        out += reasons + ([""] if reasons else [])
    conflicts = matrix.conflicts()
    if conflicts:
        out += ["### conflicts", ""]
        for op, check, column, cell in conflicts:
            outcomes = ", ".join(f"{o} in {label}" for label, o in cell.outcome_by_label().items())
            out.append(f"- {md_code(op or '?')} {md_escape(check)} {md_escape(column)}: {md_escape(outcomes)}")
        out.append("")
    for warning in matrix.warnings():
        out += [f"> **warning:** {md_escape(warning)}", ""]
    return "\n".join(out).rstrip() + "\n"
