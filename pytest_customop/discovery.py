"""Namespace discovery (``--customop-namespace``) and the ``--customop-list`` listing.

Discovered ops become :class:`CustomOpItem` items, children of one :class:`DiscoveredOps` collector per
run (node ids ``customop::mylib::op[cpu-float64-gradcheck]``), checked on samples derived from their
schema. The plugin never imports modules to find ops: the project's conftest loads its libraries
(``import mylib`` or ``torch.ops.load_library(path)``) before collection ends.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence

import pytest

from .session import case_key

if TYPE_CHECKING:
    from .cases import Case
    from .checks.registry import CheckRegistry
    from .marker import CustomOpSpec
    from .options import Settings

__all__ = ["CustomOpItem", "DiscoveredOps", "NamespaceErrorItem", "discover_items", "format_listing", "parse_namespaces"]

NAMESPACE_ENV = "CUSTOMOP_NAMESPACES"


def parse_namespaces(cli: Optional[Sequence[str]], env: Mapping[str, str], ini: Sequence[str]) -> list[str]:
    """The namespaces to discover: every ``--customop-namespace`` (comma-separated values allowed), else
    the environment variable ``CUSTOMOP_NAMESPACES``, else the ini key ``customop_namespaces``."""
    for source in (cli or [], [env.get(NAMESPACE_ENV, "")], ini or []):
        names = [part.strip() for value in source for part in str(value).split(",") if part.strip()]
        if names:
            return list(dict.fromkeys(names))
    return []


class DiscoveredOps(pytest.Collector):
    """The parent of the items ``--customop-namespace`` generates (pytest items need a collector)."""

    def collect(self) -> Iterable[Any]:
        return []  # its items are made in pytest_collection_modifyitems, once covered ops are known


class CustomOpItem(pytest.Item):
    """One discovered op checked on one device and dtype by one check; its case is in ``item.stash``
    (:data:`pytest_customop.session.case_key`), like a marked item's."""

    def __init__(self, *, case: Case, namespace: str, run: Callable[[CustomOpItem], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stash[case_key] = case
        self.namespace = namespace
        self._run = run

    def runtest(self) -> None:
        self._run(self)

    def reportinfo(self) -> tuple[Any, int, str]:
        # An int line, never None: pytest asserts on it when it reports a skip mark's location.
        return self.path, 0, f"customop {self.name} (--customop-namespace={self.namespace})"


class NamespaceErrorItem(pytest.Item):
    """Stands for a namespace that cannot be discovered, and fails with why."""

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def runtest(self) -> None:
        pytest.fail(self.message, pytrace=False)

    def reportinfo(self) -> tuple[Any, int, str]:
        return self.path, 0, f"customop namespace {self.name}"


def _overloads(qualname: str) -> list[str]:
    import torch

    namespace, name = qualname.split("::", 1)
    packet = getattr(getattr(torch.ops, namespace), name)
    return sorted(packet.overloads(), key=lambda o: (o != "default", o))


def discover_items(
    session: pytest.Session,
    namespaces: Sequence[str],
    covered: set[tuple[str, str]],
    *,
    registry: CheckRegistry,
    settings: Settings,
    run: Callable[[CustomOpItem], None],
) -> list[pytest.Item]:
    """Items for every op overload in ``namespaces`` not in ``covered`` (``(qualname, overload)``)."""
    from .cases import build_cases
    from .marker import MarkerError, parse_marker
    from .ops import ops_in_namespace

    parent = DiscoveredOps.from_parent(session, name="customop", nodeid="customop")
    items: list[pytest.Item] = []
    for namespace in namespaces:
        qualnames = ops_in_namespace(namespace)
        if not qualnames:
            items.append(
                NamespaceErrorItem.from_parent(
                    parent,
                    name=namespace,
                    message=(
                        f"--customop-namespace={namespace}: no op is registered in namespace {namespace!r} at "
                        "the end of collection; load the library that defines it from conftest.py (import the "
                        "Python module that registers the ops, or torch.ops.load_library('path/to/lib.so') for "
                        "a compiled one)"
                    ),
                )
            )
            continue
        for qualname in qualnames:
            for overload in _overloads(qualname):
                if (qualname, overload) in covered:
                    continue
                op_name = qualname if overload == "default" else f"{qualname}.{overload}"
                try:
                    spec = parse_marker((op_name,), {}, known_checks=registry.names())
                except MarkerError as exc:
                    items.append(
                        NamespaceErrorItem.from_parent(
                            parent, name=op_name, nodeid=f"customop::{op_name}", message=f"{op_name}: {exc}"
                        )
                    )
                    continue
                for case in build_cases(spec, registry, settings):
                    name = f"{op_name}[{case.id}]"
                    # The id as a string: pytest 9 parses cached ids ("customop::ns::op[...]", for --lf,
                    # --ff, --sw) into path, names and params, and a name holding "::" and "[...]" that it
                    # derived from the parent would compare unequal to it.
                    item = CustomOpItem.from_parent(
                        parent, name=name, nodeid=f"customop::{name}", case=case, namespace=namespace, run=run
                    )
                    if case.skip_reason:
                        item.add_marker(pytest.mark.skip(reason=case.skip_reason))
                    if case.xfail is not None:
                        item.add_marker(pytest.mark.xfail(reason=case.xfail.reason, strict=case.xfail.strict))
                    items.append(item)
    return items


# -- --customop-list ------------------------------------------------------------------------------
def _samples_label(spec: CustomOpSpec) -> str:
    if getattr(spec, "derived_samples", False):
        return "derived from the schema"
    return getattr(spec.samples, "__qualname__", None) or getattr(spec.samples, "__name__", None) or repr(spec.samples)


def format_listing(entries: Sequence[tuple[str, Case]]) -> list[str]:
    """The lines ``--customop-list`` prints: per op and source, its samples, devices, dtypes and
    checks, how many items would run, and each skipped item with its reason. ``entries`` are
    ``(source, case)`` pairs, in collection order."""
    from .dtypes import dtype_id

    groups: OrderedDict[tuple[str, str], list[Case]] = OrderedDict()
    for source, case in entries:
        groups.setdefault((case.spec.op.name, source), []).append(case)
    lines = ["customop: what would run (--customop-list: nothing is run)"]
    total = skipped_total = 0
    for (op_name, source), cases in groups.items():
        running = [c for c in cases if not c.skip_reason]
        skipped = [c for c in cases if c.skip_reason]
        total += len(running)
        skipped_total += len(skipped)
        lines.append(f"{op_name}  from {source}  samples: {_samples_label(cases[0].spec)}")
        lines.append(
            "  devices: {}  dtypes: {}  checks: {}  items: {} to run, {} skipped".format(
                ", ".join(dict.fromkeys(c.device for c in running)) or "-",
                ", ".join(dict.fromkeys(dtype_id(c.dtype) for c in running)) or "-",
                ", ".join(dict.fromkeys(c.check for c in running)) or "-",
                len(running),
                len(skipped),
            )
        )
        for case in skipped:
            lines.append(f"  skipped {case.id}: {case.skip_reason}")
    lines.append(f"{len(groups)} op(s): {total} item(s) would run, {skipped_total} would be skipped")
    return lines
