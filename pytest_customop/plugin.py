"""pytest hooks and fixtures of pytest-customop. Thin: the logic lives in the modules beside this one.

Nothing here imports torch at module level, so ``pytest --help`` and ``pytest --markers`` stay fast;
torch is imported the first time a ``customop`` marker is collected.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from . import hookspecs
from .options import OPTIONS, SettingsError, resolve_settings

MARKER_HELP = (
    "customop(op, *, samples=None, dtypes=None, devices=None, checks=None, atol=None, rtol=None, "
    "tolerances=None, eps=None, fast_mode=None, nondet_tol=0.0, supports_gradgrad=None, "
    "supports_forward_ad=None, xfails=(), skips=(), options=None, atol_scale=None, reference=None, "
    "strict_grad_shapes=False): verify the custom op `op` "
    "(a 'ns::name[.overload]' string, OpOverload, OpOverloadPacket, torch.library.custom_op object "
    "or legacy custom op) on the SampleInputs yielded by samples(device, dtype, requires_grad), or "
    "without samples= on samples derived from the op's schema. "
    "Generates one item per (device, dtype, check), ids like [cpu-float64-gradcheck]; the test "
    "requests the `customop` fixture and calls customop.check()."
)

settings_key = pytest.StashKey["Any"]()
registry_key = pytest.StashKey["Any"]()
marker_errors_key = pytest.StashKey[dict]()
result_key = pytest.StashKey["Any"]()
#: The Case (op, device, dtype, check) of every customop item, marked or discovered.
case_key = pytest.StashKey["Any"]()
report_key = pytest.StashKey["Any"]()


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("customop", "verify PyTorch custom operators (pytest-customop)")
    for option in OPTIONS:
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest, help=option.help)
        else:
            group.addoption(option.flag, default=None, dest=option.dest, metavar=option.metavar, help=option.help)
        parser.addini(option.ini, type=option.ini_type, default=None, help=f"{option.help} Env: {option.env}.")
    # Not in OPTIONS: repeatable on the command line, a list in the ini file.
    group.addoption(
        "--customop-namespace",
        action="append",
        default=None,
        dest="customop_namespaces",
        metavar="NS",
        help="check every op registered in namespace NS that no customop marker covers, on samples "
        "derived from its schema (repeatable; comma-separated values allowed). Env: CUSTOMOP_NAMESPACES.",
    )
    parser.addini("customop_namespaces", type="args", default=[], help="namespaces for --customop-namespace.")
    group.addoption(
        "--customop-list",
        action="store_true",
        default=False,
        dest="customop_list",
        help="print the ops, checks, devices and dtypes that would run, and run nothing.",
    )
    group.addoption(  # repeatable, so not in OPTIONS
        "--customop-report",
        action="append",
        nargs="?",
        const="terminal",
        default=None,
        dest="customop_report",
        metavar="FORMAT:PATH",
        help="report which op passed which check on which device and dtype. Bare: a table per op after "
        "the run; FORMAT:PATH (repeatable) writes json, md or html to PATH.",
    )


# pytest configs alive in this process: more than one means a run nested in a test (pytester's
# in-process runs), which must leave the outer process's garbage collector alone.
_live_configs = 0


def pytest_configure(config: pytest.Config) -> None:
    global _live_configs
    _live_configs += 1
    config.addinivalue_line("markers", MARKER_HELP)
    cli = {option.dest: config.getoption(option.dest) for option in OPTIONS}
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "customop_seed" in workerinput:
        cli["customop_seed"] = str(workerinput["customop_seed"])  # the controller's seed, on every worker
    try:
        settings = resolve_settings(cli, os.environ, config.getini)
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-customop: {exc}") from None
    config.stash[settings_key] = settings
    config.stash[marker_errors_key] = {}
    if settings.gc_freeze:
        from .gc_freeze import freeze_at_exit

        freeze_at_exit()
    _configure_report(config)
    from .checks import builtin

    config.pluginmanager.register(builtin, "customop-builtin-checks")
    if config.getoption("customop_list") and hasattr(config.option, "dist"):
        config.option.dist = "no"  # list in this process: pytest-xdist's workers would list nothing
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "customop-xdist")


def _configure_report(config: pytest.Config) -> None:
    from .report.formats import TargetError, parse_target
    from .report.session import ReportPlugin, XdistReportHooks

    try:
        targets = [parse_target(value, str(config.invocation_params.dir)) for value in config.getoption("customop_report") or []]
    except TargetError as exc:
        raise pytest.UsageError(f"pytest-customop: {exc}") from None
    report = config.stash[report_key] = ReportPlugin(config, targets)
    config.pluginmanager.register(report, "customop-report")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistReportHooks(report), "customop-report-xdist")


class _XdistHooks:
    """Registered only when pytest-xdist is installed."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["customop_seed"] = node.config.stash[settings_key].seed


def pytest_sessionstart(session: pytest.Session) -> None:
    # Names given to --customop-checks / customop_checks are validated before collection, so a typo is
    # a usage error; without them torch stays unimported until a customop marker is collected.
    if session.config.stash[settings_key].checks:
        _registry(session.config)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    # After collection the test modules have imported torch: freeze its objects (see gc_freeze).
    _freeze_gc(session)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # Before pytest's five full collections at unconfigure: freeze what the run left alive
    # (torch._dynamo, compiled code), after one collection whose unraisable exceptions pytest reports.
    _freeze_gc(session)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _live_configs
    _live_configs -= 1


def _freeze_gc(session: pytest.Session) -> None:
    if _live_configs > 1 or not session.config.stash[settings_key].gc_freeze:
        return
    if any(case_key in item.stash for item in session.items):
        from .gc_freeze import freeze_objects_alive_now

        freeze_objects_alive_now()


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[settings_key]
    seed = f"seed={settings.seed} (--customop-seed={settings.seed} repeats this run)"
    if config.pluginmanager.hasplugin("dsession") and "torch" not in sys.modules:
        # A pytest-xdist controller runs no test: importing torch here (2-4 s of CPU) would only
        # compete with the workers starting up. The workers find the devices; the report shows them.
        return f"customop: torch {_installed_torch_version()}, devices: found by each worker, {seed}"
    import torch

    from .devices import available_devices

    return f"customop: torch {torch.__version__}, devices: {', '.join(available_devices())}, {seed}"


def _installed_torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "(not installed)"


def _registry(config: pytest.Config) -> Any:
    """The check registry, filled through the register-checks hook on first use."""
    if registry_key not in config.stash:
        from .checks.registry import CheckRegistrationError, CheckRegistry

        registry = CheckRegistry()
        try:
            config.hook.pytest_customop_register_checks(registry=registry)
        except CheckRegistrationError as exc:
            raise pytest.UsageError(f"pytest-customop: {exc}") from None
        unknown = [c for c in config.stash[settings_key].checks or [] if c not in registry]
        if unknown:
            raise pytest.UsageError(
                f"pytest-customop: --customop-checks/customop_checks names unknown check(s) "
                f"{', '.join(unknown)}; known: {', '.join(registry.names())}"
            )
        config.stash[registry_key] = registry
    return config.stash[registry_key]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("customop")
    if marker is None:
        return
    from .cases import build_cases
    from .marker import MarkerError, parse_marker

    config = metafunc.config
    nodeid = metafunc.definition.nodeid
    errors = config.stash[marker_errors_key]
    if "_customop_case" not in metafunc.fixturenames:
        errors[nodeid] = (
            f"{nodeid}: has @pytest.mark.customop but requests none of the fixtures customop, "
            "customop_device, customop_dtype, customop_samples; add a `customop` argument and call "
            "customop.check()"
        )
        return
    registry = _registry(config)
    try:
        spec = parse_marker(marker.args, marker.kwargs, known_checks=registry.names())
    except MarkerError as exc:
        errors[nodeid] = f"{nodeid}: {exc}"
        return
    params = []
    for case in build_cases(spec, registry, config.stash[settings_key]):
        marks = []
        if case.skip_reason:
            marks.append(pytest.mark.skip(reason=case.skip_reason))
        if case.xfail is not None:
            marks.append(pytest.mark.xfail(reason=case.xfail.reason, strict=case.xfail.strict))
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("_customop_case", params)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Stash each marked item's Case, then add items for the uncovered ops of --customop-namespace
    (tryfirst: before -k and -m deselect)."""
    covered = set()
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("_customop_case")
        if case is not None:
            item.stash[case_key] = case
            covered.add((case.spec.op.qualname, case.spec.op.overload_name))
    from .discovery import parse_namespaces

    namespaces = parse_namespaces(config.getoption("customop_namespaces"), os.environ, config.getini("customop_namespaces"))
    if not namespaces:
        return
    from .discovery import discover_items

    discovered = discover_items(
        session, namespaces, covered, registry=_registry(config), settings=config.stash[settings_key], run=_run_discovered
    )
    for item in discovered:
        if getattr(item, "case", None) is not None:
            item.stash[case_key] = item.case
    items.extend(discovered)
    # Reported like a collector's result, so "collected N items" counts them.
    config.hook.pytest_collectreport(report=pytest.CollectReport("customop", "passed", None, discovered))


def _run_discovered(item: Any) -> None:
    """The body of a discovered op's item: what a marked test's ``customop.check()`` does."""
    from .cases import item_seed
    from .under_test import CustomOpUnderTest

    settings = item.config.stash[settings_key]

    def remember(result: Any) -> None:
        item.stash[result_key] = result

    CustomOpUnderTest(
        item.case,
        _registry(item.config),
        settings,
        item_seed(settings.seed, item.nodeid),
        item.repro(settings.seed),
        nodeid=item.nodeid,
        fail=lambda message: pytest.fail(message, pytrace=False),
        skip=lambda reason: pytest.skip(reason),
        on_result=remember,
    ).check()


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.getoption("customop_list"):
        return
    from .discovery import format_listing

    entries = []
    for item in session.items:
        case = item.stash.get(case_key, None)
        if case is not None:
            namespace = getattr(item, "namespace", None)
            source = (
                f"--customop-namespace={namespace}"
                if namespace
                else f"{item.parent.nodeid}::{getattr(item, 'originalname', item.name)}"
            )
            entries.append((source, case))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in format_listing(entries):
            reporter.write_line(line)


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    if session.config.getoption("customop_list"):
        return True  # listed in pytest_collection_finish; nothing runs
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    errors = item.config.stash.get(marker_errors_key, {})
    if not errors:
        return
    definition_id = f"{item.parent.nodeid}::{getattr(item, 'originalname', item.name)}"
    if definition_id in errors:
        pytest.fail(errors[definition_id], pytrace=False)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def _customop_case(request: pytest.FixtureRequest) -> Any:
    """The (op, device, dtype, check) case of this item; parametrized by the customop marker."""
    param = getattr(request, "param", None)
    if param is None:
        pytest.fail(
            f"{request.node.nodeid}: requests a customop fixture but has no @pytest.mark.customop(op, samples=...)",
            pytrace=False,
        )
    return param


@pytest.fixture
def customop(request: pytest.FixtureRequest, _customop_case: Any) -> Any:
    """The op under test, bound to this item's device, dtype and check (from @pytest.mark.customop).

    ``customop.check()`` runs the item's check over every sample and fails with a message naming the
    op, check, device, dtype, sample and input; ``customop(*args)`` calls the op;
    ``customop.samples()`` gives the item's samples; ``customop.op`` / ``.schema`` describe the op.
    """
    from .cases import item_seed
    from .report.model import repro_command
    from .under_test import CustomOpUnderTest

    config = request.config
    settings = config.stash[settings_key]
    seed = item_seed(settings.seed, request.node.nodeid)
    repro = repro_command(request.node.nodeid, settings.seed)

    def remember(result: Any) -> None:
        request.node.stash[result_key] = result

    def fail(message: str) -> None:
        __tracebackhide__ = True  # failures and skips point at the test, not at the plugin
        pytest.fail(message, pytrace=False)

    def skip(reason: str) -> None:
        __tracebackhide__ = True
        pytest.skip(reason)

    return CustomOpUnderTest(
        _customop_case,
        _registry(config),
        settings,
        seed,
        repro,
        nodeid=request.node.nodeid,
        fail=fail,
        skip=skip,
        on_result=remember,
    )


@pytest.fixture
def customop_device(_customop_case: Any) -> str:
    """This item's device string (``"cpu"``, ``"cuda"``, ...) from @pytest.mark.customop."""
    return _customop_case.device


@pytest.fixture
def customop_dtype(_customop_case: Any) -> Any:
    """This item's ``torch.dtype`` from @pytest.mark.customop."""
    return _customop_case.dtype


@pytest.fixture
def customop_samples(customop: Any) -> list:
    """This item's samples (``SampleInput`` list, inputs requiring grad where differentiable), built
    once from the marker's ``samples=`` at this item's device and dtype, seeded from the item."""
    return customop.samples()
