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

from typing import Any, Optional

import torch

from ..differentiation import OpCall, random_like
from ..dtypes import is_differentiable_dtype
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


def sliced_with_step(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` as one element in two of a larger buffer (the gaps NaN, 12 or False), dims in
    their usual order: what ``x[..., ::2]`` of a wider tensor hands an op."""
    if t.numel() <= 1 or t.dim() == 0:
        return t.detach().clone().requires_grad_(t.requires_grad)
    fill: Any = float("nan") if is_differentiable_dtype(t.dtype) else (False if t.dtype == torch.bool else 12)
    base = torch.full([*t.shape[:-1], 2 * t.shape[-1]], fill, dtype=t.dtype, device=t.device)
    base[..., 1::2] = t.detach()
    return base[..., 1::2].requires_grad_(t.requires_grad)


def transposed(t: torch.Tensor) -> torch.Tensor:
    """The values of ``t`` with its dims reversed in storage (a transpose of a contiguous tensor)."""
    if t.dim() < 2 or t.numel() <= 1:
        return t.detach().clone().requires_grad_(t.requires_grad)
    order = list(range(t.dim() - 1, -1, -1))
    return t.detach().permute(order).contiguous().permute(order).requires_grad_(t.requires_grad)


def expanded_in(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t``'s first entry along ``dim`` expanded over that dimension alone (stride 0 there only), as a
    downstream ``.sum(dim)`` or a broadcast hands a backward its grad_output."""
    return t.detach().narrow(dim, 0, 1).expand(t.shape)


def _expandable_dims(t: torch.Tensor) -> list[int]:
    """The first and the last dimension of ``t`` worth expanding (size > 1; not every one: each costs two
    backwards), none for a tensor with a single such dimension (expanding it is the full expansion)."""
    dims = [d for d, extent in enumerate(t.shape) if extent > 1]
    if len(dims) < 2:
        return []
    return sorted({dims[0], dims[-1]})


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
        # Grad_output values, each given to the backward contiguous on contiguous inputs (the reference)
        # and in the layouts below on non-contiguous inputs.
        values: dict[str, list[torch.Tensor]] = {
            "random": weights,
            "constant": [c.to(o.device).expand(o.shape) for c, o in zip(constants, live)],
        }
        partial_dims = sorted({d for o in live for d in _expandable_dims(o)})
        for d in partial_dims:
            values[f"expanded {d}"] = [expanded_in(w, d) if d in _expandable_dims(w) else w for w in weights]
        expected: dict[str, tuple] = {}
        try:
            for key, grad_outputs in values.items():
                # Contiguous clones: a backward that writes into its grad_output must not change the reference.
                expected[key] = torch.autograd.grad(
                    live, leaves, [g.contiguous().clone() for g in grad_outputs], allow_unused=True, retain_graph=True
                )
        except Exception as exc:
            return Finding(index, f"backward raised (contiguous inputs and grad_output) {format_user_traceback(exc)}")

        # Only the inputs under test change layout; index, mask and buffer tensors keep theirs.
        layouts = [("non-contiguous inputs", noncontiguous_like)]
        if any(leaf.dim() == 4 for leaf in leaves):
            layouts.append(("channels_last inputs", _channels_last))
        for input_layout, (layout_name, make) in enumerate(layouts):
            strided_leaves = [make(leaf.detach()).requires_grad_(True) for leaf in leaves]
            strides = ", ".join(
                f"{s.label} strides {tuple(t.stride())}" for s, t in zip(call.slots, strided_leaves) if not t.is_contiguous()
            )
            if not strides:
                continue
            where = f"{layout_name} ({strides})"
            try:
                with torch.enable_grad():
                    strided_outputs = call.outputs(strided_leaves)
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
            if input_layout == 0:
                runs = [
                    ("a grad_output sliced with a step", [sliced_with_step(w) for w in weights], "random"),
                    ("a transposed grad_output", [transposed(w) for w in weights], "random"),
                ]
                runs += [
                    (
                        f"a grad_output expanded in dimension {d} only (stride 0 there), as a downstream .sum({d}) or a "
                        "broadcast passes it",
                        values[f"expanded {d}"],
                        f"expanded {d}",
                    )
                    for d in partial_dims
                ]
                runs.append(("an expanded (stride 0) grad_output, as y.sum().backward() passes", values["constant"], "constant"))
            else:
                runs = [("a contiguous grad_output", [w.clone() for w in weights], "random")]
            finding = self._backwards(ctx, index, call, strided_live, strided_leaves, runs, expected, where)
            if finding is not None:
                return finding
        return None

    @staticmethod
    def _backwards(
        ctx: CheckContext,
        index: int,
        call: OpCall,
        outputs: list[torch.Tensor],
        leaves: list[torch.Tensor],
        runs: list[tuple[str, list[torch.Tensor], str]],
        expected: dict[str, tuple],
        where: str,
    ) -> Optional[Finding]:
        for number, (what, grad_outputs, key) in enumerate(runs):
            last = number == len(runs) - 1
            layout = ", ".join(f"strides {tuple(g.stride())}" for g in grad_outputs)
            try:
                got = torch.autograd.grad(outputs, leaves, grad_outputs, allow_unused=True, retain_graph=not last)
            except Exception as exc:
                return Finding(index, f"backward raised on {where} with {what}: {format_user_traceback(exc)}")
            for slot, g, e in zip(call.slots, got, expected[key]):
                detail = agreement(g, e, ctx.tolerance, "non-contiguous", "contiguous")
                if detail is not None:
                    return Finding(
                        index,
                        f"gradient of input {slot.label} differs on {where} with {what} ({layout}): {detail}",
                        input_name=slot.name,
                    )
        return None


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.clone()


_NO_GRAD = object()
