"""Writing report files safely: each file on its own, text that any reader can show, and a replacement
that never leaves half a file nor breaks what the path points at.

- Text for people (Markdown, HTML, the terminal) goes through :func:`readable_report`: ANSI escape
  sequences (colours an op's message carried) are removed, other control characters and lone
  surrogates become visible escapes (``\\x07``, ``\\udcff``), so the page shows what was said.
- A regular file (or a missing one) is replaced atomically: a temporary file beside it, renamed over
  it. A symlink is followed: its target is replaced and the link stays a link. A path that is not a
  regular file (``/dev/stdout``, a fifo) is written in place: replacing a device node is never right.

Pure file handling: no pytest, no torch.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tempfile

from .model import NamespaceCoverage, Report, Row

__all__ = ["readable_report", "readable_text", "write_text"]

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def readable_text(text: str) -> str:
    """``text`` without ANSI escape sequences, its other control characters (newline and tab kept) and
    lone surrogates written as Python escapes."""
    text = _ANSI.sub("", str(text))
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _readable_row(row: Row) -> Row:
    return dataclasses.replace(
        row,
        op=None if row.op is None else readable_text(row.op),
        check=None if row.check is None else readable_text(row.check),
        message=readable_text(row.message),
        details=readable_text(row.details),
        nodeid=readable_text(row.nodeid),
    )


def readable_report(report: Report) -> Report:
    """A copy of ``report`` whose texts are :func:`readable_text` (for Markdown, HTML and the terminal)."""
    return dataclasses.replace(
        report,
        rows=[_readable_row(row) for row in report.rows],
        warnings=[readable_text(w) for w in report.warnings],
        coverage=[
            NamespaceCoverage(
                readable_text(c.namespace),
                [readable_text(o) for o in c.ops],
                [readable_text(o) for o in c.untested],
                [readable_text(o) for o in c.no_autograd],
            )
            for c in report.coverage
        ],
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> str:
    """Write ``text`` (UTF-8; anything unencodable backslash-escaped) to ``path``; returns the path
    written, which is a symlink's target when ``path`` is a symlink. Missing folders are created."""
    real = os.path.realpath(path)  # through symlinks: replace the target, keep the link
    data = text.encode("utf-8", "backslashreplace")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(f"{path} is a directory")
        with open(real, "wb") as stream:  # a device or a fifo: written in place, never replaced
            stream.write(data)
        return real
    folder = os.path.dirname(real)
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".customop-report-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        # mkstemp makes it private: give it the replaced file's mode, else a new file's
        os.chmod(temporary, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
        os.replace(temporary, real)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return real
