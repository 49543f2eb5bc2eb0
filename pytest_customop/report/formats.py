"""The report as files: JSON (versioned, for machines), Markdown (for a PR comment or a CI job summary)
and HTML (one self-contained page). Files are written by :mod:`.writing`: atomically, through
symlinks, in place for devices and fifos, with control characters escaped in Markdown and HTML.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

from .model import OUTCOMES, Report, Row, column_sort_key, worst

if TYPE_CHECKING:
    from .merge import Matrix

__all__ = ["FORMATS", "ReportTarget", "TargetError", "matrix_html", "parse_target", "parse_targets", "write_report"]


class TargetError(ValueError):
    """A ``--customop-report`` value names an unknown format or a path that cannot be written."""


@dataclass(frozen=True)
class ReportTarget:
    """Where one ``--customop-report`` goes: ``format`` is ``terminal``, ``json``, ``md`` or ``html``."""

    format: str
    path: Optional[str] = None  # absolute, for file formats


def _check_writable(path: str, given: str) -> None:
    if os.path.isdir(path):
        raise TargetError(f"{given}: {path} is a directory; give a file path")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise TargetError(f"{given}: {path} is not writable")
    if os.path.exists(path) and not os.path.isfile(path):
        return  # a device or a fifo: written in place
    parent = os.path.dirname(os.path.realpath(path))  # a symlink's target is what gets replaced
    while parent and not os.path.exists(parent):  # missing folders are created when the file is written
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise TargetError(f"{given}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TargetError(f"{given}: cannot write in directory {parent}")


def parse_target(value: str, base_dir: str) -> ReportTarget:
    """Parse one ``--customop-report`` value: ``terminal`` (the bare flag) or ``FORMAT:PATH``.

    Relative paths are taken from ``base_dir``. Raises :class:`TargetError` for an unknown format, a
    missing path, a directory, or a place that cannot be written.
    """
    given = f"--customop-report={value}"
    if value == "terminal":
        return ReportTarget("terminal")
    fmt, sep, path = value.partition(":")
    fmt = fmt.strip().lower()
    if not sep or fmt not in FORMATS:
        hint = ""
        if not sep:
            hint = (
                " (the bare flag takes no value: write --customop-report=FORMAT:PATH for a file, and put "
                "a bare --customop-report after the test paths or before another option)"
            )
        raise TargetError(f"{given}: expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}{hint}")
    if not path.strip():
        raise TargetError(f"{given}: no path after {fmt}:")
    if path.strip().endswith(("/", os.sep)):
        raise TargetError(
            f"{given}: the path ends with a slash, so it names a folder; give a file path such as {path.strip()}report.{fmt}"
        )
    full = os.path.abspath(os.path.join(base_dir, os.path.expanduser(path.strip())))
    _check_writable(full, given)
    return ReportTarget(fmt, full)


def parse_targets(values: list[str], base_dir: str) -> list[ReportTarget]:
    """Every ``--customop-report`` value parsed (see :func:`parse_target`); a bare flag given twice is
    one terminal report, and two formats (or one format twice) at the same file are an error."""
    targets: list[ReportTarget] = []
    given_for: dict[str, str] = {}
    for value in values:
        target = parse_target(value, base_dir)
        if target.path is None:
            if target not in targets:
                targets.append(target)
            continue
        key = os.path.realpath(target.path)
        if key in given_for:
            raise TargetError(
                f"--customop-report={value}: {target.path} is also given by --customop-report={given_for[key]}; "
                "one file holds one report: give each format its own path"
            )
        given_for[key] = value
        targets.append(target)
    return targets


# -- JSON -------------------------------------------------------------------------------------------
def to_json(report: Report) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False) + "\n"


# -- Markdown ---------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~&])")
_MD_CELL = {
    "passed": "✅ passed",
    "failed": "❌ **FAILED**",
    "error": "💥 **ERROR**",
    "skipped": "⏭️ skipped",
    "xfailed": "➖ xfail",
    "xpassed": "⚠️ **XPASS**",
}


def md_escape(text: str) -> str:
    """Text safe in a Markdown paragraph or table cell: punctuation backslash-escaped, one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def md_code(text: str) -> str:
    """An inline code span holding ``text`` whatever backticks it contains (pipes escaped for tables)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(rows: list[Row]) -> str:
    if not rows:
        return "–"
    outcomes = [row.outcome for row in rows]
    decided = worst(outcomes)
    text = _MD_CELL.get(decided, decided)
    if len(set(outcomes)) > 1:
        text += f" {outcomes.count(decided)}/{len(outcomes)}"
    return text


def _grid(report: Report, rows: list[Row]) -> tuple[list[str], list[str]]:
    rows = [row for row in rows if row.check is not None]
    checks = report.checks_of(rows)
    columns = sorted({row.column for row in rows}, key=lambda c: column_sort_key(c, report.devices))
    return checks, columns


def to_markdown(report: Report) -> str:
    out = ["## customop report", "", md_escape(report.header_text()), "", f"**{md_escape(report.totals_text())}**", ""]
    for op in report.ops():
        rows = report.rows_of(op)
        checks, columns = _grid(report, rows)
        out += [f"### {md_code(op)}", ""]
        if not checks:  # only items whose marker was rejected: no table, their reasons below
            out += _md_reasons(report, rows)
            continue
        out.append("| check | " + " | ".join(md_escape(c) for c in columns) + " |")
        out.append("|---|" + "---|" * len(columns))
        for check in checks:
            cells = [_md_cell([r for r in rows if (r.check or "?") == check and r.column == c]) for c in columns]
            out.append(f"| {md_escape(check)} | " + " | ".join(cells) + " |")
        out.append("")
        out += _md_reasons(report, rows)
    unnamed = report.rows_of(None)
    if unnamed:
        out += ["### items whose op is not known", ""] + _md_reasons(report, unnamed)
    if report.coverage:
        out += ["### coverage", ""]
        for entry in sorted(report.coverage, key=lambda c: c.namespace):
            untested = ", ".join(md_code(n) for n in entry.untested) or "none"
            no_autograd = ", ".join(md_code(n) for n in entry.no_autograd) or "none"
            out.append(
                f"- namespace {md_code(entry.namespace)} ({len(entry.ops)} op(s)): not tested: {untested}; "
                f"no autograd formula: {no_autograd}"
            )
        out.append("")
    for warning in report.warnings:
        out += [f"> **warning:** {md_escape(warning)}", ""]
    return "\n".join(out).rstrip() + "\n"


def _md_reasons(report: Report, rows: list[Row]) -> list[str]:
    out = []
    for row in rows:
        if row.outcome in ("failed", "error"):
            where = row.where()
            out.append(
                f"- **{row.outcome.upper()}** {md_escape(where)}: {md_escape(row.message or '(no message)')}  \n"
                f"  reproduce: {md_code(report.repro(row))}"
            )
    for row in rows:
        out.extend(f"- **NOTE** {md_escape(row.where())}: {md_escape(note)}" for note in row.finding_notes)
    return out + [""] if out else out


# -- HTML -------------------------------------------------------------------------------------------
# No script and nothing fetched: a cell is a <label> for a hidden checkbox that opens its panel (below the
# table); "only failures" is a checkbox that CSS :has() reads. Works from a file:// URL, in CI artifacts.
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}
td.cell label{cursor:pointer;display:block}
td.cell label:hover{text-decoration:underline}
td.passed{background:#dff5df}td.failed,td.error{background:#fbd9d9;font-weight:bold}
td.skipped,td.xfailed{background:#fff4cc}td.xpassed{background:#ffe3b3;font-weight:bold}
.entry{border-top:1px solid #ddd;padding-top:.3em}
.conflict{outline:3px solid #8a2be2;outline-offset:-3px}
.duration,.env-names{display:block;font-weight:normal;font-size:.8em;color:#555}
code{background:#f5f5f5;padding:0 .2em}
.warning,.note-reason{color:#a60}
.opener{display:none}
.panel{display:none;border:1px solid #999;border-left:6px solid #999;margin:.5em 0;padding:.5em 1em;background:#fff;max-width:75em}
.opener:checked+.panel,.panel:target{display:block}
.panel.failed,.panel.error{border-left-color:#c33}
.panel.skipped,.panel.xfailed,.panel.xpassed{border-left-color:#cb3}
.panel.passed{border-left-color:#3a3}
.panel pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;margin:.4em 0}
.panel .close{float:right;cursor:pointer;color:#555}
.heatmap{display:block;margin:.3em 0}
.filter{margin:.5em 0;display:inline-block;cursor:pointer}
body:has(#only-failures:checked) tr.clean,body:has(#only-failures:checked) section.op.clean{display:none}
""".strip()
_HTML_CELL = {
    "passed": "passed",
    "failed": "FAILED",
    "error": "ERROR",
    "skipped": "skipped",
    "xfailed": "xfail",
    "xpassed": "XPASS",
}
_BAD = ("failed", "error", "xpassed")


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def _duration(seconds: float) -> str:
    if seconds < 0.001:
        return "<1 ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def to_html(report: Report) -> str:
    """One run's report as a self-contained page (see :func:`matrix_html`)."""
    from .merge import matrix_from_report

    return matrix_html(matrix_from_report(report), header=report.header_text())


def matrix_html(matrix: Matrix, header: Optional[str] = None) -> str:
    """The page of a matrix (one run or many merged): per op a table of checks x ``device/dtype`` whose
    cells open a panel with each run's whole message, the command that reruns it, its duration, where it
    ran and, for a failed gradient, a heat map of |got - expected|; the environment of every run; a filter
    that leaves only the failures. One file: inline CSS and SVG, no script, nothing fetched."""
    from .heatmap import heatmap_svg
    from .matrix_views import cell_text
    from .merge import environment_text

    title = "customop report" + (f" merged from {len(matrix.runs)} runs" if matrix.merged else "")
    out = [
        "<!DOCTYPE html>",
        f'<html lang="en"><head><meta charset="utf-8"><title>{_h(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
    ]
    if header:
        out.append(f'<p class="header">{_h(header)}</p>')
    out.append(f'<p class="totals"><strong>{_h(matrix.totals_text())}</strong></p>')
    out.append(
        '<input type="checkbox" id="only-failures"><label class="filter" for="only-failures"> show only '
        "failures, errors, XPASS and conflicts</label>"
    )
    out.append('<table class="environments"><thead><tr><th>env</th><th>machine</th><th>runs</th></tr></thead><tbody>')
    for label, environment in matrix.environments().items():
        seeds = {run.source: run.seed for run, run_label in zip(matrix.runs, matrix.labels) if run_label == label}
        runs = "<br>".join(f"<code>{_h(source)}</code> (seed {_h(seed)})" for source, seed in seeds.items())
        out.append(f"<tr><th>{_h(label)}</th><td>{_h(environment_text(environment))}</td><td>{runs}</td></tr>")
    out.append("</tbody></table>")
    counter = iter(range(1, 10**9))
    for op in matrix.ops():
        checks, columns = matrix.checks_of(op), matrix.columns_of(op)
        op_bad = any(
            (cell := matrix.cell(op, check, column)) is not None and (cell.conflict or cell.outcome in _BAD)
            for check in checks
            for column in columns
        ) or any(e.row.outcome in _BAD for e in matrix.unplaced if e.row.op == op)
        heading = f"<code>{_h(op)}</code>" if op else "items whose op is not known"
        out.append(f'<section class="op{"" if op_bad else " clean"}"><h2>{heading}</h2>')
        panels: list[str] = []
        opener_of: dict[int, str] = {}  # id(entry) -> its panel's checkbox id
        entries_in_order = []
        if checks:
            out.append('<table class="matrix"><thead><tr><th>check</th>')
            for column in columns:
                names = "; ".join(matrix.column_device_names(op, column)) or ", ".join(matrix.column_labels(op, column))
                out.append(f'<th>{_h(column)}<span class="env-names">{_h(names)}</span></th>')
            out.append("</tr></thead><tbody>")
            for check in checks:
                cells_html = []
                row_bad = False
                for column in columns:
                    cell = matrix.cell(op, check, column)
                    if cell is None:
                        cells_html.append('<td class="empty">-</td>')
                        continue
                    bad = cell.conflict or cell.outcome in _BAD
                    row_bad = row_bad or bad
                    opener = f"cell-{next(counter)}"
                    for entry in cell.entries:
                        opener_of[id(entry)] = opener
                    entries_in_order.append((opener, check, column, cell))
                    text = cell_text(cell, _HTML_CELL)
                    classes = f"cell {cell.outcome}" + (" conflict" if cell.conflict else "")
                    cells_html.append(
                        f'<td class="{classes}" data-op="{_h(op or "")}" data-check="{_h(check)}" data-column="{_h(column)}">'
                        f'<label for="{opener}">{_h(text)}</label><span class="duration">{_h(_duration(cell.duration_s))}</span></td>'
                    )
                out.append(
                    f'<tr class="check-row{"" if row_bad else " clean"}"><th>{_h(check)}</th>' + "".join(cells_html) + "</tr>"
                )
            out.append("</tbody></table>")
            for opener, check, column, cell in entries_in_order:
                panels.append(_html_panel(matrix, opener, f"{check} {column}", cell.entries, heatmap_svg, cell.conflict))
        for entry in [e for e in matrix.unplaced if e.row.op == op]:
            opener = f"cell-{next(counter)}"
            opener_of[id(entry)] = opener
            panels.append(_html_panel(matrix, opener, entry.row.nodeid, [entry], heatmap_svg, False))
        reasons = []
        for entry in [e for e in matrix.failures() if e.row.op == op]:
            where = entry.row.where() + (f" [{entry.label}]" if matrix.merged else "")
            reasons.append(
                f'<li class="{entry.row.outcome}-reason"><label for="{opener_of[id(entry)]}"><strong>{_h(entry.row.outcome.upper())}</strong> '
                f"{_h(where)}</label>: {_h(entry.row.message or '(no message)')}<br>reproduce: <code>{_h(matrix.repro(entry))}</code></li>"
            )
        for _opener, _check, _column, cell in entries_in_order:  # found without failing: a suspected edge
            for entry in cell.entries:
                reasons.extend(
                    f'<li class="note-reason"><label for="{opener_of[id(entry)]}"><strong>NOTE</strong> {_h(entry.row.where())}</label>: '
                    f"{_h(note)}</li>"
                    for note in entry.row.finding_notes
                )
        if reasons:
            out += ['<ul class="reasons">'] + reasons + ["</ul>"]
        out += ['<div class="panels">'] + panels + ["</div>", "</section>"]
    conflicts = matrix.conflicts()
    if conflicts:
        out.append('<section class="conflicts"><h2>conflicts</h2><ul>')
        for op, check, column, cell in conflicts:
            outcomes = ", ".join(f"{o} in {label}" for label, o in cell.outcome_by_label().items())
            out.append(f"<li><code>{_h(op)}</code> {_h(check)} {_h(column)}: {_h(outcomes)}</li>")
        out.append("</ul></section>")
    coverage = matrix.coverage()
    if coverage:
        out.append('<section class="coverage"><h2>coverage</h2><ul>')
        for namespace in coverage:
            untested = ", ".join(f"<code>{_h(n)}</code>" for n in namespace.untested) or "none"
            no_autograd = ", ".join(f"<code>{_h(n)}</code>" for n in namespace.no_autograd) or "none"
            out.append(
                f"<li>namespace <code>{_h(namespace.namespace)}</code> ({len(namespace.ops)} op(s)): "
                f"not tested: {untested}; no autograd formula: {no_autograd}</li>"
            )
        out.append("</ul></section>")
    for warning in matrix.warnings():
        out.append(f'<p class="warning"><strong>warning:</strong> {_h(warning)}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_panel(matrix: Matrix, opener: str, what: str, entries: list, heatmap_svg: Callable, conflict: bool) -> str:
    """The panel a cell opens: every run's result in it, whole message, reproduce command, heat map."""
    outcome = worst([e.row.outcome for e in entries])
    parts = [
        f'<input type="checkbox" class="opener" id="{opener}">',
        f'<div class="panel {outcome}" id="{opener}-panel"><label class="close" for="{opener}">close</label>',
        f"<h3>{_h(what)}{' (conflict: the runs disagree)' if conflict else ''}</h3>",
    ]
    for entry in entries:
        row = entry.row
        ran = row.ran_on or row.device or "?"
        if row.device_name:
            ran += f" ({row.device_name})"
        source = matrix.runs[entry.run].source
        parts.append(
            f'<div class="entry {row.outcome}"><p><strong>{_h(_HTML_CELL.get(row.outcome, row.outcome))}</strong> '
            f"in env {_h(entry.label)} (<code>{_h(source)}</code>), ran on {_h(ran)}, "
            f"{_h(_duration(row.duration_s))}<br><code>{_h(row.nodeid)}</code></p>"
        )
        text = row.details or row.message
        if text:
            parts.append(f'<pre class="message">{_h(text)}</pre>')
        if row.outcome != "passed" and matrix.repro(entry) not in text:
            parts.append(f'<p class="repro">reproduce: <code>{_h(matrix.repro(entry))}</code></p>')
        if row.heatmap:
            shape = "x".join(str(n) for n in row.heatmap.get("shape", [])) or "scalar"
            parts.append(
                f'<figure class="heatmap-figure">{heatmap_svg(row.heatmap)}<figcaption>where the gradient of '
                f"input {_h(row.heatmap.get('input') or '?')} ({_h(shape)}) disagrees: |got - expected| per element "
                "(white: agrees; red: the worst; black: NaN/inf; larger inputs max-pooled)</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</div>")
    return "".join(parts)


#: Each file format's renderer.
FORMATS: dict[str, Callable[[Report], str]] = {"json": to_json, "md": to_markdown, "html": to_html}


def write_report(report: Report, target: ReportTarget) -> str:
    """Write ``report`` to ``target.path`` (see :func:`.writing.write_text`); returns the path written.
    Markdown and HTML get :func:`.writing.readable_report`'s text, JSON the text as it was."""
    from .writing import readable_report, write_text

    assert target.path is not None
    shown = report if target.format == "json" else readable_report(report)
    return write_text(target.path, FORMATS[target.format](shown))


assert set(_MD_CELL) == set(OUTCOMES) == set(_HTML_CELL)
