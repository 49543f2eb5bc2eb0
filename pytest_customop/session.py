"""The run's one object (as pytest's ``LogXML``, xdist's ``DSession``, syrupy's ``SnapshotSession``):
created in ``pytest_configure`` and kept under :data:`session_key`, it owns the settings, the check
registry, the marker errors, and the one way to find, run and reproduce an item's case.

``plugin.py`` delegates its hooks here; the report (``report/session.py``) is handed this object and
never imports the hooks module. Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Optional

import pytest

from .options import Settings

if TYPE_CHECKING:
    from .cases import Case
    from .checks.base import CheckResult
    from .checks.registry import CheckRegistry
    from .under_test import CustomOpUnderTest

__all__ = ["CustomOpSession", "case_key", "definition_id", "result_key", "session_key"]

#: The Case (op, device, dtype, check) of every customop item, marked or discovered: the one answer
#: to "what is this item's case", set when the item is collected.
case_key = pytest.StashKey["Case"]()
#: The CheckResult of an item whose check ran.
result_key = pytest.StashKey["CheckResult"]()
#: The ``customop`` object an item's test was given (to flag a test that never calls check()).
under_test_key = pytest.StashKey["CustomOpUnderTest"]()

# pytest configs alive in this process: more than one means a run nested in a test (pytester's
# in-process runs), which must leave the outer process's garbage collector alone.
_live_configs = 0


def definition_id(item: pytest.Item) -> str:
    """The node id of the test function an item was generated from (its marker's errors are keyed by it)."""
    parent = item.parent.nodeid if item.parent is not None else ""
    return f"{parent}::{getattr(item, 'originalname', item.name)}"


class CustomOpSession:
    """The state of one pytest run (one per ``config``; each pytest-xdist worker has its own)."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        global _live_configs
        _live_configs += 1
        self.config = config
        self.settings = settings
        #: Definition node id -> the one-line error of its customop marker (its items fail with it).
        self.marker_errors: dict[str, str] = {}
        self._registry: Optional[CheckRegistry] = None
        self._asked_plugins: set[int] = set()  # plugins whose register-checks hook filled the registry

    def close(self) -> None:
        global _live_configs
        _live_configs -= 1

    # -- the check registry -------------------------------------------------------------------------
    @property
    def registry(self) -> CheckRegistry:
        """The check registry: built through the register-checks hook on first use, and completed on
        every later use with the hooks of conftests registered since (a nested directory's conftest is
        loaded only when pytest collects that directory)."""
        from .checks.registry import CheckRegistrationError, CheckRegistry

        hook = self.config.hook.pytest_customop_register_checks
        try:
            if self._registry is None:
                registry = CheckRegistry()
                hook(registry=registry)
                self._registry = registry
                self._asked_plugins = {id(impl.plugin) for impl in hook.get_hookimpls()}
                self._validate_selected_checks()
            else:
                # pluggy calls the last registered first: reversed, as the hook call above orders them
                for impl in reversed(hook.get_hookimpls()):
                    if id(impl.plugin) not in self._asked_plugins:
                        self._asked_plugins.add(id(impl.plugin))
                        impl.function(**dict.fromkeys(impl.argnames, self._registry))
        except CheckRegistrationError as exc:
            raise pytest.UsageError(f"pytest-customop: {exc}") from None
        return self._registry

    def _validate_selected_checks(self) -> None:
        assert self._registry is not None
        unknown = [c for c in self.settings.checks or [] if c not in self._registry]
        if unknown:
            raise pytest.UsageError(
                f"pytest-customop: {self.settings.source_of('customop_checks')} names unknown check(s) "
                f"{', '.join(unknown)}; known: {', '.join(self._registry.names())}"
            )

    # -- an item's case ---------------------------------------------------------------------------
    @staticmethod
    def case_of(item: pytest.Item) -> Optional[Case]:
        """This item's case, None for an item that is not a customop item."""
        return item.stash.get(case_key, None)

    def marker_error_of(self, item: pytest.Item) -> Optional[str]:
        """The error of the customop marker this item was generated from, if it was rejected."""
        if not self.marker_errors or item.parent is None:
            return None
        return self.marker_errors.get(definition_id(item))

    @staticmethod
    def result_of(item: pytest.Item) -> Optional[CheckResult]:
        return item.stash.get(result_key, None)

    def repro(self, item: pytest.Item) -> str:
        """The command that reruns this item with the same seed, from the directory pytest was run in
        (its path relative to there, as pytest prints ids; a discovered item's id is no path)."""
        from .report.model import repro_command

        nodeid = item.nodeid
        if not nodeid.startswith("customop::"):
            # What Config.cwd_relative_nodeid does (its argument became a NodeId in pytest 9.2).
            path, sep, rest = nodeid.partition("::")
            relative = os.path.relpath(self.config.rootpath / path, self.config.invocation_params.dir)
            nodeid = Path(relative).as_posix() + sep + rest
        return repro_command(nodeid, self.settings.seed)

    def item_seed(self, item: pytest.Item) -> int:
        from .cases import item_seed

        return item_seed(self.settings.seed, item.nodeid)

    def under_test(self, item: pytest.Item, case: Case) -> CustomOpUnderTest:
        """The ``customop`` object of ``item``: the op under test bound to its case, failing and
        skipping the item through pytest, its result kept for the report."""
        from .under_test import CustomOpUnderTest

        def fail(message: str) -> NoReturn:
            __tracebackhide__ = True  # failures and skips point at the test, not at the plugin
            pytest.fail(message, pytrace=False)

        def skip(reason: str) -> NoReturn:
            __tracebackhide__ = True
            pytest.skip(reason)

        def remember(result: CheckResult) -> None:
            item.stash[result_key] = result

        under_test = item.stash[under_test_key] = CustomOpUnderTest(
            case,
            self.registry,
            self.settings,
            self.item_seed(item),
            self.repro(item),
            nodeid=item.nodeid,
            fail=fail,
            skip=skip,
            on_result=remember,
        )
        return under_test

    def flag_unverified(self, item: pytest.Item) -> None:
        """Fail a test that passed without verifying anything: it was given ``customop`` and neither
        ran a check (``check()``, ``run_check()``) nor called the op or took its samples to verify it
        itself (``customop_samples`` counts)."""
        under_test = item.stash.get(under_test_key, None)
        if under_test is None or under_test.verified:
            return
        pytest.fail(
            f"{item.nodeid}: requests the customop fixture but never calls customop.check() (nor run_check(), "
            "the op, or its samples): nothing was verified; call customop.check() in the test",
            pytrace=False,
        )

    def run_discovered(self, item: pytest.Item) -> None:
        """The body of a discovered op's item: what a marked test's ``customop.check()`` does."""
        case = self.case_of(item)
        assert case is not None, f"{item.nodeid} has no case"
        self.under_test(item, case).check()

    # -- collection --------------------------------------------------------------------------------
    def stash_marked_cases(self, items: list[pytest.Item]) -> set[tuple[str, str]]:
        """Stash the case of every marked item (parametrized through ``_customop_case``); the
        ``(qualname, overload)`` of every op a marker covers."""
        covered = set()
        for item in items:
            callspec = getattr(item, "callspec", None)
            case = callspec.params.get("_customop_case") if callspec is not None else None
            if case is not None:
                item.stash[case_key] = case
                covered.add((case.spec.op.qualname, case.spec.op.overload_name))
        return covered

    def discover(self, session: pytest.Session, namespaces: list[str], covered: set[tuple[str, str]]) -> list[pytest.Item]:
        """Items for the ops of ``namespaces`` that no marker covers, each with its case stashed."""
        from .discovery import discover_items

        return discover_items(
            session, namespaces, covered, registry=self.registry, settings=self.settings, run=self.run_discovered
        )

    def listing_entries(self, items: list[pytest.Item]) -> list[tuple[str, Case]]:
        """``(source, case)`` of every customop item, for ``--customop-list``."""
        entries = []
        for item in items:
            case = self.case_of(item)
            if case is not None:
                namespace = getattr(item, "namespace", None)
                entries.append((f"--customop-namespace={namespace}" if namespace else definition_id(item), case))
        return entries

    def freeze_gc(self, items: list[pytest.Item]) -> None:
        """Freeze the objects alive now out of the garbage collector (see gc_freeze), in a top-level
        run that has customop items."""
        if _live_configs > 1 or not self.settings.gc_freeze:
            return
        if any(case_key in item.stash for item in items):
            from .gc_freeze import freeze_objects_alive_now, unfreeze_at_exit

            if freeze_objects_alive_now():
                unfreeze_at_exit()


#: The run's :class:`CustomOpSession`.
session_key = pytest.StashKey[CustomOpSession]()
