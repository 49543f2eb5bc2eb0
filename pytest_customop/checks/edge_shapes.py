"""``edge_shapes``: backwards that only work for the shapes their author tried.

From each given sample the check derives edge-case samples in two tiers (see
:mod:`pytest_customop.relations`):

- **proven** variants, from a relation the op's forward confirms on the given sample: a dimension the
  inputs share with the outputs (a batch, a sequence) sliced to 0 or 1 in every tensor that has it,
  index and mask tensors included; an input under test given size 1 in one dimension, whose output is
  that of the input broadcast back. A proven variant whose backward raises, or whose gradients are
  wrong, fails the item; the message names the relation and what the forward gave;
- **suspected** variants: any other shape of the inputs under test that the forward accepts (one size
  made 0 or 1 in them alone, an input made 0-dim or without its leading dimension). A backward that
  raises or is wrong there is a note on the result and a :class:`SuspectedEdgeWarning`, not a failure,
  unless ``--customop-strict-edges`` (or ``options={"edge_shapes": {"strict": True}}``) says so.

Integer, bool and buffer tensors change shape only with the shared dimension they index, never alone.
A derived sample whose forward the op rejects is skipped (the note says why). In float64/complex128 the
gradients are compared with finite differences, at lower precisions with the float64 gradients of the
same values. For compiled ops on the CPU, derived forwards and backwards run in forked children
(:mod:`pytest_customop.isolation`): a derived sample that crashes the process fails the item with the
signal and the sample, whatever its tier (a crash is never a valid way to reject an input).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..differentiation import OpCall, random_like, vjp, worst_mismatch
from ..dtypes import dtype_id, is_differentiable_dtype, is_reference_precision, reference_dtype
from ..isolation import Crash, phase, run_contained, should_isolate
from ..relations import EdgeVariant, edge_variants, samples_broadcast
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback
from .gradcheck import FiniteDifferenceDiagnosis  # the per-input comparison gradcheck explains failures with
from .opcheck import first_lines
from .requires_grad_subsets import gradient_check_not_applicable

__all__ = ["EdgeShapesCheck", "SuspectedEdgeWarning", "derive_edge_samples"]

#: Derived samples checked per item unless ``options={"edge_shapes": {"max_derived": N}}`` says otherwise.
DEFAULT_MAX_DERIVED = 24

#: How every suspected-edge note begins (the reports pick such notes out of a passing item's notes).
SUSPECTED_PREFIX = "suspected edge:"


class SuspectedEdgeWarning(UserWarning):
    """The backward raises or is wrong on a shape the forward accepts but no relation proves valid."""


@dataclass
class _Wrong:
    """What a derived sample's backward did wrong: the first line of the message, and the rest."""

    headline: str
    detail: str
    input_name: Optional[str] = None


def derive_edge_samples(op: Any, sample: Any) -> list[tuple[str, Any]]:
    """The edge-case samples derived from ``sample``, proven ones first: (what was changed, sample)."""
    variants, _ = edge_variants(op, sample, isolate=False)
    return [(v.description, v.sample) for v in variants]


def _shapes(outputs: list[Any]) -> str:
    shapes = [str(list(o.shape)) for o in outputs if isinstance(o, torch.Tensor)]
    if len(shapes) == 1:
        return f"an output of shape {shapes[0]}"
    return "outputs of shapes " + ", ".join(shapes)


class EdgeShapesCheck(Check):
    """Backward on zero-size, size-1, 0-dim and broadcast samples derived from the given ones.

    Options (``options={"edge_shapes": {...}}``): ``max_derived``, the most derived samples checked per
    item (default 24); ``strict``, fail on suspected edges too; ``isolate``, run derived samples in
    forked children (default: for compiled ops on the CPU).
    """

    name = "edge_shapes"
    options_accepted = ("max_derived", "strict", "isolate")
    description = "backward on zero-size, size-1, 0-dim and broadcast samples derived from the given ones"

    def not_applicable(self, op: Any, spec: Any) -> Optional[str]:
        return gradient_check_not_applicable(op)

    def run(self, ctx: CheckContext) -> CheckResult:
        if not is_differentiable_dtype(ctx.dtype):
            return ctx.skipped(f"{dtype_id(ctx.dtype)} tensors cannot require grad: nothing to differentiate")
        limit = int(ctx.options.get("max_derived", DEFAULT_MAX_DERIVED))
        strict = bool(ctx.options.get("strict", ctx.strict_edges))
        isolate = should_isolate(ctx.op, ctx.device, ctx.options.get("isolate"))
        samples = ctx.samples(requires_grad=True)
        notes: list[str] = []
        per_sample = []
        broadcasting = samples_broadcast(samples)
        for index, sample in enumerate(samples):
            variants, probe_notes = edge_variants(ctx.op, sample, isolate, source=index, broadcasting=broadcasting)
            per_sample.append(variants)
            notes.extend(probe_notes)
        derived = self._select(per_sample, samples, limit)
        outcomes = run_contained(len(derived), lambda number: self._check_guarded(ctx, number, derived[number]), isolate)
        findings: list[Finding] = []
        suspected: list[str] = []
        rejected: list[str] = []
        checked = 0
        for variant, outcome in zip(derived, outcomes):
            if isinstance(outcome, tuple):  # (outcome, proven, evidence): the step may have demoted it
                outcome, variant.proven, variant.evidence = outcome
            where = f"derived sample: {variant.sample!r}"
            if isinstance(outcome, Crash):
                tier = "proven" if variant.proven else "suspected"
                findings.append(
                    Finding(
                        variant.source,
                        f"on a {tier} edge ({variant.description}), {outcome.describe()}\n{where}"
                        + (f"\nwhy it is valid: {variant.evidence}" if variant.evidence else ""),
                    )
                )
            elif isinstance(outcome, _Wrong):
                if variant.proven:
                    findings.append(
                        Finding(
                            variant.source,
                            f"on a proven edge ({variant.description}), {outcome.headline}\n{where}\n"
                            f"why it is valid: {variant.evidence}\n{outcome.detail}".rstrip(),
                            input_name=outcome.input_name,
                        )
                    )
                elif strict:
                    findings.append(
                        Finding(
                            variant.source,
                            f"on a suspected edge ({variant.description}, which the forward accepts; failing because "
                            f"suspected edges are strict), {outcome.headline}\n{where}\n{outcome.detail}".rstrip(),
                            input_name=outcome.input_name,
                        )
                    )
                else:
                    suspected.append(
                        f"{SUSPECTED_PREFIX} on sample {variant.source} with {variant.description}, which the forward accepts, "
                        f"{outcome.headline}; if this is a valid input, this is a bug ({where})"
                    )
            elif outcome is None:
                checked += 1
            else:
                rejected.append(str(outcome))
        wrong = len(findings) + len(suspected)
        proven = sum(1 for v in derived if v.proven)
        notes.insert(
            0,
            f"{len(derived)} derived sample(s) ({proven} proven by the forward, {len(derived) - proven} suspected): "
            f"{checked} right, {wrong} wrong, {len(rejected)} skipped",
        )
        if rejected:
            notes.append(f"skipped, e.g. {rejected[0]}")
        notes.extend(suspected)  # last: the reports read each from its prefix to the next one or the end
        for text in suspected:
            warnings.warn(SuspectedEdgeWarning(f"{ctx.where()}: {text}"), stacklevel=2)
        if findings:
            return ctx.failed(findings, total=len(samples), checked=checked, notes=notes)
        if checked == 0 and not suspected:
            if not derived:
                return ctx.skipped("no edge-case sample could be derived from the given samples", total=len(samples))
            return ctx.skipped(
                f"the op rejects or cannot differentiate every derived sample, e.g. {rejected[0]}",
                total=len(samples),
                notes=notes,
            )
        return ctx.passed(len(samples), len(samples), notes=notes)

    @staticmethod
    def _select(per_sample: list[list[EdgeVariant]], samples: list[Any], limit: int) -> list[EdgeVariant]:
        """Proven variants first, then suspected ones, round-robin over the given samples (so a cap keeps
        derivations of each), without duplicates of each other or of the given samples."""
        seen = {repr(type(s)(*s.args, **s.kwargs)) for s in samples}
        chosen: list[EdgeVariant] = []
        for proven in (True, False):
            tier = [[v for v in variants if v.proven is proven] for variants in per_sample]
            for batch in itertools.zip_longest(*tier):
                for variant in batch:
                    if variant is not None and variant.signature() not in seen:
                        seen.add(variant.signature())
                        chosen.append(variant)
        return chosen[:limit]

    def _check_guarded(self, ctx: CheckContext, number: int, variant: EdgeVariant) -> tuple[Any, bool, str]:
        """(outcome, proven, evidence) of one derived sample; run in a forked child when isolated."""
        try:
            outcome = self._check_derived(ctx, number, variant)
            if ctx.device.startswith("cuda"):
                torch.cuda.synchronize()  # an asynchronous kernel fault belongs to this sample
        except Exception as exc:  # outside the op's forward and backward: the plugin's own probe
            outcome = f"{variant.description}: the check could not run it ({type(exc).__name__}: {first_lines(str(exc), 1)})"
        return outcome, variant.proven, variant.evidence

    def _check_derived(self, ctx: CheckContext, number: int, variant: EdgeVariant) -> Any:
        """None when checked and right, a _Wrong when wrong, a string saying why it was skipped."""
        description, sample = variant.description, variant.sample
        try:
            call = OpCall(ctx.op, sample)
        except TypeError as exc:
            return f"{description}: {first_lines(str(exc), 1)}"
        if not call.slots:
            return f"{description}: no input requires grad"
        leaves = call.leaves()
        phase("the forward")
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
        except Exception as exc:
            return f"{description}: the forward rejects it ({type(exc).__name__}: {first_lines(str(exc), 1)})"
        if variant.proven and variant.expected_shapes is not None:
            got = [tuple(o.shape) if isinstance(o, torch.Tensor) else None for o in outputs]
            if len(got) != len(variant.expected_shapes) or any(
                e is not None and g != e for g, e in zip(got, variant.expected_shapes)
            ):
                # The slice to 1 matched, the slice to 0 does not: not the relation, so not proven.
                variant.proven = False
        variant.evidence += f"; here the forward gives {_shapes(outputs)}" if variant.proven else ""
        mask = call.differentiable_output_mask(outputs)
        if not any(mask):
            return f"{description}: no output requires grad"
        kept = [o for o, keep in zip(outputs, mask) if keep]
        weights = [random_like(o.detach(), ctx.generator(1000 + number)) for o in kept]
        phase("the backward")
        try:
            grads = vjp(kept, leaves, weights)
        except Exception as exc:
            text = format_user_traceback(exc)
            head, _, rest = text.partition("\n")
            return _Wrong(f"the backward raised {head}", rest)
        labels = [s.label for s in call.slots]
        phase("the forwards and backwards of the reference")
        try:
            if is_reference_precision(ctx.dtype):
                eps = ctx.spec.eps or 1e-6
                problems = FiniteDifferenceDiagnosis(ctx, eps, ctx.tolerance).run(
                    call.function(mask), leaves, labels, "gradient", salt=1000 + number
                )
            else:
                problems = self._against_reference(ctx, call, mask, grads, weights, labels)
        except Exception as exc:
            return f"{description}: the reference could not be computed ({type(exc).__name__}: {first_lines(str(exc), 1)})"
        if problems:
            label, message = problems[0]
            name = call.slots[labels.index(label)].name if label in labels else None
            more = "".join(f"\n{m}" for _, m in problems[1:])
            return _Wrong(message, more.lstrip("\n"), input_name=name)
        return None

    def _against_reference(
        self,
        ctx: CheckContext,
        call: OpCall,
        mask: list[bool],
        grads: list[Optional[torch.Tensor]],
        weights: list[torch.Tensor],
        labels: list[str],
    ) -> list[tuple[str, str]]:
        ref_dtype = reference_dtype(ctx.dtype)
        reference = call.with_dtype(ref_dtype)
        leaves = reference.leaves()
        # The reference is the op's own backward at float64: proven against finite differences first (along
        # a random direction per input, two forwards each), so a backward wrong at every dtype is not
        # "consistent" here. An op that cannot run at float64 raises above: no verdict on that variant.
        eps = ctx.spec.eps or 1e-6

        def prove(step: float) -> list[tuple[str, str]]:  # the same directions whatever the step (one salt)
            return FiniteDifferenceDiagnosis(ctx, step, ctx.spec.tolerance(ref_dtype)).run(
                reference.function(mask), leaves, labels, f"{dtype_id(ref_dtype)} gradient", salt=2000, elementwise=False
            )

        # A step 1000x larger that agrees means the forward's own rounding drowned the differences at eps
        # (an op computing below float64 inside): then its float64 gradients are compared, not proven.
        proof = prove(eps)
        if proof and prove(eps * 1000):
            return proof
        with torch.enable_grad():
            outputs = [o for o, keep in zip(reference.outputs(leaves), mask) if keep]
            expected = vjp(outputs, leaves, [w.detach().to(o.dtype) for w, o in zip(weights, outputs)])
        problems = []
        for label, g, e in zip(labels, grads, expected):
            mismatch = worst_mismatch(g, e, ctx.tolerance)
            if mismatch is not None:
                problems.append(
                    (label, f"gradient of input {label}: {mismatch.describe(dtype_id(ref_dtype), dtype_id(ctx.dtype))}")
                )
        return problems
