"""``forward_ad``: forward-mode AD (the op's jvp) against a central finite difference.

Per sample: one forward with dual tensors carrying a random tangent on every differentiable input, and
two plain forwards for the finite difference along the same tangent (in float64 for lower precisions,
on the same input values). Only on a mismatch is the tangent moved input by input to name the culprit.

Ops defined with ``torch.library.custom_op`` (or the legacy ``torch._custom_ops``) cannot register a
jvp: torch silently drops their tangents (``torch.func.jvp`` returns zeros). That is unsupported, not
wrong, and skipped with that reason at collection; so is any op whose outputs come back without a
tangent or that raises "jvp not implemented". ``supports_forward_ad=True`` in the marker turns
"unsupported" into a failure; ``supports_forward_ad=False`` skips the check.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Optional, Sequence

import torch
from torch.autograd import forward_ad as fwAD

from ..differentiation import OpCall, numerical_jvp, random_like
from ..dtypes import dtype_id, is_reference_precision, reference_dtype
from ..ops import RegistrationStyle, ResolvedOp
from ._support import agreement, gradient_samples, mutated_arguments
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["ForwardADCheck", "registration_without_jvp"]

_UNSUPPORTED = re.compile(
    r"must implement the jvp function|Trying to use forward AD|forward AD is not implemented"
    r"|not implemented for forward|forward.mode (?:AD|differentiation) .*not (?:supported|implemented)"
    r"|derivative for .* is not implemented"
    # a C++ torch::autograd::Function: "jvp is not implemented for the c++ API of custom Function yet"
    r"|jvp is not implemented",
    re.IGNORECASE,
)


def registration_without_jvp(op: ResolvedOp) -> Optional[str]:
    """The reason forward-mode AD cannot work for ``op`` because of how it was defined, or None."""
    if op.registration is RegistrationStyle.AUTOGRAD_FUNCTION:
        return op.no_jvp_reason()  # type: ignore[attr-defined]
    if op.custom_op_def is not None:
        api = "torch.library.custom_op"
    elif op.legacy_op is not None:
        api = "torch._custom_ops.custom_op (legacy)"
    else:
        return None
    return (
        f"forward-mode AD is unsupported for {op.name}: {api} ops cannot register a jvp, and torch "
        "silently drops their tangents (torch.func.jvp returns zeros); not a failure of the op"
    )


class _Unsupported(Exception):
    """The op has no forward-mode formula (raised out of one sample)."""


def _tangents_out(
    call: OpCall, leaves: Sequence[torch.Tensor], tangents: Sequence[Optional[torch.Tensor]]
) -> list[Optional[torch.Tensor]]:
    """The output tangents of one forward-mode evaluation (None where an output carries none)."""
    fn = call.function()
    with warnings.catch_warnings(), fwAD.dual_level():
        # torch's first make_dual loads its jvp decompositions through the deprecated torch.jit.script:
        # a DeprecationWarning up to 2.13, a FutureWarning since (an error under -W error, either way).
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        duals = [leaf if t is None else fwAD.make_dual(leaf, t) for leaf, t in zip(leaves, tangents)]
        outputs = fn(*duals)
        result = []
        for output in outputs:
            tangent = fwAD.unpack_dual(output).tangent
            result.append(None if tangent is None else tangent.detach().clone())
    return result


class ForwardADCheck(Check):
    """Forward-mode AD against finite differences along a random tangent, where the op supports it."""

    name = "forward_ad"
    description = "forward-mode AD (jvp) against a central finite difference along a random tangent"

    def not_applicable(self, op: ResolvedOp, spec: Any) -> Optional[str]:
        if spec.supports_forward_ad is False:
            return "the marker declares supports_forward_ad=False"
        if spec.supports_forward_ad is None:
            return registration_without_jvp(op)
        return None

    def run(self, ctx: CheckContext) -> CheckResult:
        prepared = gradient_samples(ctx)
        if prepared.skip_reason:
            return ctx.skipped(prepared.skip_reason, total=prepared.total)
        unsupported = registration_without_jvp(ctx.op)
        mutated = mutated_arguments(ctx.op)
        if unsupported is None and mutated:
            unsupported = (
                f"{ctx.op.name} mutates {', '.join(repr(m) for m in mutated)}: forward-mode AD of mutating ops is not checked"
            )
        findings = list(prepared.findings)
        checked = 0
        if unsupported is None:
            for index, call in prepared.calls:
                try:
                    finding = self._check_sample(ctx, index, call)
                except _Unsupported as exc:
                    unsupported = str(exc)
                    break
                checked += 1
                if finding is not None:
                    findings.append(finding)
        if unsupported is not None:
            if ctx.spec.supports_forward_ad:
                claim = f"the marker declares supports_forward_ad=True but {unsupported}"
                return ctx.failed([Finding(None, claim)], total=prepared.total)
            return ctx.skipped(unsupported, total=prepared.total)
        if findings:
            return ctx.failed(findings, total=prepared.total, checked=checked)
        return ctx.passed(checked, prepared.total)

    # -- one sample ---------------------------------------------------------------------------
    def _check_sample(self, ctx: CheckContext, index: int, call: OpCall) -> Optional[Finding]:
        leaves = [leaf.detach() for leaf in call.leaves()]
        generator = ctx.generator(index)
        tangents: list[Optional[torch.Tensor]] = [random_like(leaf, generator) for leaf in leaves]
        got = self._jvp(ctx, index, call, leaves, tangents)
        if isinstance(got, Finding):
            return got
        if not got:
            return None  # no floating output: nothing to differentiate
        if all(t is None for t in got):
            raise _Unsupported(
                f"no output of {ctx.op.name} carries a tangent under forward-mode AD: the op has no forward "
                "formula (ops whose backward is registered with torch.library.register_autograd cannot "
                "register a jvp, and torch drops their tangents); not a failure of the op"
            )
        problem = self._compare(ctx, call, leaves, tangents, got)
        if problem is None:
            return None
        input_name, label = None, ""
        if len(leaves) > 1:  # name the input whose jvp is wrong: one tangent at a time
            for position, slot in enumerate(call.slots):
                single = [t if k == position else None for k, t in enumerate(tangents)]
                single_got = self._jvp(ctx, index, call, leaves, single)
                if isinstance(single_got, Finding):
                    continue
                single_problem = self._compare(ctx, call, leaves, single, single_got)
                if single_problem is not None:
                    problem, input_name, label = single_problem, slot.name, f" (tangent on input {slot.label} only)"
                    break
        output, detail = problem
        return Finding(
            index,
            f"forward-mode AD of {output}{label} along a random tangent: {detail}",
            input_name=input_name,
        )

    def _jvp(
        self, ctx: CheckContext, index: int, call: OpCall, leaves: list[torch.Tensor], tangents: list[Optional[torch.Tensor]]
    ) -> list[Optional[torch.Tensor]] | Finding:
        try:
            return _tangents_out(call, leaves, tangents)
        except Exception as exc:
            if isinstance(exc, NotImplementedError) or _UNSUPPORTED.search(str(exc)):
                # an explicit refusal (the op's jvp raising NotImplementedError, torch's "not implemented")
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise _Unsupported(f"forward-mode AD is unsupported for {ctx.op.name}: {first}") from None
            return Finding(index, f"forward-mode AD raised {format_user_traceback(exc)}")

    def _compare(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        tangents: list[Optional[torch.Tensor]],
        got: list[Optional[torch.Tensor]],
    ) -> Optional[tuple[str, str]]:
        """(which output, what differs) for the first output whose tangent disagrees with finite differences."""
        eps = ctx.spec.eps or 1e-6
        if is_reference_precision(ctx.dtype):
            reference, ref_leaves, ref_tangents, source = call, leaves, tangents, "finite differences"
        else:
            ref_dtype = reference_dtype(ctx.dtype)
            reference = call.with_dtype(ref_dtype)
            ref_leaves = [leaf.detach() for leaf in reference.leaves()]
            ref_tangents = [None if t is None else t.to(r.dtype) for t, r in zip(tangents, ref_leaves)]
            source = f"{dtype_id(ref_dtype)} finite differences"
        expected = numerical_jvp(reference.function(), ref_leaves, ref_tangents, eps)
        for position, (g, e) in enumerate(zip(got, expected)):
            detail = agreement(g, e, ctx.tolerance, "forward AD", source)
            if detail is not None:
                if g is None:
                    detail += "; the output carries no tangent (taken as zeros)"
                return f"output {position}", detail
        return None
