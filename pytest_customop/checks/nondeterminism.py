"""``nondeterminism``: repeated forwards and backwards on the same inputs agree within ``nondet_tol``.

Per sample: two forwards on the same inputs; the backward of the first run twice over the same graph
(a backward that changes what it saved differs the second time) and the backward of the second run,
all with the same grad_output. The largest difference between outputs and between gradients is
compared with the marker's ``nondet_tol`` (default 0: bitwise equal) and reported on a pass too, so an
author whose CUDA kernel uses atomics can set the tolerance knowing the observed value.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..differentiation import OpCall, random_like
from ._support import gradient_samples, max_abs_difference, no_gradient_reason
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["NondeterminismCheck"]


def _fmt(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


class NondeterminismCheck(Check):
    """Forward and backward, run again on the same inputs, give the same values within ``nondet_tol``."""

    name = "nondeterminism"
    description = "repeated forward and backward on the same inputs agree within nondet_tol"

    def run(self, ctx: CheckContext) -> CheckResult:
        prepared = gradient_samples(ctx)
        if prepared.skip_reason:
            return ctx.skipped(prepared.skip_reason, total=prepared.total)
        findings = list(prepared.findings)
        tol = ctx.spec.nondet_tol
        worst = {"outputs": 0.0, "gradients": 0.0}
        checked = 0
        no_grad_reason = None
        for index, call in prepared.calls:
            result = self._check_sample(ctx, index, call, tol, worst)
            if result is _NO_GRAD:
                no_grad_reason = no_gradient_reason(ctx.op)
                continue
            checked += 1
            if result is not None:
                findings.append(result)
        note = (
            f"largest difference between repeated runs: outputs {_fmt(worst['outputs'])}, "
            f"gradients {_fmt(worst['gradients'])} (nondet_tol={_fmt(tol)})"
        )
        if findings:
            return ctx.failed(findings, total=prepared.total, checked=checked, notes=[note] if checked else [])
        if checked == 0:
            return ctx.skipped(no_grad_reason or "nothing to check", total=prepared.total)
        return ctx.passed(checked, prepared.total, notes=[note])

    def _check_sample(self, ctx: CheckContext, index: int, call: OpCall, tol: float, worst: dict[str, float]) -> Any:
        leaves = call.leaves()
        try:
            with torch.enable_grad():
                first = call.outputs(leaves)
                second = call.outputs(leaves)
        except Exception as exc:
            return Finding(index, f"forward raised {format_user_traceback(exc)}")
        mask = call.differentiable_output_mask(first)
        problem: Optional[Finding] = None
        for position, (a, b) in enumerate(zip(first, second)):
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                difference, where = max_abs_difference(a, b)
                worst["outputs"] = max(worst["outputs"], difference)
                if difference > tol and problem is None:
                    problem = Finding(index, self._message(f"output {position}", "two forwards", difference, where, tol))
        live_first = [o for o, keep in zip(first, mask) if keep]
        live_second = [o for o, keep in zip(second, mask) if keep]
        if not live_first:
            return problem if problem is not None else _NO_GRAD
        weights = [random_like(o, ctx.generator(index)) for o in live_first]
        try:
            grads_a = torch.autograd.grad(live_first, leaves, weights, allow_unused=True, retain_graph=True)
            grads_b = torch.autograd.grad(live_first, leaves, weights, allow_unused=True)
            grads_c = torch.autograd.grad(live_second, leaves, weights, allow_unused=True)
        except Exception as exc:
            return Finding(index, f"backward raised {format_user_traceback(exc)}")
        runs = (
            (grads_b, "two backwards over the same graph (the backward changes what it saved?)"),
            (grads_c, "two forward+backward runs"),
        )
        for other, what in runs:
            for slot, a, b in zip(call.slots, grads_a, other):
                difference, where = max_abs_difference(a, b)
                worst["gradients"] = max(worst["gradients"], difference)
                if difference > tol and problem is None:
                    problem = Finding(
                        index,
                        self._message(f"gradient of input {slot.label}", what, difference, where, tol),
                        input_name=slot.name,
                    )
        return problem

    @staticmethod
    def _message(what: str, runs: str, difference: float, where: tuple[int, ...], tol: float) -> str:
        at = f" at index {where}" if where else ""
        return (
            f"{what} differs between {runs} on the same inputs and grad_output: max |difference| "
            f"{_fmt(difference)}{at} > nondet_tol={_fmt(tol)}; if this nondeterminism is expected (atomic adds "
            f"on a GPU), set the marker's nondet_tol to at least {difference:.3g}"
        )


_NO_GRAD = object()
