"""``requires_grad_subsets``: the gradients stay right when only some inputs require grad.

Authors' samples usually make every input require grad, so a backward that misuses
``ctx.needs_input_grad``, or returns its gradients positionally shifted when it skips the ones not
needed, is wrong only where nobody looks. For each sample this check runs the backward with each input
alone requiring grad, and with all inputs but each one, and compares every gradient with the one the
same input gets when all inputs require grad (same input values, same grad_output).

Inputs are the sample's differentiable tensors that require grad, grouped by schema argument (a
``Tensor[]`` argument requires grad as a whole); an op with a single ``Tensor[]`` argument is split
element by element.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..differentiation import OpCall, Slot, random_like, real_loss, worst_mismatch
from ..dtypes import dtype_id, is_differentiable_dtype
from ..isolation import Crash, phase, run_contained, should_isolate
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["RequiresGradSubsetsCheck", "gradient_check_not_applicable"]

#: Why a subset is a legitimate input, on every finding's second line.
LEGITIMATE = (
    "why this is valid: any subset of the differentiable inputs may require grad (a frozen weight, a constant "
    "input); torch then calls the backward with ctx.needs_input_grad saying which, and the gradients it "
    "asks for must not change"
)


def gradient_check_not_applicable(op: Any) -> Optional[str]:
    """Why an op has no gradients to check at all (mutating, no tensor argument), or None."""
    if op.is_mutable:
        mutated = [a.name for a in op.schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        names = ", ".join(repr(n) for n in mutated) or "its inputs"
        return f"{op.name} mutates {names}: torch allows no autograd formula for an op that mutates its inputs"
    if not any(a.kind.is_tensor_like for a in op.arguments):
        return f"{op.name} takes no tensor argument"
    return None


def _units(slots: list[Slot]) -> list[tuple[str, list[int]]]:
    """The inputs switched on and off together: (label, slot positions)."""
    names = list(dict.fromkeys(s.name for s in slots))
    if len(names) >= 2:
        return [(f"'{name}'", [k for k, s in enumerate(slots) if s.name == name]) for name in names]
    return [(slot.label, [k]) for k, slot in enumerate(slots)]


def _subsets(units: list[tuple[str, list[int]]]) -> list[tuple[str, frozenset[int]]]:
    """Each input alone, then all but each one (the same sets when there are two inputs)."""
    everything = frozenset(k for _, positions in units for k in positions)
    subsets: dict[frozenset[int], str] = {}
    for label, positions in units:
        subsets.setdefault(frozenset(positions), f"only {label} requires grad")
    for label, positions in units:
        rest = everything - frozenset(positions)
        subsets.setdefault(rest, f"all inputs but {label} require grad")
    return [(description, subset) for subset, description in subsets.items() if subset and subset != everything]


def _reorder(entry: tuple[int, OpCall, list[tuple[str, list[int]]]]) -> tuple[OpCall, list[tuple[str, list[int]]], int]:
    index, call, units = entry
    return call, units, index


class RequiresGradSubsetsCheck(Check):
    """Gradients with only some inputs requiring grad equal those with all of them requiring grad."""

    name = "requires_grad_subsets"
    description = "gradients stay right when only some inputs require grad (each alone, all but each)"
    options_accepted = ("isolate",)

    def not_applicable(self, op: Any, spec: Any) -> Optional[str]:
        reason = gradient_check_not_applicable(op)
        if reason:
            return reason
        tensor_args = [a for a in op.arguments if a.kind.is_tensor_like]
        if len(tensor_args) == 1 and not tensor_args[0].kind.is_list:
            return f"{op.name} has one tensor input ('{tensor_args[0].name}'): there is no subset to try"
        return None

    def run(self, ctx: CheckContext) -> CheckResult:
        if not is_differentiable_dtype(ctx.dtype):
            return ctx.skipped(f"{dtype_id(ctx.dtype)} tensors cannot require grad: nothing to differentiate")
        samples = ctx.samples(requires_grad=True)
        findings: list[Finding] = []
        checked = 0
        subsets_run = 0
        runnable: list[tuple[int, OpCall, list[tuple[str, list[int]]]]] = []
        for index, sample in enumerate(samples):
            try:
                call = OpCall(ctx.op, sample)
            except TypeError as exc:
                findings.append(Finding(index, f"the sample does not fit the schema: {exc}"))
                continue
            units = _units(call.slots)
            if len(units) >= 2:
                runnable.append((index, call, units))
        # A compiled backward handed undefined gradients may crash: contained like edge_shapes' samples.
        isolate = should_isolate(ctx.op, ctx.device, ctx.options.get("isolate"))
        outcomes = run_contained(len(runnable), lambda step: self._check_sample(ctx, *_reorder(runnable[step])), isolate)
        for (index, _, _), outcome in zip(runnable, outcomes):
            checked += 1
            if isinstance(outcome, Crash):
                findings.append(Finding(index, f"{outcome.describe()}\n{LEGITIMATE}"))
                continue
            problems, count = outcome
            subsets_run += count
            findings.extend(problems)
        if findings:
            return ctx.failed(findings, total=len(samples), checked=checked)
        if checked == 0:
            return ctx.skipped(
                "no sample has two or more inputs that require grad (the samples need at least two "
                "floating-point tensor inputs with requires_grad=True)",
                total=len(samples),
            )
        return ctx.passed(checked, len(samples), notes=[f"{subsets_run} subset(s) of inputs requiring grad compared"])

    def _check_sample(
        self, ctx: CheckContext, call: OpCall, units: list[tuple[str, list[int]]], index: int
    ) -> tuple[list[Finding], int]:
        generator = ctx.generator(index)
        phase("the forward and backward with every input requiring grad")
        try:
            leaves = call.leaves()
            with torch.enable_grad():
                outputs = call.outputs(leaves)
                mask = call.differentiable_output_mask(outputs)
                kept = [o for o, keep in zip(outputs, mask) if keep]
                if not kept:
                    return [], 0  # no autograd formula at all: gradcheck reports that
                weights = [random_like(o.detach(), generator) for o in kept]
                full = torch.autograd.grad(real_loss(kept, weights), leaves, allow_unused=True)
        except Exception as exc:
            return [
                Finding(index, f"with every input requiring grad, forward or backward raised {format_user_traceback(exc)}")
            ], 0
        findings = []
        subsets = _subsets(units)
        for description, subset in subsets:
            problem = self._check_subset(ctx, call, mask, weights, full, subset, description, index)
            if problem is not None:
                findings.append(problem)
        return findings[:2], len(subsets)  # the first two tell the story; more repeat it

    def _check_subset(
        self,
        ctx: CheckContext,
        call: OpCall,
        mask: list[bool],
        weights: list[torch.Tensor],
        full: tuple[Optional[torch.Tensor], ...],
        subset: frozenset[int],
        description: str,
        index: int,
    ) -> Optional[Finding]:
        phase(f"the forward and backward when {description}")
        leaves = [t.detach().clone().requires_grad_(k in subset) for k, t in enumerate(call.leaves())]
        chosen = [leaves[k] for k in sorted(subset)]
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
                pairs = [
                    (o, w)
                    for o, w in zip([o for o, keep in zip(outputs, mask) if keep], weights)
                    if isinstance(o, torch.Tensor) and o.requires_grad
                ]
                if not pairs:
                    return Finding(index, f"when {description}, no output requires grad")
                grads = torch.autograd.grad(real_loss([o for o, _ in pairs], [w for _, w in pairs]), chosen, allow_unused=True)
        except Exception as exc:
            head, _, frames = format_user_traceback(exc).partition("\n")
            return Finding(index, f"when {description}, backward raised {head}\n{LEGITIMATE}\n{frames}".rstrip())
        for position, grad in zip(sorted(subset), grads):
            slot = call.slots[position]
            expected = full[position]
            if grad is not None and expected is not None and grad.shape != expected.shape:
                return Finding(
                    index,
                    f"when {description}, the gradient of input {slot.label} has shape {list(grad.shape)}, "
                    f"but {list(expected.shape)} when every input requires grad\n{LEGITIMATE}",
                    input_name=slot.name,
                )
            mismatch = worst_mismatch(grad, expected, ctx.tolerance)
            if mismatch is not None:
                missing = " (backward returned None for it)" if grad is None else ""
                return Finding(
                    index,
                    f"when {description}, the gradient of input {slot.label} is wrong{missing}: "
                    + mismatch.describe("every input requiring grad", f"{description}")
                    + f"\n{LEGITIMATE}",
                    input_name=slot.name,
                )
        return None
