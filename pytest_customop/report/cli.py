"""The ``pytest-customop`` console script.

``pytest-customop merge a.json b.json ... [--html out.html] [--md out.md] [--json out.json]`` merges the
JSON reports of several runs (CPU and GPU runners, shards, other torch versions) into one matrix and
prints it as a table, unless told to write only files (``--quiet``). ``pytest-customop schema`` prints
the JSON Schema of the report. Exit status: 0, 1 when a merged cell failed or conflicts, 2 for bad input.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from typing import Optional, Sequence

__all__ = ["main", "schema_text"]


def schema_text() -> str:
    """The published JSON Schema of the report documents (``report-customop.schema.json``)."""
    return resources.files("pytest_customop.report").joinpath("report-customop.schema.json").read_text(encoding="utf-8")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-customop", description="pytest-customop reports.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser(
        "merge",
        help="merge the JSON reports of several runs into one op x check x device x dtype matrix",
        description="Merge --customop-report=json:PATH files (or merged files) of several runs into one matrix.",
    )
    merge.add_argument("inputs", nargs="+", metavar="REPORT", help="JSON reports (or merged documents) to merge")
    merge.add_argument("--html", metavar="PATH", help="write the clickable HTML page to PATH")
    merge.add_argument("--md", metavar="PATH", help="write Markdown (a CI job summary) to PATH")
    merge.add_argument("--json", metavar="PATH", help="write the merged JSON document to PATH")
    merge.add_argument("-q", "--quiet", action="store_true", help="print no table, only the lines naming the files")
    merge.add_argument("--color", choices=("yes", "no", "auto"), default="auto", help="colour the table (default: auto)")
    commands.add_parser("schema", help="print the JSON Schema of the report documents")
    return parser


def _print_table(lines: list, color: str) -> None:
    from _pytest._io import TerminalWriter

    writer = TerminalWriter(sys.stdout)
    if color != "auto":
        writer.hasmarkup = color == "yes"
    for line in lines:
        for text, markup in line:
            writer.write(text, **markup)
        writer.line("")
    writer.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        sys.stdout.write(schema_text())
        return 0
    import json

    from .formats import matrix_html
    from .matrix_views import matrix_markdown, matrix_terminal
    from .merge import InputError, merge_runs, read_inputs
    from .writing import write_text

    try:
        matrix = merge_runs(read_inputs(list(args.inputs)))
    except InputError as exc:
        print(f"pytest-customop merge: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        _print_table(matrix_terminal(matrix, shutil.get_terminal_size((120, 24)).columns), args.color)
    for fmt, path, render in (
        ("json", args.json, lambda: json.dumps(matrix.to_json(), indent=2) + "\n"),
        ("md", args.md, lambda: matrix_markdown(matrix)),
        ("html", args.html, lambda: matrix_html(matrix)),
    ):
        if path:
            print(f"customop merged report ({fmt}) written to {write_text(path, render())}")
    return 1 if matrix.failures() or matrix.conflicts() else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
