"""The plugin freezes the objects alive after collection and at session end out of Python's garbage
collector (pytest's five full collections at unconfigure then skip torch's objects), only in a
top-level run that has customop items, and not with --customop-no-gc-freeze."""

from __future__ import annotations

import gc

PROBE = """
import gc
import pytest

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    print("FROZEN OBJECTS:", gc.get_freeze_count())
"""

TESTS = """
import pytest
import torch
from pytest_customop import SampleInput

@torch.library.custom_op("{ns}::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2

double.register_autograd(lambda ctx, grad: grad * 2)

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop(double, samples=samples, dtypes=["float64"], devices=["cpu"], checks=["gradcheck"])
def test_double(customop):
    customop.check()
"""


def _frozen(result) -> int:
    (line,) = [line for line in result.outlines if line.startswith("FROZEN OBJECTS:")]
    return int(line.split(":")[1])


def test_a_top_level_run_freezes_and_the_option_turns_it_off(pytester, ns):
    pytester.makepyfile(probe=PROBE, test_ops=TESTS.format(ns=ns))
    frozen = pytester.runpytest_subprocess("-p", "probe", "-s", "-p", "no:cacheprovider")
    frozen.assert_outcomes(passed=1)
    assert _frozen(frozen) > 100_000  # torch's objects
    plain = pytester.runpytest_subprocess("-p", "probe", "-s", "-p", "no:cacheprovider", "--customop-no-gc-freeze")
    plain.assert_outcomes(passed=1)
    assert _frozen(plain) == 0


def test_a_run_without_customop_items_or_nested_in_a_test_leaves_the_collector_alone(pytester, ns, run):
    pytester.makepyfile(probe=PROBE, test_plain="def test_nothing():\n    pass\n")
    plain = pytester.runpytest_subprocess("-p", "probe", "-s", "-p", "no:cacheprovider")
    assert _frozen(plain) == 0
    before = gc.get_freeze_count()
    pytester.makepyfile(test_ops=TESTS.format(ns=ns))
    run("test_ops.py").assert_outcomes(passed=1)  # in this process: the outer run's objects stay collectable
    assert gc.get_freeze_count() == before


def test_objects_alive_after_collection_are_frozen_before_the_first_test_runs(pytester, ns):
    # The freeze after collection (not only the one at session end): a test running after collection
    # sees torch's objects already in the permanent generation.
    pytester.makepyfile(
        test_ops=TESTS.format(ns=ns)
        + "\n\ndef test_zz_frozen_while_running():\n    import gc\n    print('FROZEN WHILE RUNNING:', gc.get_freeze_count())\n"
    )
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    (line,) = [line for line in result.outlines if "FROZEN WHILE RUNNING:" in line]
    assert int(line.rsplit(":", 1)[1]) > 100_000


def test_frozen_objects_are_finalized_at_exit(pytester, ns):
    # A cycle alive when the plugin freezes (created at import, before collection ends) must still be
    # finalized at shutdown: left frozen, Python never collects it (torch 2.15's nanobind objects then
    # print "nanobind: leaked ..." at every exit).
    pytester.makeconftest(
        "class Cycle:\n"
        "    def __del__(self):\n"
        "        print('CYCLE FINALIZED', flush=True)\n"
        "cycle = Cycle()\ncycle.self = cycle\ndel cycle\n"
        "import gc\ngc.disable()  # so that only the freeze and the exit decide its fate\n"
    )
    pytester.makepyfile(probe=PROBE, test_ops=TESTS.format(ns=ns))
    result = pytester.runpytest_subprocess("-p", "probe", "-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert _frozen(result) > 100_000  # it was frozen
    result.stdout.fnmatch_lines(["CYCLE FINALIZED"])


def test_a_run_without_customop_items_imports_no_torch_and_prints_no_customop_line(pytester):
    pytester.makeconftest(
        "import sys, pytest\n"
        "@pytest.hookimpl(trylast=True)\n"
        "def pytest_unconfigure(config):\n"
        "    print('TORCH IMPORTED:', 'torch' in sys.modules)\n"
    )
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    for args in ((), ("-n", "2")):
        result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["TORCH IMPORTED: False"])
        if not args:  # a pytest-xdist controller names the seed it hands out before it knows the items
            result.stdout.no_fnmatch_line("customop:*")
