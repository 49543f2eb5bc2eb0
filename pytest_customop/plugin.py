"""pytest hooks and fixtures of pytest-customop. Thin: the logic lives in the modules beside this one.

Nothing here imports torch at module level, so ``pytest --help`` and ``pytest --markers`` stay fast;
torch is imported the first time a ``customop`` marker is collected.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

import pytest

from . import hookspecs
from .options import OPTIONS, SettingsError, resolve_settings
from .session import CustomOpSession, session_key

if TYPE_CHECKING:
    from .cases import Case
    from .under_test import CustomOpUnderTest

MARKER_HELP = (
    "customop(op, *, samples=None, dtypes=None, devices=None, checks=None, atol=None, rtol=None, "
    "tolerances=None, eps=None, fast_mode=None, nondet_tol=0.0, supports_gradgrad=None, "
    "supports_forward_ad=None, xfails=(), skips=(), options=None, atol_scale=None, reference=None, "
    "strict_grad_shapes=False): verify the custom op `op` "
    "(a 'ns::name[.overload]' string, OpOverload, OpOverloadPacket, torch.library.custom_op object, "
    "legacy custom op or torch.autograd.Function subclass) on the SampleInputs yielded by samples(device, dtype, requires_grad), or "
    "without samples= on samples derived from the op's schema. "
    "Generates one item per (device, dtype, check), ids like [cpu-float64-gradcheck]; the test "
    "requests the `customop` fixture and calls customop.check()."
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("customop", "verify PyTorch custom operators (pytest-customop)")
    for option in OPTIONS:
        sources = f" Env: {option.env}; ini: {option.ini}."  # every name of the setting, in --help
        if option.is_flag:
            group.addoption(option.flag, action="store_true", default=None, dest=option.dest, help=option.help + sources)
        else:
            group.addoption(option.flag, default=None, dest=option.dest, metavar=option.metavar, help=option.help + sources)
        try:
            parser.addini(option.ini, type=option.ini_type, default=None, help=f"{option.help} Env: {option.env}.")
        except (AssertionError, ValueError):  # pytest < 9 has no "int" ini type: a string the plugin parses
            parser.addini(option.ini, type="string", default=None, help=f"{option.help} Env: {option.env}.")
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
    # Not in OPTIONS: resolved before conftest files are imported (Triton reads it at @triton.jit).
    group.addoption(
        "--customop-triton-interpret",
        action="store_true",
        default=False,
        dest="customop_triton_interpret",
        help="set TRITON_INTERPRET=1 before conftest files and test modules are imported, so Triton kernels "
        "run on CPU tensors through Triton's interpreter (an explicit TRITON_INTERPRET wins). "
        "Ini: customop_triton_interpret.",
    )
    parser.addini(
        "customop_triton_interpret",
        type="bool",
        default=False,
        help="set TRITON_INTERPRET=1 for the run (see --customop-triton-interpret).",
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
    group.addoption(
        "--customop-report-from-journal",
        default=None,
        dest="customop_report_from_journal",
        metavar="JOURNAL",
        help="run nothing: write the --customop-report reports of the run whose journal is JOURNAL (the "
        "<report>.journal file a run that never finished leaves beside its first report file).",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> Any:
    journal = config.getoption("customop_report_from_journal")
    if journal is None:
        return None
    from .report.rebuild import rebuild_from_journal

    return rebuild_from_journal(config, journal)


def _session(config: pytest.Config) -> CustomOpSession:
    return config.stash[session_key]


triton_interpret_set_key = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    from .triton_support import enable_interpreter

    requested = bool(early_config.known_args_namespace.customop_triton_interpret) or bool(
        early_config.getini("customop_triton_interpret")
    )
    early_config.stash[triton_interpret_set_key] = enable_interpreter(os.environ, requested)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    from .torch_support import require_supported_torch

    require_supported_torch()
    cli = {option.dest: config.getoption(option.dest) for option in OPTIONS}
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "customop_seed" in workerinput:
        cli["customop_seed"] = str(workerinput["customop_seed"])  # the controller's seed, on every worker
    try:
        settings = resolve_settings(cli, os.environ, config.getini)
    except SettingsError as exc:
        raise pytest.UsageError(f"pytest-customop: {exc}") from None
    session = config.stash[session_key] = CustomOpSession(config, settings)
    _configure_report(session)
    from .checks import builtin

    config.pluginmanager.register(builtin, "customop-builtin-checks")
    if config.getoption("customop_list") and hasattr(config.option, "dist"):
        config.option.dist = "no"  # list in this process: pytest-xdist's workers would list nothing
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "customop-xdist")


def _configure_report(session: CustomOpSession) -> None:
    from .report.formats import TargetError, parse_targets
    from .report.session import ReportPlugin, XdistReportHooks

    config = session.config
    try:
        targets = parse_targets(config.getoption("customop_report") or [], str(config.invocation_params.dir))
    except TargetError as exc:
        raise pytest.UsageError(f"pytest-customop: {exc}") from None
    report = ReportPlugin(session, targets)
    config.pluginmanager.register(report, "customop-report")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistReportHooks(report), "customop-report-xdist")


class _XdistHooks:
    """Registered only when pytest-xdist is installed."""

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["customop_seed"] = _session(node.config).settings.seed


def pytest_sessionstart(session: pytest.Session) -> None:
    # Names given to --customop-checks / customop_checks are validated before collection, so a typo is
    # a usage error; without them torch stays unimported until a customop marker is collected.
    if _session(session.config).settings.checks:
        _session(session.config).registry  # noqa: B018 (built, and the names validated, for its errors)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    state = _session(session.config)
    if session.config.getoption("customop_list"):
        _print_listing(session, state)
    # After collection the test modules have imported torch: freeze its objects (see gc_freeze).
    state.freeze_gc(session.items)


def _print_listing(session: pytest.Session, state: CustomOpSession) -> None:
    from .discovery import format_listing

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        for line in format_listing(state.listing_entries(session.items)):
            reporter.write_line(line)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # Before pytest's five full collections at unconfigure: freeze what the run left alive
    # (torch._dynamo, compiled code), after one collection whose unraisable exceptions pytest reports.
    # getattr: a pytest-xdist controller collects nothing, and pytest < 8 then has no session.items.
    _session(session.config).freeze_gc(getattr(session, "items", []))


def pytest_unconfigure(config: pytest.Config) -> None:
    if session_key in config.stash:
        config.stash[session_key].close()
    if config.stash.get(triton_interpret_set_key, False):  # leave the environment as the run found it
        os.environ.pop("TRITON_INTERPRET", None)


def pytest_report_header(config: pytest.Config) -> Optional[str]:
    # Before collection nobody knows whether the run has customop items: a run without any must not pay
    # for torch's import (seconds), so the line with torch and devices comes after collection. Only a
    # pytest-xdist controller, which never sees the items, says here what it can without torch: the seed
    # it hands every worker.
    if config.pluginmanager.hasplugin("dsession"):
        return f"customop: torch {_installed_torch_version()}, devices: found by each worker, {_seed_text(config)}"
    return None


def pytest_report_collectionfinish(config: pytest.Config, items: list[pytest.Item]) -> Optional[str]:
    state = _session(config)
    if not any(state.case_of(item) is not None for item in items):
        return None  # nothing of the plugin's runs: no line, no torch import
    import torch

    from .devices import available_devices
    from .triton_support import interpreter_enabled

    triton = ", Triton interpreter on (TRITON_INTERPRET)" if interpreter_enabled(os.environ) else ""
    return f"customop: torch {torch.__version__}, devices: {', '.join(available_devices())}{triton}, {_seed_text(config)}"


def _seed_text(config: pytest.Config) -> str:
    seed = _session(config).settings.seed
    return f"seed={seed} (--customop-seed={seed} repeats this run)"


def _installed_torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "(not installed)"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("customop")
    if marker is None:
        return
    from .cases import build_cases
    from .marker import MarkerError, parse_marker

    state = _session(metafunc.config)
    nodeid = metafunc.definition.nodeid
    stacked = list(metafunc.definition.iter_markers("customop"))
    if len(stacked) > 1:
        state.marker_errors[nodeid] = (
            f"{nodeid}: has {len(stacked)} @pytest.mark.customop markers (on the test, its class or its module); "
            "one test verifies one op: write one test per op, each with one customop marker"
        )
        return
    if "_customop_case" not in metafunc.fixturenames:
        state.marker_errors[nodeid] = (
            f"{nodeid}: has @pytest.mark.customop but requests none of the fixtures customop, "
            "customop_device, customop_dtype, customop_samples; add a `customop` argument and call "
            "customop.check()"
        )
        return
    registry = state.registry
    try:
        known_options = {name: getattr(registry[name], "options_accepted", None) for name in registry.names()}
        spec = parse_marker(marker.args, marker.kwargs, known_checks=registry.names(), known_options=known_options)
    except MarkerError as exc:
        state.marker_errors[nodeid] = f"{nodeid}: {exc}"
        return
    params = []
    for case in build_cases(spec, registry, state.settings):
        marks: list[Any] = []
        if case.skip_reason:
            marks.append(pytest.mark.skip(reason=case.skip_reason))
        if case.xfail is not None:
            marks.append(pytest.mark.xfail(reason=case.xfail.reason, strict=case.xfail.strict))
        params.append(pytest.param(case, id=case.id, marks=marks))
    metafunc.parametrize("_customop_case", params)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stash each marked item's Case, then add items for the uncovered ops of --customop-namespace
    (tryfirst: before -k and -m deselect)."""
    state = _session(config)
    covered = state.stash_marked_cases(items)
    from .discovery import parse_namespaces

    namespaces = parse_namespaces(config.getoption("customop_namespaces"), os.environ, config.getini("customop_namespaces"))
    if not namespaces:
        return
    discovered = state.discover(session, namespaces, covered)
    items.extend(discovered)
    # Reported like a collector's result, so "collected N items" counts them.
    config.hook.pytest_collectreport(
        report=pytest.CollectReport("customop", "passed", None, list[pytest.Item | pytest.Collector](discovered))
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Any:
    if session.config.getoption("customop_list"):
        return True  # listed in pytest_collection_finish; nothing runs
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield  # a test that raised is judged by what it raised
    _session(item.config).flag_unverified(item)
    return result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _bind_worker_device(item)
    error = _session(item.config).marker_error_of(item)
    if error is not None:
        pytest.fail(error, pytrace=False)


def _bind_worker_device(item: pytest.Item) -> None:
    """On a pytest-xdist worker, before its first accelerator item: use this worker's device."""
    workerinput = getattr(item.config, "workerinput", None)
    state = _session(item.config)
    case = state.case_of(item)
    if workerinput is None or case is None or case.device == "cpu" or case.skip_reason:
        return
    from .devices import WorkerDeviceError, bind_worker_device

    problem = None
    try:
        bind_worker_device(workerinput.get("workerid"), state.settings.worker_devices, case.device)
    except WorkerDeviceError as exc:
        problem = str(exc)
    if problem is not None:  # outside the except block: no chained traceback
        pytest.fail(f"pytest-customop: {problem}", pytrace=False)


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture
def _customop_case(request: pytest.FixtureRequest) -> Case:
    """The (op, device, dtype, check) case of this item; parametrized by the customop marker."""
    case = _session(request.config).case_of(request.node)
    if case is None:
        pytest.fail(
            f"{request.node.nodeid}: requests a customop fixture but has no @pytest.mark.customop(op, samples=...)",
            pytrace=False,
        )
    return case


@pytest.fixture
def customop(request: pytest.FixtureRequest, _customop_case: Case) -> CustomOpUnderTest:
    """The op under test, bound to this item's device, dtype and check (from @pytest.mark.customop).

    ``customop.check()`` runs the item's check over every sample and fails with a message naming the
    op, check, device, dtype, sample and input; ``customop(*args)`` calls the op;
    ``customop.samples()`` gives the item's samples; ``customop.op`` / ``.schema`` describe the op.
    """
    return _session(request.config).under_test(request.node, _customop_case)


@pytest.fixture
def customop_device(_customop_case: Case) -> str:
    """This item's device string (``"cpu"``, ``"cuda"``, ...) from @pytest.mark.customop."""
    return _customop_case.device


@pytest.fixture
def customop_dtype(_customop_case: Case) -> Any:
    """This item's ``torch.dtype`` from @pytest.mark.customop."""
    return _customop_case.dtype


@pytest.fixture
def customop_samples(customop: CustomOpUnderTest) -> list[Any]:
    """This item's samples (``SampleInput`` list, inputs requiring grad where differentiable), built
    once from the marker's ``samples=`` at this item's device and dtype, seeded from the item."""
    return customop.samples()
