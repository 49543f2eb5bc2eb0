"""Bad values are clean usage or marker errors naming where they came from (flag, environment
variable, ini key, marker argument) and what is allowed."""

from __future__ import annotations

import pytest
from report_suite import double_op


@pytest.mark.parametrize(
    ("args", "env", "ini", "message"),
    [
        (
            ["--customop-devices=gpu9"],
            {},
            "",
            "*--customop-devices='gpu9': unknown device 'gpu9'; allowed: a torch device type (cpu, cuda, *), optionally with an index, like cpu, cuda, cuda:1*",
        ),
        (
            [],
            {"CUSTOMOP_DEVICES": "cpu,cuda:x"},
            "",
            "*environment variable CUSTOMOP_DEVICES='cpu,cuda:x': unknown device 'cuda:x'*",
        ),
        ([], {}, "customop_devices = cpu,cpu", "*ini key customop_devices='cpu,cpu': cpu given more than once; name each once*"),
        (
            ["--customop-checks=gradcheck,gradcheck"],
            {},
            "",
            "*--customop-checks='gradcheck,gradcheck': gradcheck given more than once*",
        ),
        (
            [],
            {},
            "customop_full_jacobian = maybe",
            "*ini key customop_full_jacobian: invalid truth value 'maybe'; allowed: true or false*",
        ),
    ],
    ids=["flag-device", "env-device", "ini-duplicate", "flag-duplicate-check", "ini-boolean"],
)
def test_bad_settings_are_usage_errors_naming_their_source(
    pytester: pytest.Pytester, monkeypatch, args, env, ini, message
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_a_device_not_selected_by_the_ini_names_the_ini_key(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makeini("[pytest]\ncustomop_devices = meta\n")
    pytester.makepyfile(
        double_op(ns)
        + """

@pytest.mark.customop(double, samples=samples, dtypes=["float64"], devices=["cpu"], checks=["gradcheck"])
def test_double(customop):
    customop.check()
"""
    )
    result = run("-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*cpu is not selected (ini key customop_devices=meta)*"])


def test_bad_marker_values_are_marker_errors_naming_the_argument(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makepyfile(
        double_op(ns)
        + """
from pytest_customop import Skip, XFail

def marked(**kwargs):
    return pytest.mark.customop(double, **{"samples": samples, "dtypes": ["float64"], "checks": ["gradcheck"], **kwargs})

@marked(atol=float("nan"))
def test_nan_atol(customop):
    customop.check()

@marked(rtol=-1e-3)
def test_negative_rtol(customop):
    customop.check()

@marked(tolerances={"float64": (float("inf"), 0.0)})
def test_infinite_tolerance(customop):
    customop.check()

@marked(options={"edge_shapes": {"max_derive": 3}})
def test_unknown_option_key(customop):
    customop.check()

@marked(options={"gradcheck": {"eps": 1e-3}})
def test_option_of_a_check_that_takes_none(customop):
    customop.check()

@marked(xfails=[XFail("known", checks="gradchek")])
def test_xfail_check_typo(customop):
    customop.check()

@marked(skips=[Skip("no kernel", devices="gpu")])
def test_skip_device_typo(customop):
    customop.check()

@marked(skips=[Skip(None)])
def test_skip_without_reason(customop):
    customop.check()

@marked()
@marked(dtypes=["float32"])
def test_stacked(customop):
    customop.check()

@marked(options={"edge_shapes": {"max_derived": 3}}, xfails=[XFail("fine", checks="gradgradcheck", devices="cpu")])
def test_good_values_still_pass(customop):
    customop.check()
"""
    )
    result = run()
    result.assert_outcomes(passed=1, errors=9)
    result.stdout.fnmatch_lines_random(
        [
            "*::test_nan_atol: *customop marker argument 'atol': got nan; allowed: a number >= 0",
            "*::test_negative_rtol: *customop marker argument 'rtol': got -0.001; allowed: a number >= 0",
            "*::test_infinite_tolerance: *customop marker argument 'tolerances': got inf; allowed: a number >= 0",
            "*::test_unknown_option_key: *'options': got {'edge_shapes': {'max_derive': 3}}; check 'edge_shapes' takes no option 'max_derive'; it takes: max_derived, strict, isolate",
            "*::test_option_of_a_check_that_takes_none: *check 'gradcheck' takes no option 'eps'; it takes: none",
            "*::test_xfail_check_typo: *'xfails': got XFail(*); XFail's checks= names unknown check(s) 'gradchek'; known: gradcheck, *",
            "*::test_skip_device_typo: *'skips': got Skip(*); devices= unknown device 'gpu'*",
            "*::test_skip_without_reason: *Skip's reason must be a non-empty string, got None",
            "*::test_stacked: *has 2 @pytest.mark.customop markers (on the test, its class or its module); one test verifies one op*",
        ]
    )
