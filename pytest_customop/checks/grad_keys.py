"""``grad_keys``: the op's backward returns exactly one correctly shaped, typed and placed gradient per
input, keyed by input name, and modifies neither its grad_outputs nor the tensors it saved.

Each sample runs through the plugin's own autograd kernel (:mod:`pytest_customop.kernel`) with a random
grad_output; the kernel validates the backward's result before the autograd engine can silently sum,
cast or drop it. Where the backward is opaque to Python (a C++ autograd kernel,
``CompositeImplicitAutograd``), the gradients that reach each input are validated instead.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..differentiation import OpCall, flatten_outputs, random_like
from ..kernel.generated_kernel import kernel_for
from ..kernel.grad_validation import GradientValidationError, TensorMeta, tensor_problems
from ._support import gradient_samples, integer_outputs_reason
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["GradKeysCheck"]


class GradKeysCheck(Check):
    """Validate what the op's backward returns, by input name, on every sample."""

    name = "grad_keys"
    description = (
        "backward returns one gradient (or None) per input, keyed by name, with the input's shape, dtype, "
        "device and layout, and modifies neither grad_output nor what it saved"
    )

    def run(self, ctx: CheckContext) -> CheckResult:
        prepared = gradient_samples(ctx)
        if prepared.skip_reason:
            return ctx.skipped(prepared.skip_reason, total=prepared.total)
        samples_total = prepared.total
        findings: list[Finding] = list(prepared.findings)
        notes: list[str] = []
        checked = 0
        not_differentiable: list[int] = []
        kernel = None
        for index, call in prepared.calls:
            leaves = call.leaves()
            bound = call.substitute(leaves)
            if kernel is None:
                try:
                    kernel = kernel_for(ctx.op, bound, ctx.cache)
                except Exception as exc:
                    return ctx.failed([Finding(index, f"forward raised {format_user_traceback(exc)}")], total=samples_total)
                source = kernel.source
                if source.style == "none":
                    integer_only = self._integer_reason(ctx, call)
                    if integer_only:
                        return ctx.skipped(integer_only, total=samples_total)
                    return ctx.failed([Finding(None, f"{source.detail}: its gradients cannot be validated")], total=samples_total)
                if source.is_python:
                    notes.append(f"backward: {source.describe()}")
                else:
                    notes.append(
                        f"backward is opaque to Python ({source.detail}): validated the gradients that reach each input, by name"
                    )
            seen = len(kernel.reduced_shapes) if kernel.source.is_python else 0
            problems = self._check_sample(ctx, kernel, call, leaves, bound, index)
            if problems is None:  # integer or bool outputs only: nothing to validate
                not_differentiable.append(index)
                continue
            for reducible in kernel.reduced_shapes[seen:] if kernel.source.is_python else []:
                if ctx.spec.strict_grad_shapes:
                    problems.append(
                        Finding(
                            index,
                            f"{reducible.message} (the marker asks strict_grad_shapes=True)",
                            input_name=reducible.input_name,
                        )
                    )
                else:
                    notes.append(f"sample {index}: {reducible.message} (gradcheck proves the reduced values)")
            checked += 1
            findings.extend(problems)
        if not_differentiable and not checked and not findings:
            reason = self._integer_reason(ctx, prepared.calls[0][1]) or "every output is integer or bool: not differentiable"
            return ctx.skipped(reason, total=samples_total)
        notes.extend(f"sample {i}: every output is integer or bool, not differentiable" for i in not_differentiable)
        if findings:
            findings.sort(key=lambda f: -1 if f.sample_index is None else f.sample_index)  # in sample order
            return ctx.failed(findings, total=samples_total, checked=checked, notes=notes)
        return ctx.passed(checked, samples_total, notes=notes)

    def _integer_reason(self, ctx: CheckContext, call: OpCall) -> Optional[str]:
        """Why nothing is to be validated when every output of the op on ``call`` is integer or bool."""
        try:
            with torch.no_grad():
                outputs = call.outputs(call.leaves())
        except Exception:
            return None
        return integer_outputs_reason(ctx.op, outputs)

    def _check_sample(
        self, ctx: CheckContext, kernel: Any, call: OpCall, leaves: list[torch.Tensor], bound: dict, index: int
    ) -> Optional[list[Finding]]:
        """The problems found on one sample; None when every output is integer or bool."""
        try:
            with torch.enable_grad():
                outputs = flatten_outputs(kernel.call_bound(bound))
        except Exception as exc:
            return [Finding(index, f"forward raised {format_user_traceback(exc)}")]
        live = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        if not live and integer_outputs_reason(ctx.op, outputs):
            return None
        if not live:
            inputs = ", ".join(s.label for s in call.slots)
            return [
                Finding(
                    index,
                    f"no output of {ctx.op.name} requires grad although input(s) {inputs} do: the op has no autograd "
                    "formula (register one with torch.library.register_autograd) or its forward detaches its result",
                )
            ]
        generator = ctx.generator(index)
        weights = [random_like(o, generator) for o in live]
        try:
            grads = torch.autograd.grad(live, leaves, weights, allow_unused=True)
        except GradientValidationError as error:
            return [Finding(index, p.message, input_name=p.input_name) for p in error.problems]
        except Exception as exc:
            return [Finding(index, f"backward raised {format_user_traceback(exc)}")]
        if kernel.source.is_python:
            return []
        # Opaque backward: what reaches each input, by name.
        findings = []
        for slot, leaf, grad in zip(call.slots, leaves, grads):
            if grad is None:
                continue
            for problem in tensor_problems(ctx.op.name, slot.label, grad, TensorMeta.of(leaf)):
                findings.append(Finding(index, problem.message, input_name=slot.name))
        return findings
