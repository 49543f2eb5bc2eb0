"""The plugin's core: marker, ids, devices, fixtures, op resolution, seeds and every bad-input error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

OPS = """
import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput, XFail, Skip

NS = "{ns}"

@torch.library.custom_op(f"{{NS}}::mul", mutates_args=())
def mul(x: Tensor, y: Tensor, alpha: float = 1.0) -> Tensor:
    return x * y * alpha

def setup_context(ctx, inputs, output):
    x, y, alpha = inputs
    ctx.save_for_backward(x, y)
    ctx.alpha = alpha

def _sum_to(g, shape):
    while g.dim() > len(shape):
        g = g.sum(0)
    return g

def backward(ctx, grad):
    x, y = ctx.saved_tensors
    return (_sum_to(grad * y.conj() * ctx.alpha, x.shape),
            _sum_to(grad * x.conj() * ctx.alpha, y.shape), None)

mul.register_autograd(backward, setup_context=setup_context)

def mul_samples(device, dtype, requires_grad):
    make = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=requires_grad)
    yield SampleInput(make(3, 4), make(3, 4), alpha=2.0)
    yield SampleInput(make(3, 4), make(4), alpha=-0.5)
"""


def write(pytester: pytest.Pytester, ns: str, body: str, name: str = "test_mul") -> None:
    pytester.makepyfile(**{name: OPS.format(ns=ns) + textwrap.dedent(body)})


def test_issue_example_gives_one_item_per_device_dtype_check(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples,
                      dtypes=[torch.float64, torch.complex128, torch.float32, torch.bfloat16],
                      devices=["cpu", "cuda"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("--collect-only", "-q")
    ids = [line for line in result.outlines if "::test_mul[" in line]
    assert ids[0] == "test_mul.py::test_mul[cpu-float64-gradcheck]"
    from pytest_customop.checks.builtin import pytest_customop_register_checks
    from pytest_customop.checks.registry import CheckRegistry

    registry = CheckRegistry()
    pytest_customop_register_checks(registry)
    assert len(ids) == 2 * 4 * len(registry.default_names())
    assert "test_mul.py::test_mul[cuda-bfloat16-gradgradcheck]" in ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip on a machine without CUDA")
def test_absent_device_is_a_skip_with_a_reason(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float64, torch.bfloat16],
                      devices=["cpu", "cuda"], checks=["gradcheck", "gradgradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(passed=4, skipped=4)
    result.stdout.fnmatch_lines(["SKIPPED [[]4[]] test_mul.py:*: cuda is not available"])


def test_k_selects_by_check_and_dtype(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float64, torch.float32], devices=["cpu"],
                      checks=["gradcheck", "gradgradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-v", "-k", "float32 and gradgradcheck")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*test_mul[[]cpu-float32-gradgradcheck[]] PASSED*"])


def test_every_op_form_resolves(pytester, ns, run):
    write(
        pytester,
        ns,
        """
PACKET = getattr(torch.ops, NS).mul
FORMS = [f"{NS}::mul", f"{NS}::mul.default", PACKET, PACKET.default, mul]

for i, form in enumerate(FORMS):
    def _check(customop, form=form):
        assert customop.op.name == f"{NS}::mul"
        assert str(customop.schema).startswith(f"{NS}::mul(Tensor x, Tensor y, float alpha=1.")
        customop.check()
    globals()[f"test_form_{i}"] = pytest.mark.customop(form, samples=mul_samples, dtypes=[torch.float64],
                                                       devices=["cpu"], checks=["gradcheck"])(_check)
""",
    )
    run().assert_outcomes(passed=5)


def test_library_define_and_legacy_ops_resolve(pytester, ns, run):
    pytester.makepyfile(
        test_styles=f'''
import warnings
import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput

lib = torch.library.Library("{ns}", "DEF")
lib.define("sin(Tensor x) -> Tensor")
lib.impl("sin", lambda x: x.detach().sin(), "CPU")

def sin_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])

def sin_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * x.cos()

torch.library.register_autograd("{ns}::sin", sin_backward, setup_context=sin_setup, lib=lib)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import torch._custom_ops as legacy

    @legacy.custom_op("{ns}::cube")
    def cube(x: Tensor) -> Tensor: ...

    @legacy.impl("{ns}::cube")
    def cube_impl(x):
        return x ** 3

    @legacy.impl_save_for_backward("{ns}::cube")
    def cube_save(inputs, output):
        return inputs.x

    @legacy.impl_backward("{ns}::cube")
    def cube_backward(ctx, saved, grad):
        return {{"x": 3 * saved ** 2 * grad}}

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(5, device=device, dtype=dtype, requires_grad=requires_grad))

@pytest.mark.customop("{ns}::sin", samples=samples, devices=["cpu"], dtypes=[torch.float64, torch.float32],
                      checks=["gradcheck", "gradgradcheck"])
def test_library_define(customop):
    customop.check()

@pytest.mark.customop(cube, samples=samples, devices=["cpu"], dtypes=[torch.float64],
                      checks=["gradcheck", "gradgradcheck"])
def test_legacy(customop):
    assert customop.op.legacy_op is not None
    customop.check()
'''
    )
    run("-W", "ignore::DeprecationWarning").assert_outcomes(passed=6)


def test_fixtures_expose_device_dtype_samples_and_calling(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float32], devices=["cpu"],
                      checks=["gradcheck"])
def test_own_assertions(customop, customop_device, customop_dtype, customop_samples):
    assert customop_device == "cpu" and customop_dtype is torch.float32
    assert len(customop_samples) == 2
    x, y = customop_samples[0].args
    assert x.dtype is torch.float32 and x.requires_grad
    out = customop(x, y, alpha=3.0)
    torch.testing.assert_close(out, x * y * 3.0)
    assert customop.check_name == "gradcheck"

@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float64], devices=["cpu"],
                      checks=["gradcheck"])
def test_samples_are_seeded_per_item(customop):
    first = customop.samples()[0].args[0]
    again = customop.samples()[0].args[0]
    assert torch.equal(first, again) and first is not again
""",
    )
    run().assert_outcomes(passed=2)


def test_same_seed_same_samples_and_header_prints_it(pytester, ns):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float64], devices=["cpu"],
                      checks=["gradcheck"])
def test_mul(customop):
    print("FIRST", customop.samples()[0].args[0].flatten()[0].item())
""",
    )
    outputs = []
    for _ in range(2):
        result = pytester.runpytest_subprocess("-s", "--customop-seed=77")
        result.stdout.fnmatch_lines(["customop: *seed=77 *"])
        outputs.append([line[line.index("FIRST") :] for line in result.outlines if "FIRST" in line])
    assert outputs[0] == outputs[1] and outputs[0]
    other = pytester.runpytest_subprocess("-s", "--customop-seed=78")
    assert [line[line.index("FIRST") :] for line in other.outlines if "FIRST" in line] != outputs[0]


def test_seed_from_environment_and_ini(pytester, ns, monkeypatch):
    pytester.makeini("[pytest]\ncustomop_seed = 5\n")
    # The seed line comes after collection, in a run that has customop items (--co: nothing needs to run)
    write(
        pytester,
        ns,
        '@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=["float64"], devices=["cpu"], checks=["gradcheck"])\n'
        "def test_mul(customop):\n    customop.check()\n",
    )
    pytester.runpytest("-p", "no:cacheprovider", "--co").stdout.fnmatch_lines(["customop: *seed=5 *"])
    pytester.runpytest("-p", "no:cacheprovider").stdout.fnmatch_lines(["customop: *seed=5 *"])
    monkeypatch.setenv("CUSTOMOP_SEED", "6")
    pytester.runpytest("-p", "no:cacheprovider", "--co").stdout.fnmatch_lines(["customop: *seed=6 *"])
    pytester.runpytest("-p", "no:cacheprovider", "--co", "--customop-seed=7").stdout.fnmatch_lines(["customop: *seed=7 *"])


def test_bad_cli_value_is_a_usage_error(pytester):
    result = pytester.runpytest("--customop-seed=minus-one")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*pytest-customop: --customop-seed='minus-one': invalid literal*"])


def test_devices_option_narrows_and_skips_the_rest_with_a_reason(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float64], devices=["cpu", "meta"],
                      checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*meta tensors hold no values*"])
    result = run("-rs", "--customop-devices=meta")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*cpu is not selected (--customop-devices=meta)*"])


def test_xfail_and_skip_per_check_dtype_device(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def wrong(ctx, grad):
    gx, gy, _ = backward(ctx, grad)
    return gx, gy * 2, None

@torch.library.custom_op(f"{NS}::bad", mutates_args=())
def bad(x: Tensor, y: Tensor, alpha: float = 1.0) -> Tensor:
    return x * y * alpha

bad.register_autograd(wrong, setup_context=setup_context)

@pytest.mark.customop(f"{NS}::bad", samples=mul_samples, dtypes=[torch.float64, torch.float32], devices=["cpu"],
                      xfails=[XFail("y's grad doubled, tracked in #12", checks="gradcheck")],
                      skips=[Skip("not now", dtypes=torch.float32, checks="gradgradcheck")],
                      checks=["gradcheck", "gradgradcheck"])
def test_bad(customop):
    customop.check()
""",
    )
    result = run("-rsx")
    # wrong at every dtype: the float32 gradcheck item fails too (its float64 reference is proven first)
    result.assert_outcomes(xfailed=2, passed=1, skipped=1)
    result.stdout.fnmatch_lines(["XFAIL test_mul.py::test_bad[[]cpu-float64-gradcheck[]] - y's grad doubled*"])


BAD_MARKERS = [
    ('"{ns}::mull", samples=s', "'op': got '{ns}::mull'; no op '{ns}::mull' is registered; did you mean '{ns}::mul'?"),
    ('"nolib_xyz::mul", samples=s', "'op': got 'nolib_xyz::mul'; namespace 'nolib_xyz' has no registered ops*"),
    ('"{ns}::mul.out", samples=s', "'op': got '{ns}::mul.out'; {ns}::mul has no overload 'out'; it has 'default'"),
    ("3, samples=s", "'op': got 3; 3 (int) is not an op; allowed: a qualname string*"),
    ("samples=s", "'op': got <nothing>; allowed: the op as first argument*"),
    ('"{ns}::mul", samples=3', "'samples': got 3; allowed: a callable*"),
    ('"{ns}::mul", samples=s, dtypes=["float99"]', "'dtypes': got 'float99'; allowed: torch dtypes or their names (*bfloat16, *"),
    ('"{ns}::mul", samples=s, dtypes=[]', "'dtypes': got ??; allowed: a non-empty list of torch dtypes"),
    ('"{ns}::mul", samples=s, devices=["gpu"]', "'devices': got 'gpu'; allowed: device strings torch knows*"),
    ('"{ns}::mul", samples=s, checks=["gradchek"]', "'checks': got 'gradchek'; allowed: gradcheck, gradgradcheck, grad_keys, *"),
    ('"{ns}::mul", samples=s, atol="big"', "'atol': got 'big'; allowed: a number >= 0"),
    ('"{ns}::mul", samples=s, fast_mode="yes"', "'fast_mode': got 'yes'; allowed: True (always fast)*"),
    ('"{ns}::mul", samples=s, supports_gradgrad=1', "'supports_gradgrad': got 1; allowed: True, False or None"),
    ('"{ns}::mul", samples=s, xfails=["x"]', "'xfails': got ?'x'?; allowed: a list of pytest_customop.XFail*"),
    ('"{ns}::mul", samples=s, tolerances={{"float32": 1}}', "'tolerances': got *; allowed: a dict {{dtype: (atol, rtol)}}*"),
    ('"{ns}::mul", samples=s, colour="red"', "'colour': got 'red'; allowed: the keyword arguments samples, dtypes, *"),
]


@pytest.mark.parametrize(
    "arguments, message", BAD_MARKERS, ids=[m[1].split(":")[0].strip("'") + str(i) for i, m in enumerate(BAD_MARKERS)]
)
def test_bad_marker_argument_is_a_readable_error_confined_to_its_test(pytester, ns, run, arguments, message):
    write(
        pytester,
        ns,
        f"""
def s(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3), torch.randn(3))

@pytest.mark.customop({arguments.format(ns=ns)})
def test_bad(customop):
    customop.check()

def test_unrelated():
    pass
""",
    )
    result = run()
    result.assert_outcomes(errors=1, passed=1)
    result.stdout.fnmatch_lines([f"test_mul.py::test_bad: customop marker argument {message.format(ns=ns)}"])
    result.stdout.no_fnmatch_line("*INTERNALERROR*")
    result.stdout.no_fnmatch_line("*Traceback*")


def test_ambiguous_packet_lists_its_overloads(pytester, ns, run):
    pytester.makepyfile(
        test_amb=f'''
import pytest, torch
lib = torch.library.Library("{ns}", "DEF")
lib.define("f.a(Tensor x) -> Tensor")
lib.define("f.b(Tensor x, int n) -> Tensor")

def s(device, dtype, requires_grad):
    yield from ()

@pytest.mark.customop(torch.ops.{ns}.f, samples=s)
def test_f(customop):
    pass
'''
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*{ns}::f is ambiguous: it has overloads '{ns}::f.a', '{ns}::f.b'; name one"])


def test_marker_without_the_fixture_is_an_error_naming_the_fixture(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples)
def test_forgot():
    pass
""",
    )
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["test_mul.py::test_forgot: has @pytest.mark.customop but requests none of the fixtures customop*"]
    )


def test_fixture_without_the_marker_is_an_error(pytester, ns, run):
    write(pytester, ns, "def test_no_marker(customop):\n    pass\n")
    result = run()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*test_no_marker: requests a customop fixture but has no @pytest.mark.customop*"])


@pytest.mark.parametrize(
    "samples_body, message",
    [
        (
            "    raise ValueError('no GPU kernel for this shape')",
            "*samples(device='cpu', dtype=torch.float64, requires_grad=True) raised ValueError: no GPU kernel for this shape",
        ),
        ("    yield from ()", "*samples(*) yielded nothing; it must yield at least one SampleInput"),
        (
            "    yield (torch.randn(3), torch.randn(3))",
            "*samples(*) yielded tuple (tensor(*) at index 0; allowed: pytest_customop.SampleInput or torch.testing's OpInfo SampleInput",
        ),
    ],
    ids=["raising", "empty", "not-a-sample"],
)
def test_bad_samples_fail_their_items_with_the_reason(pytester, ns, run, samples_body, message):
    write(
        pytester,
        ns,
        f"""
def s(device, dtype, requires_grad):
{samples_body}

@pytest.mark.customop(f"{{NS}}::mul", samples=s, dtypes=[torch.float64], devices=["cpu"], checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["test_mul.py::test_mul[[]cpu-float64-gradcheck[]]: customop marker argument 'samples': " + message.lstrip("*")]
    )


def test_sample_not_fitting_the_schema_names_the_argument(pytester, ns, run):
    write(
        pytester,
        ns,
        """
def s(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype, requires_grad=requires_grad), beta=1.0)

@pytest.mark.customop(f"{NS}::mul", samples=s, dtypes=[torch.float64], devices=["cpu"], checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    result = run()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*the sample does not fit the schema: {ns}::mul has no argument 'beta'; schema: *"])


def test_integer_inputs_never_require_grad(pytester, ns, run):
    pytester.makepyfile(
        test_gather=f'''
import pytest, torch
from torch import Tensor
from pytest_customop import SampleInput

@torch.library.custom_op("{ns}::take", mutates_args=())
def take(x: Tensor, index: Tensor) -> Tensor:
    return x[index]

def setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.n = inputs[0].shape[0]

def backward(ctx, grad):
    (index,) = ctx.saved_tensors
    return torch.zeros(ctx.n, dtype=grad.dtype).index_add(0, index, grad), None

take.register_autograd(backward, setup_context=setup_context)

def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(5, dtype=dtype, requires_grad=requires_grad), torch.tensor([0, 2, 2]))

@pytest.mark.customop(take, samples=samples, devices=["cpu"], dtypes=[torch.float64, torch.int64],
                      checks=["gradcheck", "gradgradcheck"])
def test_take(customop):
    customop.check()
'''
    )
    result = run("-rs")
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines(["*int64 tensors cannot require grad: nothing to differentiate"])


def test_help_and_markers_do_not_import_torch(pytester):
    pytester.makepyfile(
        probe="""
import sys, subprocess
code = "import sys, pytest; pytest.main(sys.argv[1:]); print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
for args in (["--help"], ["--markers"]):
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True).stdout
    print(args[0], out.strip().splitlines()[-1])
"""
    )
    result = pytester.run(sys.executable, "probe.py")
    result.stdout.fnmatch_lines(["--help NO-TORCH", "--markers NO-TORCH"])


def test_markers_fixtures_and_help_text(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.customop(op, *, samples=None, dtypes=None, devices=None, checks=None, atol=None, rtol=None*"]
    )
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(
        [
            "customop -- *",
            "    The op under test, bound to this item's device, dtype and check*",
            "customop_device -- *",
            "customop_dtype -- *",
            "customop_samples -- *",
        ]
    )
    result = pytester.runpytest("--help")
    result.stdout.fnmatch_lines(
        [
            "*verify PyTorch custom operators (pytest-customop)*",
            "*--customop-devices=LIST*",
            "*customop_seed (int)*" if int(pytest.__version__.split(".")[0]) >= 9 else "*customop_seed (string)*",
        ]
    )


def test_strict_markers_accepts_the_marker(pytester, ns, run):
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=[torch.float64], devices=["cpu"], checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
    )
    run("--strict-markers").assert_outcomes(passed=1)


def test_plugin_can_be_disabled(pytester):
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:customop")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("customop: *seed=*")


def test_entry_point_is_named_customop():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert names.get("customop") == "pytest_customop.plugin"
    assert subprocess.run([sys.executable, "-c", "import pytest_customop"], check=True).returncode == 0


NESTED_CHECK = """
def pytest_customop_register_checks(registry):
    from pytest_customop import Check

    class RunsOnce(Check):
        name = "runs_once"
        description = "calls the op on every sample"
        default = False

        def run(self, ctx):
            samples = ctx.samples(requires_grad=False)
            for sample in samples:
                ctx.op(*sample.args, **sample.kwargs)
            return ctx.passed(len(samples), len(samples))

    registry.register(RunsOnce())
"""


@pytest.mark.parametrize("where", [[], ["unit"]], ids=["pytest .", "pytest unit"])
def test_a_check_from_a_nested_conftest_works_whatever_paths_are_collected(pytester, ns, run, where):
    # test_a.py is collected before unit/ (in name order), so before unit/conftest.py is loaded: the
    # registry must still learn the check that conftest registers
    write(
        pytester,
        ns,
        """
@pytest.mark.customop(f"{NS}::mul", samples=mul_samples, dtypes=["float64"], devices=["cpu"], checks=["gradcheck"])
def test_mul(customop):
    customop.check()
""",
        name="test_a",
    )
    sub = pytester.mkpydir("unit")
    (sub / "conftest.py").write_text(NESTED_CHECK)
    (sub / "test_b.py").write_text(
        textwrap.dedent("""
        import pytest
        import test_a

        @pytest.mark.customop(test_a.mul, samples=test_a.mul_samples, dtypes=["float64"], devices=["cpu"], checks=["runs_once"])
        def test_mul_once(customop):
            customop.check()
    """)
    )
    result = run("-v", "--rootdir", str(pytester.path), *where)
    result.stdout.fnmatch_lines(["*test_b.py::test_mul_once[[]cpu-float64-runs_once[]] PASSED*"])
    result.assert_outcomes(passed=1 if where else 2)
