"""``pytest --customop-report-from-journal=JOURNAL --customop-report=...``: the reports of a run that
never finished (or whose report files could not be written), rebuilt from the journal it left. Runs
no test and imports no torch."""

from __future__ import annotations

import os

import pytest

from .formats import TargetError, parse_targets, write_report
from .journal import JournalError, build_report, read_journal

__all__ = ["rebuild_from_journal"]


def rebuild_from_journal(config: pytest.Config, journal: str) -> int:
    """Write the ``--customop-report`` targets (the terminal table when none is given) from ``journal``;
    the exit status: 0 when every report was written, 1 otherwise."""
    from .terminal import render
    from .writing import readable_report

    base = str(config.invocation_params.dir)
    try:
        targets = parse_targets(config.getoption("customop_report") or ["terminal"], base)
    except TargetError as exc:
        raise pytest.UsageError(f"pytest-customop: {exc}") from None
    path = os.path.abspath(os.path.join(base, os.path.expanduser(journal)))
    try:
        report = build_report(read_journal(path), source=path)
    except JournalError as exc:
        raise pytest.UsageError(f"pytest-customop: --customop-report-from-journal={journal}: {exc}") from None
    status = 0
    for target in targets:
        if target.path is None:
            print("customop report (rebuilt from the journal)")
            for line in render(readable_report(report), 120):
                print("".join(text for text, _ in line))
            continue
        try:
            write_report(report, target)
        except Exception as exc:  # each file on its own
            print(f"customop report ({target.format}) NOT written to {target.path}: {type(exc).__name__}: {exc}")
            status = 1
        else:
            print(f"customop report ({target.format}) written to {target.path}")
    return status
