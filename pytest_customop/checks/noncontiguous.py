"""``noncontiguous``: the same outputs and gradients when inputs and grad_outputs are not contiguous.

Per sample: a forward and two backwards on the sample as given (a random grad_output, then a constant
one), and the same on copies whose every tensor input holds the same values in non-contiguous memory
(dimensions reversed in storage, one element in two, the gaps filled with NaN), with a non-contiguous
random grad_output and a stride-0 expanded constant grad_output (what ``y.sum().backward()`` hands a
backward). Outputs and gradients must agree.

It catches a forward or backward that assumes contiguous memory: ``.view`` on a transposed tensor
(raises), raw storage reads through ``data_ptr``/``untyped_storage`` (reads the NaN gaps), an in-place
write into an expanded grad_output (raises), or a kernel indexing by shape instead of strides.
"""

from __future__ import annotations

from typing import Any

import torch

from ..differentiation import OpCall, random_like
from ..dtypes import is_differentiable_dtype
from ..samples import SampleInput
from ._support import agreement, gradient_samples, no_gradient_reason
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["NoncontiguousCheck", "noncontiguous_like"]


def noncontiguous_like(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` in non-contiguous memory: dims reversed in storage, every other element a
    NaN gap (or 12 for integers, False for bools). Keeps ``requires_grad``; tensors of one element or
    fewer cannot be made non-contiguous and come back as a plain copy."""
    if t.numel() <= 1:
        return t.detach().clone().requires_grad_(t.requires_grad)
    order = list(range(t.dim() - 1, -1, -1))
    fill: Any = float("nan") if is_differentiable_dtype(t.dtype) else (False if t.dtype == torch.bool else 12)
    storage_shape = [t.shape[d] for d in order] + [2]
    base = torch.full(storage_shape, fill, dtype=t.dtype, device=t.device)
    base[..., 1] = t.detach().permute(order)
    result = base[..., 1].permute(order)  # reversing the dims twice restores t's shape
    return result.requires_grad_(t.requires_grad)


def _expanded_constant(output: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return value.to(device=output.device, dtype=output.dtype).expand(output.shape)


class NoncontiguousCheck(Check):
    """Outputs and gradients on non-contiguous inputs and grad_outputs equal the contiguous ones."""

    name = "noncontiguous"
    description = "the same outputs and gradients with non-contiguous inputs and grad_outputs"

    def run(self, ctx: CheckContext) -> CheckResult:
        prepared = gradient_samples(ctx)
        if prepared.skip_reason:
            return ctx.skipped(prepared.skip_reason, total=prepared.total)
        findings = list(prepared.findings)
        checked = 0
        no_grad_reason = None
        for index, call in prepared.calls:
            result = self._check_sample(ctx, index, call)
            if result is _NO_GRAD:
                no_grad_reason = no_gradient_reason(ctx.op)
                continue
            checked += 1
            if result is not None:
                findings.append(result)
        if findings:
            return ctx.failed(findings, total=prepared.total, checked=checked)
        if checked == 0:
            return ctx.skipped(no_grad_reason or "nothing to check", total=prepared.total)
        return ctx.passed(checked, prepared.total)

    def _check_sample(self, ctx: CheckContext, index: int, call: OpCall) -> Any:
        leaves = call.leaves()
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
        except Exception as exc:
            return Finding(index, f"forward raised {format_user_traceback(exc)}")
        mask = call.differentiable_output_mask(outputs)
        live = [o for o, keep in zip(outputs, mask) if keep]
        if not live:
            return _NO_GRAD
        generator = ctx.generator(index)
        weights = [random_like(o, generator) for o in live]
        constants = [random_like(torch.empty((), dtype=o.dtype), generator) for o in live]
        try:
            # Clones: a backward that writes into its grad_output must not change the reference.
            expected = torch.autograd.grad(live, leaves, [w.clone() for w in weights], allow_unused=True, retain_graph=True)
            expected_const = torch.autograd.grad(
                live, leaves, [c.to(o.device).expand(o.shape).contiguous() for c, o in zip(constants, live)], allow_unused=True
            )
        except Exception as exc:
            return Finding(index, f"backward raised (contiguous inputs) {format_user_traceback(exc)}")

        # The same values, non-contiguous: every tensor argument, leaves included.
        strided_sample: SampleInput = call.sample.map(noncontiguous_like)
        strided_call = OpCall(ctx.op, strided_sample)
        strided_leaves = [noncontiguous_like(leaf.detach()).requires_grad_(True) for leaf in leaves]
        layouts = ", ".join(
            f"{s.label} strides {tuple(t.stride())}" for s, t in zip(call.slots, strided_leaves) if not t.is_contiguous()
        )
        where = f"non-contiguous inputs ({layouts})" if layouts else "non-contiguous inputs"
        try:
            with torch.enable_grad():
                strided_outputs = strided_call.outputs(strided_leaves)
        except Exception as exc:
            return Finding(index, f"forward raised on {where}: {format_user_traceback(exc)}")
        for position, (got, exp) in enumerate(zip(strided_outputs, outputs)):
            if isinstance(exp, torch.Tensor) and isinstance(got, torch.Tensor):
                detail = agreement(got, exp, ctx.tolerance, "non-contiguous", "contiguous")
                if detail is not None:
                    return Finding(index, f"output {position} differs on {where}: {detail}")
        strided_live = [o for o, keep in zip(strided_outputs, mask) if keep]
        if len(strided_live) != len(live) or not all(o.requires_grad for o in strided_live):
            return Finding(index, f"on {where} the outputs requiring grad are not the same as on contiguous inputs")
        runs = [
            (
                "a non-contiguous grad_output",
                [noncontiguous_like(w) for w in weights],
                expected,
                True,
            ),
            (
                "an expanded (stride 0) grad_output, as y.sum().backward() passes",
                [_expanded_constant(o, c) for o, c in zip(strided_live, constants)],
                expected_const,
                False,
            ),
        ]
        for what, grad_outputs, reference, retain in runs:
            try:
                got = torch.autograd.grad(strided_live, strided_leaves, grad_outputs, allow_unused=True, retain_graph=retain)
            except Exception as exc:
                return Finding(index, f"backward raised on {where} with {what}: {format_user_traceback(exc)}")
            for slot, g, e in zip(call.slots, got, reference):
                detail = agreement(g, e, ctx.tolerance, "non-contiguous", "contiguous")
                if detail is not None:
                    return Finding(
                        index,
                        f"gradient of input {slot.label} differs on {where} with {what}: {detail}",
                        input_name=slot.name,
                    )
        return None


_NO_GRAD = object()
