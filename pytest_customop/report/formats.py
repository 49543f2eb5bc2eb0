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
from typing import Callable, Optional

from .model import OUTCOMES, Report, Row, column_sort_key, worst

__all__ = ["FORMATS", "ReportTarget", "TargetError", "parse_target", "parse_targets", "write_report"]


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
        raise TargetError(
            f"{given}: expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)}{hint}"
        )
    if not path.strip():
        raise TargetError(f"{given}: no path after {fmt}:")
    if path.strip().endswith(("/", os.sep)):
        raise TargetError(f"{given}: the path ends with a slash, so it names a folder; give a file path such as {path.strip()}report.{fmt}")
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
    return out + [""] if out else out


# -- HTML -------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}
.passed{background:#dff5df}.failed,.error{background:#fbd9d9;font-weight:bold}
.skipped,.xfailed{background:#fff4cc}.xpassed{background:#ffe3b3;font-weight:bold}
code{background:#f5f5f5;padding:0 .2em}
.warning{color:#a60}
""".strip()
_HTML_CELL = {"passed": "passed", "failed": "FAILED", "error": "ERROR", "skipped": "skipped", "xfailed": "xfail", "xpassed": "XPASS"}


def _h(text: object) -> str:
    return html.escape(str(text), quote=True)


def to_html(report: Report) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>customop report</title>',
        f"<style>{_CSS}</style></head><body>",
        "<h1>customop report</h1>",
        f'<p class="header">{_h(report.header_text())}</p>',
        f'<p class="totals"><strong>{_h(report.totals_text())}</strong></p>',
    ]
    for op in report.ops():
        rows = report.rows_of(op)
        checks, columns = _grid(report, rows)
        out.append(f'<section class="op"><h2><code>{_h(op)}</code></h2>')
        if not checks:  # only items whose marker was rejected: no table, their reasons below
            out += _html_reasons(report, rows) + ["</section>"]
            continue
        out.append("<table><thead><tr><th>check</th>")
        out.append("".join(f"<th>{_h(c)}</th>" for c in columns) + "</tr></thead><tbody>")
        for check in checks:
            out.append(f"<tr><th>{_h(check)}</th>")
            for column in columns:
                cell = [r for r in rows if (r.check or "?") == check and r.column == column]
                if not cell:
                    out.append("<td>-</td>")
                    continue
                outcome = worst([r.outcome for r in cell])
                title = "; ".join(r.message for r in cell if r.message)
                out.append(f'<td class="{outcome}" title="{_h(title)}">{_h(_HTML_CELL.get(outcome, outcome))}</td>')
            out.append("</tr>")
        out.append("</tbody></table>")
        out += _html_reasons(report, rows)
        out.append("</section>")
    unnamed = report.rows_of(None)
    if unnamed:
        out += ['<section class="op"><h2>items whose op is not known</h2>'] + _html_reasons(report, unnamed) + ["</section>"]
    if report.coverage:
        out.append('<section class="coverage"><h2>coverage</h2><ul>')
        for entry in sorted(report.coverage, key=lambda c: c.namespace):
            untested = ", ".join(f"<code>{_h(n)}</code>" for n in entry.untested) or "none"
            no_autograd = ", ".join(f"<code>{_h(n)}</code>" for n in entry.no_autograd) or "none"
            out.append(
                f"<li>namespace <code>{_h(entry.namespace)}</code> ({len(entry.ops)} op(s)): "
                f"not tested: {untested}; no autograd formula: {no_autograd}</li>"
            )
        out.append("</ul></section>")
    for warning in report.warnings:
        out.append(f'<p class="warning"><strong>warning:</strong> {_h(warning)}</p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _html_reasons(report: Report, rows: list[Row]) -> list[str]:
    items = []
    for row in rows:
        if row.outcome in ("failed", "error"):
            where = row.where()
            items.append(
                f'<li class="{row.outcome}-reason"><strong>{_h(row.outcome.upper())}</strong> {_h(where)}: '
                f"{_h(row.message or '(no message)')}<br>reproduce: <code>{_h(report.repro(row))}</code></li>"
            )
    return ["<ul>"] + items + ["</ul>"] if items else []


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
