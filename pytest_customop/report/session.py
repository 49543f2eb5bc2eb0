"""pytest hooks of the verification report (registered by the plugin's ``pytest_configure``).

Every process that runs tests (the only one, or each pytest-xdist worker) puts on each report of a
customop item a plain dict (``report.customop``: op, check, device, dtype, and the check's result when
it ran) and, on the teardown report, ``customop_*`` entries in ``user_properties`` (junitxml writes them
as ``<property>``). The controller (the only process, or the xdist controller) gathers the rows in
``pytest_runtest_logreport``, so ``-n 0`` and ``-n 2`` build the same rows, and a worker crash still
leaves its error report. A worker's first report also carries every item it collected (so items a crash
left unrun become error rows), and its ``config.workeroutput`` the coverage of the namespaces under test,
which only workers can see (the controller never imports test modules).

The controller appends each item's start and result to the run's :class:`~.journal.Journal` as they
arrive (a file beside the first file report), and builds the reports from it at the end, so they list
every collected item and say when the run stopped early. Each report file is written on its own: one
that cannot be written is a warning naming its path, the others still come out. ``--collect-only`` and
``--customop-list`` write nothing (an earlier run's reports stay).
"""

from __future__ import annotations

import os
import sys
import warnings
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import pytest

from .formats import ReportTarget, write_report
from .journal import Journal, build_report, journal_path_for
from .model import ItemOutcome, Phase, Report, first_line

if TYPE_CHECKING:
    from ..session import CustomOpSession

__all__ = ["ReportPlugin", "XdistReportHooks"]

_meta_key = pytest.StashKey[Optional[dict]]()
_outcome_key = pytest.StashKey[ItemOutcome]()
_where_key = pytest.StashKey[dict[str, str]]()
_WORKEROUTPUT_KEY = "customop_report"


def _op_name_of(marker: Any) -> Optional[str]:
    """The op a marker names, read without resolving it (for items whose marker was rejected)."""
    if marker is None or not marker.args:
        return None
    op = marker.args[0]
    if isinstance(op, str):
        return op.strip()
    from ..torch_internals import op_object_name

    name = op_object_name(op)
    if name is not None:
        return name[: -len(".default")] if name.endswith(".default") else name
    value = getattr(op, "__name__", None)
    return value if isinstance(value, str) and "::" in value else None


def item_meta(session: CustomOpSession, item: pytest.Item) -> Optional[dict]:
    """``{"op", "check", "device", "dtype"}`` of a customop item (builtins), None for other items."""
    case = session.case_of(item)
    if case is not None:
        from ..dtypes import dtype_id

        return {"op": case.spec.op.name, "check": case.check, "device": case.device, "dtype": dtype_id(case.dtype)}
    if session.marker_error_of(item) is not None:
        return {"op": _op_name_of(item.get_closest_marker("customop")), "check": None, "device": None, "dtype": None}
    return None


def _strip_prefix(text: str) -> str:
    for prefix in ("Failed: ", "Skipped: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def report_message(report: pytest.TestReport) -> str:
    """The one-line reason of a failed or skipped report (the crash line, the skip reason)."""
    info = getattr(report, "customop", None) or {}
    if report.failed and report.when == "call" and info.get("summary") and info.get("result") == "failed":
        return info["summary"]
    longrepr = report.longrepr
    if longrepr is None:
        if report.passed and info.get("notes"):
            return "; ".join(info["notes"])
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, "Skipped: reason")
        return _strip_prefix(first_line(longrepr[2]))
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return _strip_prefix(first_line(crash.message))
    return _strip_prefix(first_line(str(longrepr)))


def report_phase(report: pytest.TestReport) -> Phase:
    return Phase(
        when=report.when,
        outcome=report.outcome,
        message=report_message(report),
        wasxfail=getattr(report, "wasxfail", None),
        duration=float(getattr(report, "duration", 0.0) or 0.0),
        details=report_details(report),
    )


def report_details(report: pytest.TestReport) -> str:
    """The whole message of a failed or skipped report (every line of a failure), for the HTML report."""
    longrepr = report.longrepr
    if longrepr is None or report.passed:
        return ""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return _strip_prefix(str(text).strip())[:20000]


def _samples_text(samples: Optional[dict]) -> str:
    return f"{samples['checked']}/{samples['total']}" if samples else ""


class ReportPlugin:
    """Gathers the rows of the report and writes it; one per run, reading the run's :class:`CustomOpSession`."""

    def __init__(self, session: CustomOpSession, targets: list[ReportTarget]) -> None:
        self.session = session
        self.config = session.config
        self.targets = targets
        self.is_controller = not hasattr(self.config, "workerinput")
        self.items: dict[str, dict] = {}  # nodeid -> meta of every customop item collected
        self.details: dict[str, dict] = {}  # nodeid -> the latest report.customop seen
        self.outcomes: dict[str, ItemOutcome] = {}  # nodeid -> the phases reported
        self.coverage: dict[str, dict[str, list[str]]] = {}  # namespace -> {"ops", "no_autograd"}
        self.workers_reported: list[str] = []
        self.reruns: dict[str, int] = {}  # nodeid -> attempts pytest-rerunfailures reran
        self.crashed_workers: list[str] = []
        # What the workers found (torch version, devices), so that the controller need not import torch.
        self.worker_torch: Optional[str] = None
        self.worker_devices: list[str] = []
        self.worker_environment: dict = {}
        self.report: Optional[Report] = None
        self.written: list[ReportTarget] = []
        self.not_written: list[tuple[ReportTarget, str]] = []
        self._items_sent = False
        self._items_journaled: set[str] = set()
        self.stopped: Optional[str] = None  # why the run ended early (Ctrl-C, pytest.exit, a collection error)
        option = self.config.option
        # Listing or collecting only runs nothing: the reports of an earlier run are left alone.
        self.writes = bool(targets) and not getattr(option, "collectonly", False) and not getattr(option, "customop_list", False)
        self.journal = Journal(
            self._journal_path() if self.writes and self.is_controller else None,
            {"seed": session.settings.seed, "torch": _installed_torch_version()},
        )

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    def _journal_path(self) -> Optional[str]:
        for target in self.targets:  # beside the first report that is (or will be) a regular file
            if target.path is not None and (not os.path.exists(target.path) or os.path.isfile(target.path)):
                return journal_path_for(target.path)
        return None

    def _journal_items(self, items: dict[str, dict]) -> None:
        new = {nodeid: meta for nodeid, meta in items.items() if nodeid not in self._items_journaled}
        if new and self.writes:
            self._items_journaled.update(new)
            self.journal.record("items", items=new)

    # -- on every process that runs tests -----------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            meta = item_meta(self.session, item)
            item.stash[_meta_key] = meta
            if meta is not None:
                self.items[item.nodeid] = meta
        if self.is_controller and self.enabled:
            if "torch" in sys.modules:  # the test modules imported it: say which devices this run has
                from ..devices import available_devices, run_environment

                self.journal.record(
                    "environment",
                    torch=str(sys.modules["torch"].__version__),
                    devices=available_devices(),
                    environment=run_environment(),
                )
            self._journal_items(self.items)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo) -> Any:
        report = yield  # outermost wrapper: xfail and skip handling already applied
        meta = item.stash.get(_meta_key, None)
        if meta is None:
            return report
        info = dict(meta)
        result = self.session.result_of(item)
        if result is not None:
            info.update(
                result=str(getattr(result.outcome, "value", result.outcome)),
                summary=first_line(result.summary()),
                samples={"checked": int(result.samples_checked), "total": int(result.samples_total)},
                notes=[str(note) for note in result.notes],
            )
            from .heatmap import finding_heatmap

            info.update(finding_heatmap(result))
        if report.when == "setup" and report.passed and meta.get("device"):  # it runs: on which device
            from ..devices import where_item_runs

            item.stash[_where_key] = where_item_runs(meta["device"])
        where: dict[str, str] = item.stash.get(_where_key, {})
        info.update(where)
        report.customop = info  # builtins only: pytest-xdist serializes the report's attributes
        if self.enabled and not self.is_controller and not self._items_sent:
            # The first report a worker sends carries every item it collected, so that the controller
            # can list the items a crash left unrun even when no worker lives to send its output.
            report.customop_items = self.items
            self._items_sent = True
        if report.when == "setup":  # a new attempt (pytest-rerunfailures reruns from setup)
            item.stash[_outcome_key] = ItemOutcome()
        phases = item.stash.setdefault(_outcome_key, ItemOutcome())
        phases.add(report_phase(report))
        if report.when == "teardown":
            outcome, message = phases.outcome()
            properties = [(f"customop_{key}", meta[key]) for key in ("op", "check", "device", "dtype")]
            properties += [
                ("customop_outcome", outcome),
                ("customop_message", message),
                ("customop_samples", _samples_text(info.get("samples"))),
            ]
            report.user_properties.extend((name, "" if value is None else str(value)) for name, value in properties)
        return report

    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        if self.enabled and self.is_controller and self.writes:
            self.journal.record("start", nodeid=nodeid)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not (self.enabled and self.is_controller):
            return
        worker_items = getattr(report, "customop_items", None) or {}
        self.items.update(worker_items)
        self._journal_items(worker_items)
        if report.outcome == "rerun":  # pytest-rerunfailures: this attempt failed, the item runs again
            self.reruns[report.nodeid] = self.reruns.get(report.nodeid, 0) + 1
            self.outcomes.pop(report.nodeid, None)
            return
        info = getattr(report, "customop", None)
        if info is not None:
            self.details[report.nodeid] = info
        if info is not None or report.when == "???" or report.nodeid in self.outcomes:
            phases = self.outcomes.setdefault(report.nodeid, ItemOutcome())
            phases.add(report_phase(report))
            if report.when in ("teardown", "???"):  # the item is over: its row, on disk now
                self._journal_result(report.nodeid, phases)

    def _journal_result(self, nodeid: str, phases: ItemOutcome) -> None:
        meta = self.details.get(nodeid) or self.items.get(nodeid)
        if meta is None:  # not a customop item
            return
        outcome, message = phases.outcome()
        if message.startswith(f"{nodeid}: "):  # marker errors name the item, which the row does already
            message = message[len(nodeid) + 2 :]
        if self.reruns.get(nodeid):
            message = "; ".join(filter(None, [f"{outcome} after {self.reruns[nodeid]} rerun(s)", message]))
        self.journal.record(
            "result",
            nodeid=nodeid,
            op=meta.get("op"),
            check=meta.get("check"),
            device=meta.get("device"),
            dtype=meta.get("dtype"),
            outcome=outcome,
            message=message,
            duration_s=round(phases.duration, 6),
            samples=meta.get("samples"),
            ran_on=meta.get("ran_on"),
            device_name=meta.get("device_name"),
            details=phases.details(),
            heatmap=meta.get("heatmap"),
        )

    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        value = excinfo.value
        text = str(getattr(value, "msg", None) or value or "").strip()
        self.stopped = f"interrupted ({excinfo.typename}{': ' + text if text else ''})"

    def _stop_reason(self, session: pytest.Session) -> Optional[str]:
        if self.stopped:
            return self.stopped
        for reason in (session.shouldstop, session.shouldfail):
            if reason:
                return f"stopped early ({reason}; -x/--maxfail)" if "failure" in str(reason) else f"stopped early ({reason})"
        return None

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.enabled:
            return
        if hasattr(self.config, "workerinput"):
            import torch

            from ..devices import available_devices, run_environment
            from .coverage import namespace_ops

            self.config.workeroutput[_WORKEROUTPUT_KEY] = {  # type: ignore[attr-defined]  # set by pytest-xdist
                "coverage": namespace_ops(self._namespaces(self.items.values())),
                "torch": str(torch.__version__),
                "devices": available_devices(),
                "environment": run_environment(),
            }
            return
        if not self.writes:
            return
        if not self.config.pluginmanager.hasplugin("dsession"):
            from .coverage import namespace_ops  # no workers: this process imported the ops

            self.coverage = namespace_ops(self._namespaces(self.items.values()))
        if self.coverage:
            self.journal.record("coverage", coverage=self.coverage)
        self.journal.record("end", stopped=self._stop_reason(session), crashed_workers=sorted(self.crashed_workers))
        try:
            self.report = self.build()
        except Exception as exc:  # the plugin's own bug: say so, and leave junit.xml and the journal be
            self.journal.close(remove=False)
            warnings.warn(
                pytest.PytestWarning(f"pytest-customop: could not build the report: {type(exc).__name__}: {exc}"), stacklevel=1
            )
            return
        for target in self.targets:
            if target.path is None:
                continue
            try:
                write_report(self.report, target)
            except Exception as exc:  # one file lost is not every report lost
                self.not_written.append((target, f"{type(exc).__name__}: {exc}"))
                warnings.warn(
                    pytest.PytestWarning(
                        f"pytest-customop: could not write the {target.format} report to {target.path}: {type(exc).__name__}: {exc}"
                    ),
                    stacklevel=1,
                )
            else:
                self.written.append(target)
        if self.journal.error:
            warnings.warn(pytest.PytestWarning(f"pytest-customop: {self.journal.error}"), stacklevel=1)
        self.journal.close(remove=not self.not_written)
        for warning in self.report.warnings:
            warnings.warn(pytest.PytestWarning(f"pytest-customop: {warning}"), stacklevel=1)  # about the run, not a line

    # -- on the controller ------------------------------------------------------------------------
    def merge_worker(self, worker_id: str, output: Optional[dict]) -> None:
        """Take in what one pytest-xdist worker sent at its end (None when it crashed)."""
        if output is None:
            self.crashed_workers.append(worker_id)
            return
        self.workers_reported.append(worker_id)
        self.worker_torch = output.get("torch", self.worker_torch)
        self.worker_environment = output.get("environment", self.worker_environment)
        for device in output.get("devices", []):
            if device not in self.worker_devices:
                self.worker_devices.append(device)
        if self.writes:
            self.journal.record(
                "environment", torch=self.worker_torch, devices=list(self.worker_devices), environment=self.worker_environment
            )
        for namespace, found in output.get("coverage", {}).items():
            known = self.coverage.setdefault(namespace, {"ops": [], "no_autograd": []})
            for key in ("ops", "no_autograd"):
                known[key] = sorted(set(known[key]) | set(found.get(key, [])))

    @staticmethod
    def _namespaces(metas: Any) -> list[str]:
        return sorted({m["op"].split("::", 1)[0] for m in metas if m.get("op") and "::" in m["op"]})

    def build(self) -> Report:
        """The report of the journal so far (every result, every collected item without one)."""
        if self.worker_torch is not None:  # a pytest-xdist controller: the workers said
            torch_version, devices = self.worker_torch, list(self.worker_devices)
            environment = dict(self.worker_environment)
        else:
            import torch

            from ..devices import available_devices, run_environment

            torch_version, devices, environment = str(torch.__version__), available_devices(), run_environment()
        report = build_report(self.journal.records, torch=torch_version, devices=devices, environment=environment)
        report.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return report

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.report is None:
            return
        if any(t.format == "terminal" for t in self.targets):
            from .terminal import render
            from .writing import readable_report

            width = self.config.get_terminal_writer().fullwidth
            terminalreporter.write_sep("=", "customop report")
            for line in render(readable_report(self.report), width):
                for text, markup in line:
                    terminalreporter.write(text, **markup)
                terminalreporter.line("")
        for target in self.written:
            terminalreporter.write_line(f"customop report ({target.format}) written to {target.path}")
        for target, why in self.not_written:
            terminalreporter.write_line(f"customop report ({target.format}) NOT written to {target.path}: {why}", red=True)
        if self.not_written and self.journal.path:
            terminalreporter.write_line(
                f"customop journal kept at {self.journal.path}: rebuild with "
                f"pytest --customop-report-from-journal={self.journal.path} --customop-report=FORMAT:PATH"
            )


def _installed_torch_version() -> str:
    """torch's version without importing it (a pytest-xdist controller never does)."""
    if "torch" in sys.modules:
        return str(sys.modules["torch"].__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "?"


class XdistReportHooks:
    """The controller's side of pytest-xdist; registered only when pytest-xdist is installed."""

    def __init__(self, plugin: ReportPlugin) -> None:
        self.plugin = plugin

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        output = getattr(node, "workeroutput", None) or {}
        worker_id = getattr(getattr(node, "gateway", None), "id", "?")
        # A crashed worker sends no output: what it ran arrived report by report, the rest is lost.
        self.plugin.merge_worker(worker_id, output.get(_WORKEROUTPUT_KEY))
