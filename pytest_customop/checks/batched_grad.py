"""``batched_grad``: the op's backward under ``vmap``, and its registered vmap rule, against loops.

Backward (every op with an autograd formula): one forward, then the vector-Jacobian products for
``BATCH`` grad_outputs computed once batched (``torch.autograd.grad(..., is_grads_batched=True)``, which
is ``vmap`` over the backward, as ``torch.func.jacrev`` and ``torch.autograd.functional.jacobian(...,
vectorize=True)`` do) and once in a loop. They must agree. This is PyTorch's ``check_batched_grad``.

Forward (ops with a registered vmap rule: ``torch.library.register_vmap`` or a C++ ``FuncTorchBatched``
kernel): ``vmap`` of the op against a loop over the batch, with every input under test (the floating inputs
samples make require grad; index, mask and buffer tensors stay unbatched) batched at dim 0,
then at its last dim, then (with several inputs) only the first one batched. ``check_batched_grad``
never calls a registered rule, so a wrong one slips through it.

What is a finding and what is unsupported:

* A backward that fails under vmap because of its own Python (``.item()``, ``if tensor:``, an in-place
  write of a batched value into an unbatched tensor) is a finding: it has a batchable rewrite, and
  ``jacrev``/``vmap`` users of the op hit the same error.
* A backward that fails under vmap because it leaves torch (``.numpy()``, a data pointer) or calls an op
  that cannot be batched is unsupported: skipped with the error as the reason.
* A registered vmap rule that raises or disagrees with the loop is a finding. Ops without a rule are
  not vmapped forward (vmap would only run torch's slow per-example fallback, the loop itself).
"""

from __future__ import annotations

import re
from typing import Any, Optional

import torch

from ..differentiation import OpCall, flatten_outputs, random_like
from ..dtypes import is_differentiable_dtype
from ..ops import RegistrationStyle, ResolvedOp
from ..torch_internals import custom_op_vmap_rule, has_kernel
from ._support import agreement, gradient_samples, mutated_arguments, no_gradient_reason, quiet_vmap
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["BatchedGradCheck", "has_vmap_rule"]

#: Grad_outputs (and forward batch entries) per sample: 3 rarely coincides with a dim of the sample.
BATCH = 3
# Batch entries of the forward: the sample scaled, so every entry differs and stays near its domain.
_SCALES = (1.0, 0.5, 0.25)

# vmap errors caused by the backward's own code, which can be rewritten with batchable tensor ops.
_BACKWARD_BUG = re.compile(
    r"aten::item\b|aten::_local_scalar_dense|aten::is_nonzero|data-dependent control flow"
    r"|\.item\(\)|vmap: inplace arithmetic|is not possible because there exists a Tensor",
    re.IGNORECASE,
)
_HINTS = (
    (re.compile(r"item|_local_scalar_dense"), "the backward calls .item() (or float()/int()) on a tensor"),
    (re.compile(r"is_nonzero|data-dependent"), "the backward branches on a tensor's value (if tensor: ...)"),
    (
        re.compile(r"inplace|in-place|is not possible because there exists"),
        "the backward writes a batched value in place into a tensor that is not batched (use out-of-place ops)",
    ),
)


def has_vmap_rule(op: ResolvedOp) -> bool:
    """Whether ``op`` has a vmap rule of its own (``register_vmap``, a ``FuncTorchBatched`` kernel, or an
    autograd.Function's ``vmap`` staticmethod / ``generate_vmap_rule``)."""
    if op.registration is RegistrationStyle.AUTOGRAD_FUNCTION:
        return bool(op.has_vmap_rule)  # type: ignore[attr-defined]
    if op.custom_op_def is not None and custom_op_vmap_rule(op.custom_op_def) is not None:
        return True
    return has_kernel(op.qualname, "FuncTorchBatched")


#: An explicit refusal by a vmap rule: ``NotImplementedError``, or torch's "not implemented"/"not supported".
_REFUSAL = re.compile(r"not (yet )?implemented|not supported|unsupported", re.IGNORECASE)


def vmap_rule_refuses(exc: BaseException) -> bool:
    """Whether ``exc`` is a vmap rule declining, in its own words, rather than a rule that broke."""
    return isinstance(exc, NotImplementedError) or bool(_REFUSAL.search(str(exc)))


class _Refused(Exception):
    """The registered vmap rule declines an input explicitly; the message quotes it."""


class _Unsupported(Exception):
    """The backward cannot run under vmap for a reason outside the op's control."""


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class BatchedGradCheck(Check):
    """Backward under vmap against a loop; a registered vmap rule against a loop of forwards."""

    name = "batched_grad"
    description = "vmap over the backward (and over a registered vmap rule) against a loop"

    def run(self, ctx: CheckContext) -> CheckResult:
        prepared = gradient_samples(ctx)
        findings = list(prepared.findings)
        notes: list[str] = []
        checked: set[int] = set()
        no_grad_reason: Optional[str] = None
        unsupported: Optional[str] = None
        rule = has_vmap_rule(ctx.op) and not mutated_arguments(ctx.op)
        refusal: Optional[str] = None
        # The inputs under test (those samples make require grad) are the ones batched; index, mask and
        # buffer tensors, float ones included, stay unbatched and keep their values.
        under_test = {(slot.name, slot.index) for _, call in prepared.calls for slot in call.slots}
        with quiet_vmap():
            if rule:
                for index, sample in enumerate(ctx.samples(requires_grad=False)):
                    try:
                        finding = self._check_forward(ctx, index, sample, under_test)
                    except _Refused as exc:
                        refusal = refusal or f"sample {index}: {exc}"
                        continue
                    checked.add(index)
                    if finding is not None:
                        findings.append(finding)
            if prepared.skip_reason and not rule:
                return ctx.skipped(prepared.skip_reason, total=prepared.total)
            for index, call in prepared.calls:
                try:
                    result = self._check_backward(ctx, index, call)
                except _Unsupported as exc:
                    unsupported = unsupported or f"sample {index}: {exc}"
                    continue
                if result is _NO_GRAD:
                    no_grad_reason = no_gradient_reason(ctx.op)
                    continue
                checked.add(index)
                if result is not None:
                    findings.append(result)
        if unsupported:
            notes.append(f"backward cannot run under vmap ({unsupported})")
        if findings:
            return ctx.failed(findings, total=prepared.total, checked=len(checked), notes=notes)
        if refusal:
            return ctx.skipped(
                f"the registered vmap rule of {ctx.op.name} declines: {refusal}", total=prepared.total, notes=notes
            )
        if not checked:
            reason = no_grad_reason or prepared.skip_reason
            if unsupported:
                reason = (
                    f"the backward of {ctx.op.name} cannot run under vmap, for a reason outside its own code "
                    f"(it leaves torch or calls an op that cannot be batched): {unsupported}"
                )
            return ctx.skipped(reason or "nothing to check", total=prepared.total)
        if rule:
            notes.append(f"the registered vmap rule of {ctx.op.name} agreed with a loop of forwards")
        return ctx.passed(len(checked), prepared.total or len(checked), notes=notes)

    # -- backward under vmap ------------------------------------------------------------------
    def _check_backward(self, ctx: CheckContext, index: int, call: OpCall) -> Any:
        leaves = call.leaves()
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
        except Exception as exc:
            return Finding(index, f"forward raised {format_user_traceback(exc)}")
        live = [o for o, keep in zip(outputs, call.differentiable_output_mask(outputs)) if keep]
        if not live:
            return _NO_GRAD
        generator = ctx.generator(index)
        batched_weights = [torch.stack([random_like(o, generator) for _ in range(BATCH)]) for o in live]
        try:
            looped = [
                torch.autograd.grad(live, leaves, [w[b] for w in batched_weights], allow_unused=True, retain_graph=True)
                for b in range(BATCH)
            ]
        except Exception as exc:
            return Finding(index, f"backward raised {format_user_traceback(exc)}")
        try:
            batched = torch.autograd.grad(
                live, leaves, batched_weights, allow_unused=True, retain_graph=False, is_grads_batched=True
            )
        except Exception as exc:
            text = str(exc)
            if _BACKWARD_BUG.search(text):
                hint = next((h for pattern, h in _HINTS if pattern.search(text)), "")
                return Finding(
                    index,
                    f"backward fails under vmap (is_grads_batched=True, as torch.func.jacrev and vmap users run it)"
                    f"{': ' + hint if hint else ''}; {format_user_traceback(exc)}",
                )
            raise _Unsupported(_first_line(exc)) from None
        for slot, leaf, grad in zip(call.slots, leaves, batched):
            for b in range(BATCH):
                expected = looped[b][call.slots.index(slot)]
                got = None if grad is None else grad[b]
                if expected is None and got is None:
                    continue
                reference = torch.zeros_like(leaf) if expected is None else expected
                detail = agreement(got, reference, ctx.tolerance, "vmap over backward", "backward in a loop")
                if detail is not None:
                    return Finding(
                        index,
                        f"gradient of input {slot.label} for grad_output {b} of a batch of {BATCH}: {detail}",
                        input_name=slot.name,
                    )
        return None

    # -- a registered vmap rule ---------------------------------------------------------------
    def _check_forward(self, ctx: CheckContext, index: int, sample: Any, under_test: set) -> Optional[Finding]:
        try:
            bound = ctx.op.bind(sample)
        except TypeError:
            return None  # reported by the backward part
        positions: list[
            tuple[str, Optional[int], torch.Tensor]
        ] = []  # (name, list index or None, tensor) of every input under test
        for name, value in bound.items():
            if isinstance(value, (list, tuple)):
                positions += [
                    (name, k, v) for k, v in enumerate(value) if _batchable(v) and (not under_test or (name, k) in under_test)
                ]
            elif _batchable(value) and (not under_test or (name, None) in under_test):
                positions.append((name, None, value))
        if not positions:
            return None
        layouts: list[tuple[str, list[Optional[int]]]] = [("every input under test batched at dim 0", [0] * len(positions))]
        layouts.append(("every input under test batched at its last dim", [t.dim() for _, _, t in positions]))
        if len(positions) > 1:
            layouts.append((f"only {_label(positions[0])} batched (dim 0), the others not", [0] + [None] * (len(positions) - 1)))
        for description, in_dims in layouts:
            finding = self._check_layout(ctx, index, bound, positions, in_dims, description)
            if finding is not None:
                return finding
        return None

    def _check_layout(
        self,
        ctx: CheckContext,
        index: int,
        bound: dict[str, Any],
        positions: list[tuple[str, Optional[int], torch.Tensor]],
        in_dims: list[Optional[int]],
        description: str,
    ) -> Optional[Finding]:
        entries = [
            [t.detach() * scale if d is not None else t.detach() for (_, _, t), d in zip(positions, in_dims)] for scale in _SCALES
        ]
        stacked = [
            torch.stack([entry[k] for entry in entries], dim=d) if d is not None else entries[0][k] for k, d in enumerate(in_dims)
        ]

        def call_with(values: tuple) -> tuple:
            arguments = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in bound.items()}
            for (name, k, _), value in zip(positions, values):
                if k is None:
                    arguments[name] = value
                else:
                    arguments[name][k] = value
            for name, value in bound.items():
                if isinstance(value, tuple):
                    arguments[name] = tuple(arguments[name])
            return tuple(o for o in flatten_outputs(ctx.op.call_bound(arguments)) if isinstance(o, torch.Tensor))

        with torch.no_grad():
            try:
                expected_each = [call_with(tuple(entry)) for entry in entries]
            except Exception:
                return None  # the op refuses the scaled inputs: nothing to compare against
            try:
                got = torch.vmap(lambda *values: call_with(values), in_dims=tuple(in_dims))(*stacked)
            except Exception as exc:
                if vmap_rule_refuses(exc):
                    raise _Refused(f"{description}: {_first_line(exc)}") from None
                return Finding(
                    index,
                    f"vmap of {ctx.op.name} ({description}) raised in its registered vmap rule: {format_user_traceback(exc)}",
                )
        for position, (g, *each) in enumerate(zip(got, *expected_each)):
            detail = agreement(g, torch.stack(each), ctx.tolerance, "vmap", "a loop of forwards")
            if detail is not None:
                return Finding(
                    index,
                    f"the registered vmap rule of {ctx.op.name} is wrong: output {position} with {description} "
                    f"(batch of {BATCH}): {detail}",
                )
        return None


_NO_GRAD = object()


def _batchable(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and is_differentiable_dtype(value.dtype)


def _label(position: tuple[str, Optional[int], torch.Tensor]) -> str:
    name, k, _ = position
    return f"'{name}'" if k is None else f"'{name}'[{k}]"
