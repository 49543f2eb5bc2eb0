"""The ``customop`` fixture's value: the op under test bound to one item's device, dtype and check.

It knows nothing of pytest: the plugin hands it the functions that fail or skip a test.
"""

from __future__ import annotations

from typing import Any, Callable, NoReturn, Optional

import torch

from .cases import Case
from .checks.base import CheckContext, CheckResult, Outcome, format_user_traceback
from .checks.registry import CheckRegistry
from .dtypes import dtype_id
from .options import Settings
from .samples import SampleInput, SamplesError, collect_samples

__all__ = ["CustomOpUnderTest", "render_failure"]


def _copy_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(t.requires_grad)


def _seed(seed: int, device: str) -> None:
    """Seed torch's generators for ``device``. On the CPU only the CPU generator: ``torch.manual_seed``
    also queues lazy seeding of every accelerator backend, formatting the Python stack each time
    (~0.3 ms, several ms deep inside pytest), twice per item."""
    if device == "cpu":
        torch.random.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def render_failure(
    op_name: str, device: str, dtype: torch.dtype, result: CheckResult, samples: list[SampleInput], repro: str
) -> str:
    """The message of a failed check: what, where, each finding by sample and input, how to rerun."""
    failed_samples = sorted({f.sample_index for f in result.findings if f.sample_index is not None})
    lines = [
        f"{op_name} {result.check} failed on {device} {dtype_id(dtype)}: "
        f"{len(failed_samples) or len(result.findings)} of {result.samples_total} sample(s)"
    ]
    for finding in result.findings:
        if finding.sample_index is not None and finding.sample_index < len(samples):
            lines.append(f"  sample {finding.sample_index}: {samples[finding.sample_index]!r}")
        body = finding.message.splitlines() or [""]
        lines.append(f"    {body[0]}")
        lines.extend(f"    {line}" for line in body[1:])
    lines.extend(f"  note: {note}" for note in result.notes)
    lines.append(f"  reproduce: {repro}")
    return "\n".join(lines)


class CustomOpUnderTest:
    """The op under test, bound to this item's ``device``, ``dtype`` and ``check``.

    ``customop.check()`` runs the item's check over every sample and fails the test with a message
    naming the op, check, device, dtype, sample and input. ``customop(*args, **kwargs)`` calls the op;
    ``customop.samples()`` gives this item's samples (fresh copies each call).
    """

    def __init__(
        self,
        case: Case,
        registry: CheckRegistry,
        settings: Settings,
        seed: int,
        repro: str,
        *,
        nodeid: str = "",
        fail: Callable[[str], NoReturn],
        skip: Callable[[str], NoReturn],
        on_result: Callable[[CheckResult], None] = lambda result: None,
    ) -> None:
        self.case = case
        self.seed = seed
        self.repro = repro
        #: Set once a check ran (check() or run_check()), or the test called the op or took its samples
        #: to verify it itself: a test that does none of these verified nothing and fails.
        self.verified = False
        self.nodeid = nodeid
        self._registry = registry
        self._settings = settings
        self._fail = fail
        self._skip = skip
        self._on_result = on_result
        self._samples: dict[tuple[torch.dtype, bool], list[SampleInput]] = {}
        self._cache: dict[Any, Any] = {}

    # -- what the item is about ---------------------------------------------------------------
    @property
    def op(self) -> Any:
        """The resolved op (:class:`pytest_customop.ops.ResolvedOp`): ``name``, ``schema``, ``overload``."""
        return self.case.spec.op

    @property
    def schema(self) -> Any:
        return self.op.schema

    @property
    def spec(self) -> Any:
        return self.case.spec

    @property
    def device(self) -> str:
        return self.case.device

    @property
    def dtype(self) -> torch.dtype:
        return self.case.dtype

    @property
    def check_name(self) -> str:
        return self.case.check

    def __repr__(self) -> str:
        return f"<customop {self.op.name} on {self.device} {dtype_id(self.dtype)}, check {self.check_name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the op under test, through the plugin's autograd kernel when an input requires grad, so
        that a later backward has its gradients validated by input name (see the ``grad_keys`` check)."""
        from .kernel.generated_kernel import call_through_kernel

        self.verified = True  # the test checks the op's results itself
        return call_through_kernel(self.op, args, kwargs, self._cache)

    # -- samples --------------------------------------------------------------------------------
    def samples(self, requires_grad: bool = True, dtype: Optional[torch.dtype] = None) -> list[SampleInput]:
        """This item's samples, built once (seeded from the item) and copied on every call."""
        __tracebackhide__ = True
        self.verified = True  # the test (or a check) verifies on them
        key = (dtype or self.dtype, requires_grad)
        if key not in self._samples and getattr(self.spec, "derived_samples", False):
            torch.manual_seed(self.seed)
            self._samples[key] = self._derived_samples(key[0], requires_grad)
        if key not in self._samples:
            if self.spec.samples is None:
                self._fail(f"{self.op.name}: the marker gives no samples=")
            _seed(self.seed, self.device)
            problem = None
            try:
                self._samples[key] = collect_samples(self.spec.samples, self.device, key[0], requires_grad)
            except SamplesError as exc:
                problem = str(exc)
                if exc.__cause__ is not None:
                    problem += "\n" + format_user_traceback(exc.__cause__).split("\n", 1)[-1]
            if problem is not None:  # failed outside the except block: no chained traceback
                self._fail(f"{self.nodeid}: customop marker argument 'samples': {problem}\n  reproduce: {self.repro}")
        return [sample.map(_copy_tensor) for sample in self._samples[key]]

    def _derived_samples(self, dtype: torch.dtype, requires_grad: bool) -> list[SampleInput]:
        """Samples derived from the schema that the op accepts; the item is skipped when it accepts
        none (an op that needs specific inputs is not broken, it needs ``samples=``)."""
        __tracebackhide__ = True
        from .derived_samples import NoUsableSamples, usable_derived_samples

        reason = None
        try:
            return usable_derived_samples(self.op, self.device, dtype, requires_grad)
        except NoUsableSamples as exc:
            reason = str(exc)
        self._skip(reason)  # NoReturn: raises pytest's skip

    # -- checks ---------------------------------------------------------------------------------
    def run_check(self, name: Optional[str] = None) -> CheckResult:
        """Run a check (this item's, by default) and return its result without failing the test."""
        __tracebackhide__ = True
        name = name or self.check_name
        if name not in self._registry:
            self._fail(f"unknown check {name!r}; known: {', '.join(self._registry.names())}")
        ctx = CheckContext(
            op=self.op,
            spec=self.spec,
            device=self.device,
            dtype=self.dtype,
            seed=self.seed,
            check=name,
            make_samples=lambda dtype, requires_grad: self.samples(requires_grad, dtype),
            fast_mode_threshold=self._settings.fast_mode_threshold,
            full_jacobian=self._settings.full_jacobian,
            strict_edges=self._settings.strict_edges,
            cache=self._cache,
        )
        _seed(self.seed, self.device)
        from .triton_support import with_environment_refusals_skipped

        self.verified = True
        escaped = None
        # Grad mode on whatever the caller set (a conftest's torch.set_grad_enabled(False), an
        # inference_mode around the test): the checks need it, and its absence is not the op's fault.
        with torch.inference_mode(False), torch.enable_grad():
            try:
                # Triton refusing to run a kernel here (an interpreter gap, CPU tensors without it) is no verdict.
                return with_environment_refusals_skipped(self._registry[name].run(ctx))
            except SystemExit as exc:  # an op (or its samples) called sys.exit: the item fails, the run goes on
                escaped = exc
        self._fail(
            f"{self.op.name} {name} on {self.device} {dtype_id(self.dtype)}: the op raised SystemExit({escaped.code!r}) "
            f"during the check (sys.exit() in the op, its backward or its samples)\n  reproduce: {self.repro}"
        )

    def check(self, name: Optional[str] = None) -> CheckResult:
        """Run this item's check over every sample; fail or skip the test as its result says."""
        __tracebackhide__ = True
        result = self.run_check(name)
        self._on_result(result)
        if result.outcome is Outcome.FAILED:
            # the samples the check used: with requires_grad, or without when it asked for those only
            samples = self._samples.get((self.dtype, True)) or self._samples.get((self.dtype, False), [])
            self._fail(render_failure(self.op.name, self.device, self.dtype, result, samples, self.repro))
        if result.outcome is Outcome.SKIPPED:
            self._skip(result.reason)
        return result
