"""``opcheck``: ``torch.library.opcheck``'s registration tests, each reported as its own sub-result.

``opcheck`` tests how an op is registered, never the values of its gradients: that its schema tells
the truth about mutation and aliasing (``test_schema``), that its autograd formula is registered where
autograd finds it (``test_autograd_registration``), that its fake kernel gives the metadata of the real
kernel (``test_faketensor``) and that it runs under AOT autograd with dynamic shapes
(``test_aot_dispatch_dynamic``). Each sub-test is run on every sample; the result's notes say how each
sub-test went, and a failure names the sub-test, the sample and the first line of torch's reason.

The first opcheck in a process pays a one-time warm-up (imports and the first AOT trace, about two
seconds); it is paid only when the check is selected, and noted in the result that paid it.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Optional

import torch

from ..fake_kernels import missing_fake_kernel
from ._support import wants_gradients
from .base import Check, CheckContext, CheckResult, Finding

__all__ = ["OpCheck", "DEFAULT_SUB_TESTS", "available_sub_tests", "first_lines"]

#: The sub-tests run by default (torch's own default set).
DEFAULT_SUB_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")

# Sub-tests torch silently passes when no input of the sample requires grad.
_NEEDS_GRAD_INPUT = ("test_autograd_registration",)

# Sub-tests that run the op on fake tensors: they do not apply to an op without a fake kernel.
_NEEDS_FAKE_KERNEL = ("test_faketensor", "test_aot_dispatch")

_warmed_up = False

# Lines of torch's error messages that advise on debugging rather than say what went wrong.
_BOILERPLATE = (
    "Set TORCHDYNAMO_VERBOSE",
    "For more information",
    "For more details",
    "For even more",
    "Hint:",
    "Developer debug context",
    "from user code:",
)


def available_sub_tests() -> Optional[tuple[str, ...]]:
    """The sub-test names the installed torch knows, or None when it has no ``torch.library.opcheck``."""
    if not hasattr(torch.library, "opcheck"):
        return None
    try:
        from torch.testing._internal.optests.generate_tests import ALL_TEST_UTILS
    except ImportError:  # the private table moved: trust the documented default set
        return DEFAULT_SUB_TESTS
    return tuple(ALL_TEST_UTILS)


def first_lines(text: str, count: int = 2, width: int = 400) -> str:
    """The first ``count`` non-blank lines of ``text``, each cut at ``width`` characters: opcheck's
    and dynamo's errors run to pages, and their first lines carry the reason."""
    lines = []
    for line in str(text).strip().splitlines():
        if not line.strip() or line.lstrip().startswith(_BOILERPLATE):
            continue
        lines.append(line if len(line) <= width else line[: width - 3] + "...")
        if len(lines) == count:
            break
    return "\n".join(lines)


def _describe_error(exc: BaseException) -> str:
    # opcheck wraps some failures (OpCheckError "... failed with <cause>"): the cause says more.
    cause = exc.__cause__ if type(exc).__name__ == "OpCheckError" and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {first_lines(str(cause)) or '(no message)'}"


def _any_requires_grad(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.requires_grad
    if isinstance(value, (list, tuple)):
        return any(_any_requires_grad(v) for v in value)
    return False


class OpCheck(Check):
    """``torch.library.opcheck`` on every sample; each sub-test reported on its own.

    Options (``options={"opcheck": {...}}``): ``test_utils``, the sub-tests to run (default: test_schema,
    test_autograd_registration, test_faketensor, test_aot_dispatch_dynamic).
    """

    name = "opcheck"
    options_accepted = ("test_utils",)
    description = "torch.library.opcheck: schema, autograd registration, fake kernel, AOT dispatch"

    def not_applicable(self, op: Any, spec: Any) -> Optional[str]:
        # Only the cheap question here: the sub-test table is imported in run(), when selected.
        if op.registration.name == "AUTOGRAD_FUNCTION":
            return f"{op.name} is a torch.autograd.Function, not an operator: opcheck tests torch.library registrations"
        if not hasattr(torch.library, "opcheck"):
            return f"torch {torch.__version__} has no torch.library.opcheck (it needs torch >= 2.4)"
        return None

    def run(self, ctx: CheckContext) -> CheckResult:
        global _warmed_up
        known = available_sub_tests()
        if known is None:
            return ctx.skipped(f"torch {torch.__version__} has no torch.library.opcheck (it needs torch >= 2.4)")
        requested = list(ctx.options.get("test_utils", DEFAULT_SUB_TESTS))
        missing = [name for name in requested if name not in known]
        sub_tests = [name for name in requested if name in known]
        notes = [f"{name}: not in torch {torch.__version__}'s opcheck, not run" for name in missing]
        if not sub_tests:
            return ctx.skipped(
                f"none of the requested opcheck sub-tests ({', '.join(requested)}) exists in torch "
                f"{torch.__version__}; it has {', '.join(known)}",
                notes=notes,
            )
        # Mutating ops cannot have autograd; inputs that require grad would only make the in-place
        # update an error, so they get plain inputs.
        samples = ctx.samples(requires_grad=wants_gradients(ctx))
        # An eager-only op has no fake kernel: its fake-tensor and AOT sub-tests do not apply (the
        # compile check says the same), the schema and autograd-registration ones still do.
        no_fake = missing_fake_kernel(ctx.op, samples)
        not_applicable = [name for name in sub_tests if no_fake and name.startswith(_NEEDS_FAKE_KERNEL)]
        not_run_notes = [f"{name}: not run: {no_fake}" for name in not_applicable]
        sub_tests = [name for name in sub_tests if name not in not_applicable]
        if not sub_tests:
            return ctx.skipped(f"{', '.join(not_applicable)} not run: {no_fake}", total=len(samples), notes=notes)
        failures: dict[str, list[Finding]] = {name: [] for name in sub_tests}
        passed: dict[str, int] = dict.fromkeys(sub_tests, 0)
        without_grad: dict[str, int] = dict.fromkeys(sub_tests, 0)
        findings: list[Finding] = []
        unfit = 0
        started = time.perf_counter()
        for index, sample in enumerate(samples):
            try:
                ctx.op.bind(sample)
            except TypeError as exc:
                findings.append(Finding(index, f"the sample does not fit the schema: {exc}"))
                unfit += 1
                continue
            grad = _any_requires_grad(list(sample.args) + list(sample.kwargs.values()))
            with warnings.catch_warnings():
                # anomaly-mode "Error detected in ..." warnings repeat what the result says
                warnings.simplefilter("ignore")
                try:
                    results = torch.library.opcheck(
                        ctx.op.overload, sample.args, sample.kwargs, test_utils=sub_tests, raise_exception=False
                    )
                except Exception as exc:  # opcheck itself refused the call
                    findings.append(Finding(index, f"torch.library.opcheck raised {_describe_error(exc)}"))
                    continue
            for name in sub_tests:
                outcome = results.get(name, "SUCCESS")
                if isinstance(outcome, BaseException):
                    failures[name].append(Finding(index, f"{name} failed: {_describe_error(outcome)}"))
                else:
                    passed[name] += 1
                    if not grad and (name in _NEEDS_GRAD_INPUT or name == "test_aot_dispatch_dynamic"):
                        without_grad[name] += 1
        elapsed = time.perf_counter() - started
        for name in sub_tests:
            if failures[name]:
                where = ", ".join(str(f.sample_index) for f in failures[name])
                notes.append(f"{name}: FAILED on sample(s) {where}")
            else:
                note = f"{name}: passed on {passed[name]} sample(s)"
                if without_grad[name]:
                    what = "not run" if name in _NEEDS_GRAD_INPUT else "backward not run"
                    note += f" ({what} by torch on {without_grad[name]} without an input that requires grad)"
                notes.append(note)
            findings.extend(failures[name])
        notes += not_run_notes
        if not _warmed_up:
            _warmed_up = True
            notes.append(f"{elapsed:.1f} s, including opcheck's one-time warm-up in this process")
        checked = len(samples) - unfit
        if findings:
            findings.sort(key=lambda f: f.sample_index if f.sample_index is not None else -1)
            return ctx.failed(findings, total=len(samples), checked=checked, notes=notes)
        return ctx.passed(checked, len(samples), notes=notes)
