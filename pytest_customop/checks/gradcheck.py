"""``gradcheck`` and ``gradgradcheck``: first and second derivatives against finite differences.

In float64 and complex128, samples up to the fast-mode threshold run ``torch.autograd.gradcheck`` /
``gradgradcheck`` in slow mode (the full Jacobian). Larger ones run in fast mode: gradcheck's is the
plugin's own (signed random projections with a size-independent tolerance, a reentrant backward,
undefined grad_outputs: what torch's fast mode checks, stronger and at half its cost);
gradgradcheck's is torch's, followed by the same signed projection.

In lower precisions the op's derivatives at that dtype are compared, under the dtype's tolerance, with
reference derivatives of the very same input values at the highest precision the op runs at (float64,
else float32: :func:`pytest_customop.precision.ladder`), which are themselves proven against central
differences there (:func:`pytest_customop.precision.prove_directional`): every item is a proof, not a
comparison of the op with itself. The marker's ``reference=`` adds a comparison with the reference
function's float64 autograd (outputs and derivatives) to every item.

A failure is diagnosed without torch's slow recomputation of the full Jacobian: for each input (by
schema name) the backward's vector-Jacobian product is compared with finite differences, element by
element for small inputs and along a random direction for large ones.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from typing import Any, Callable, Iterator, Optional, Sequence

import torch

from ..differentiation import (
    OpCall,
    directional_vjp,
    inner,
    numerical_vjp,
    random_like,
    real_loss,
    vjp,
    worst_mismatch,
)
from ..dtypes import Tolerance, dtype_id, is_reference_precision, reference_dtype
from ..precision import DirectionalProof, ladder, loss_function, loss_rounding, prove_directional
from ..report.heatmap import difference_grid
from ..torch_internals import make_undefined_grad, raised_in_finite_differences, replaced_slow_mode_error
from ._support import gradient_samples, integer_outputs_reason
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback

__all__ = ["FiniteDifferenceDiagnosis", "GradCheck", "GradGradCheck", "refuses_double_backward"]

# Inputs up to this many elements are diagnosed element by element (two forwards per element).
_ELEMENTWISE_DIAGNOSIS_LIMIT = 256

_NO_FORMULA = re.compile(r"no autograd formula was registered|does not require grad and does not have a grad_fn")
_REFUSES_DOUBLE_BACKWARD = re.compile(
    r"double backward|differentiate twice|once_differentiable|not (?:twice )?differentiable twice"
    r"|second.order .*not supported|double_backward",
    re.IGNORECASE,
)
_MISSING_AUTOGRAD_KERNEL = re.compile(r"([\w.]+::[\w.]+): an autograd kernel was not registered")


def refuses_double_backward(exc: BaseException) -> bool:
    """True when ``exc`` is a backward saying it does not support being differentiated again
    (torchvision's "double backwards not supported", ``@once_differentiable``'s error)."""
    return isinstance(exc, RuntimeError) and bool(_REFUSES_DOUBLE_BACKWARD.search(str(exc)))


@contextlib.contextmanager
def _without_slow_recompute() -> Iterator[None]:
    """Stop a failing fast-mode gradcheck from recomputing the full Jacobian just to word its message
    (seconds to minutes on real inputs): the plugin diagnoses the failure itself."""

    def short_note(*args: Any, **kwargs: Any) -> str:
        return "\n(full Jacobian not recomputed; --customop-full-jacobian prints it)\n"

    with replaced_slow_mode_error(short_note):
        yield


def _first_lines(text: str, count: int = 3) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return "\n".join(lines[:count])


class FiniteDifferenceDiagnosis:
    """Compare a function's backward with finite differences, input by input, naming each input."""

    def __init__(self, ctx: CheckContext, eps: float, tol: Tolerance) -> None:
        self.ctx = ctx
        self.eps = eps
        self.tol = tol
        self.heatmaps: dict[str, dict[str, Any]] = {}  # label -> where its elementwise comparison disagrees

    def run(
        self,
        fn: Callable[..., tuple],
        inputs: Sequence[torch.Tensor],
        labels: Sequence[str],
        what: str,
        salt: int,
        elementwise: bool = True,
    ) -> list[tuple[str, str]]:
        """(label, message) for each input whose backward disagrees with finite differences:
        element by element for small inputs (when ``elementwise``), else along a random direction."""
        generator = self.ctx.generator(salt)
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        with torch.enable_grad():
            outputs = [o for o in fn(*leaves) if isinstance(o, torch.Tensor) and o.requires_grad]
        if not outputs:
            return []
        weights = [random_like(o, generator) for o in outputs]
        analytic = vjp(outputs, leaves, weights)
        problems = []
        for position, label in enumerate(labels):
            grad = analytic[position]
            leaf = leaves[position]
            if elementwise and leaf.numel() <= _ELEMENTWISE_DIAGNOSIS_LIMIT:
                numeric = numerical_vjp(fn, leaves, position, weights, self.eps)
                mismatch = worst_mismatch(grad, numeric, self.tol)
                if mismatch is None:
                    continue
                message = f"{what} of input {label}: {mismatch.describe('finite differences', 'backward')}"
                grid = difference_grid(grad, numeric, label.replace("'", ""))
                if grid is not None:
                    self.heatmaps[label] = grid
            else:
                found = directional_mismatch(fn, leaves, position, grad, weights, self.eps, self.tol, generator)
                if found is None:
                    continue
                message = f"{what} of input {label} {found}"
            if grad is None:
                message += "; backward returned None for it (taken as zeros) although it needs a gradient"
            problems.append((label, message))
        return problems


def directional_mismatch(
    fn: Callable[..., tuple],
    leaves: Sequence[torch.Tensor],
    position: int,
    grad: Optional[torch.Tensor],
    weights: Sequence[torch.Tensor],
    eps: float,
    tol: Tolerance,
    generator: torch.Generator,
) -> Optional[str]:
    """Compare ``grad`` (the backward's VJP for input ``position``) with a central difference along one
    signed random direction; None when they agree, else what was expected and got.

    The tolerance, ``atol * sqrt(numel) + rtol * |finite difference|``, grows like the projection's
    own rounding error, not like torch's fast mode's ``atol * sum(u) * sum(v)`` (which grows like the
    input's size and lets a backward twice too large pass at 512x512)."""
    direction = random_like(leaves[position].detach(), generator)
    numeric_value = directional_vjp(fn, leaves, position, direction, weights, eps)
    analytic_value = inner(grad, direction)
    error = abs(numeric_value - analytic_value)
    if error <= tol.atol * direction.numel() ** 0.5 + tol.rtol * abs(numeric_value):
        return None
    return (
        f"along a random direction: expected {numeric_value:.6g} (finite differences), "
        f"got {analytic_value:.6g} (backward); abs err {error:.3g}"
    )


def _sample_size(leaves: Sequence[torch.Tensor], outputs: Sequence[Any]) -> int:
    return sum(t.numel() for t in leaves) + sum(o.numel() for o in outputs if isinstance(o, torch.Tensor))


def _gradient_grad_outputs(
    call: OpCall, leaves: list[torch.Tensor], mask: Sequence[bool], generator: torch.Generator
) -> tuple[Callable[..., tuple], list[torch.Tensor]]:
    """The first derivative as a function of (inputs, grad_outputs), for second-order diagnosis."""
    count = len(leaves)
    fn = call.function(mask)

    def first_derivative(*args: torch.Tensor) -> tuple:
        # Finite differences call this with plain tensors: the inner backward still needs a graph.
        args = tuple(a if a.requires_grad else a.detach().requires_grad_(True) for a in args)
        xs, ws = args[:count], args[count:]
        with torch.enable_grad():
            outs = fn(*xs)
            grads = torch.autograd.grad(outs, xs, ws, allow_unused=True, create_graph=True)
        return tuple(g for g in grads if g is not None)

    with torch.no_grad():
        outs = fn(*leaves)
    weights = [random_like(o, generator) for o in outs]
    return first_derivative, weights


class _GradientCheck(Check):
    order = 1

    def run(self, ctx: CheckContext) -> CheckResult:
        prepared = gradient_samples(ctx)
        if prepared.skip_reason:
            return ctx.skipped(prepared.skip_reason, total=prepared.total)
        findings: list[Finding] = list(prepared.findings)
        notes: list[str] = []
        refusals: list[str] = []
        not_differentiable: list[tuple[int, str]] = []
        checked = 0
        for index, call in prepared.calls:
            try:
                problems = self._check_sample(ctx, call, index, notes)
            except _Refused as refusal:
                refusals.append(f"sample {index}: {refusal}")
                continue
            except _NoReference as missing:
                return ctx.skipped(str(missing), total=prepared.total, notes=notes)
            except _NotDifferentiable as integer_only:
                not_differentiable.append((index, str(integer_only)))
                continue
            checked += 1
            findings.extend(problems)
        if not_differentiable and not checked and not findings and not refusals:
            return ctx.skipped(not_differentiable[0][1], total=prepared.total)
        notes.extend(f"sample {i}: {reason}" for i, reason in not_differentiable)
        if refusals and not findings:
            if ctx.spec.supports_gradgrad:
                findings = [Finding(None, f"the marker claims supports_gradgrad=True but {r}") for r in refusals]
            else:
                return ctx.skipped(
                    f"backward refuses double backward (declare supports_gradgrad=False to skip without running): {refusals[0]}",
                    total=prepared.total,
                )
        if findings:
            findings.sort(key=lambda f: -1 if f.sample_index is None else f.sample_index)  # in sample order
            return ctx.failed(findings, total=prepared.total, checked=checked, notes=notes)
        return ctx.passed(checked, prepared.total, notes=notes)

    # -- one sample ---------------------------------------------------------------------------
    def _check_sample(self, ctx: CheckContext, call: OpCall, index: int, notes: list[str]) -> list[Finding]:
        leaves = call.leaves()
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
        except Exception as exc:
            return [Finding(index, f"forward raised {format_user_traceback(exc)}")]
        mask = call.differentiable_output_mask(outputs)
        if not any(mask):
            integer_only = integer_outputs_reason(ctx.op, outputs)
            if integer_only:
                raise _NotDifferentiable(integer_only)
            inputs = ", ".join(s.label for s in call.slots)
            return [
                Finding(
                    index,
                    f"no output of {ctx.op.name} requires grad although input(s) {inputs} do: the op has "
                    "no autograd formula (register one with torch.library.register_autograd) or its "
                    "forward detaches its result",
                )
            ]
        if self.order == 2 and is_reference_precision(ctx.dtype):
            # Before torch's gradgradcheck, which would see zeros where the backward refuses; at lower
            # precision _derivatives asks the same of the derivatives it computes anyway.
            try:
                first = _first_derivatives_with_graph(call, leaves, mask, ctx.generator(index), probe_second=True)
            except Exception as exc:
                if refuses_double_backward(exc):
                    raise _Refused(_first_lines(str(exc), 1)) from None
                if not isinstance(exc, _SecondOrderProbeError):
                    return [Finding(index, f"backward raised {format_user_traceback(exc)}")]
                first = []  # another error of the double backward: gradgradcheck words it
            if _once_differentiable(first):
                raise _Refused("its backward is marked @once_differentiable")
        if is_reference_precision(ctx.dtype):
            findings = self._against_finite_differences(ctx, call, leaves, outputs, mask, index, notes)
        else:
            findings = self._against_reference_dtype(ctx, call, leaves, outputs, mask, index, notes)
        if ctx.spec.reference is not None and not findings:
            findings = self._against_reference_function(ctx, call, mask, index, notes)
        return findings

    def _against_finite_differences(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        outputs: list[Any],
        mask: list[bool],
        index: int,
        notes: list[str],
    ) -> list[Finding]:
        tol = ctx.tolerance
        eps = ctx.spec.eps or 1e-6
        fast = ctx.spec.fast_mode
        if fast is None:
            fast = _sample_size(leaves, [o for o, m in zip(outputs, mask) if m]) > ctx.fast_mode_threshold
        fn = call.function(mask)
        if fast and self.order == 1:
            return self._fast_first_order(ctx, call, leaves, outputs, mask, index, notes, eps, tol)
        runner = torch.autograd.gradcheck if self.order == 1 else torch.autograd.gradgradcheck
        options: dict[str, Any] = {
            "eps": eps,
            "atol": tol.atol,
            "rtol": tol.rtol,
            "nondet_tol": ctx.spec.nondet_tol,
            "fast_mode": fast,
        }
        if self.order == 1:
            options["check_batched_grad"] = False
        with warnings.catch_warnings(record=True) as caught, _without_slow_recompute():
            warnings.simplefilter("always")
            try:
                runner(fn, tuple(leaves), raise_exception=True, **options)
                error: Optional[BaseException] = None
            except Exception as exc:
                error = exc
        missing_kernels = _missing_autograd_kernels(caught)
        if error is None and fast:
            # torch's fast mode scales its atol with the input size (a 1% error in the second
            # derivative of a 64x64 elementwise op passes it); a directional check with a
            # size-independent tolerance closes that gap for the cost of two forwards per input.
            problems = self._problems(ctx, call, leaves, mask, index, eps, tol, elementwise=False)
            if problems:
                label, message = problems[0]
                return [Finding(index, f"{message} [fast mode]", input_name=_slot_name(call, label))]
        if error is None:
            if missing_kernels:
                notes.append(_missing_kernel_note(index, missing_kernels))
            return []
        mode = "fast" if fast else "slow"
        return [self._explain(ctx, call, leaves, mask, index, error, missing_kernels, mode, eps, tol)]

    def _fast_first_order(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        outputs: list[Any],
        mask: list[bool],
        index: int,
        notes: list[str],
        eps: float,
        tol: Tolerance,
    ) -> list[Finding]:
        """Fast-mode gradcheck at the cost floor, on the forward already run: what torch's fast mode
        checks (VJP against finite differences along random directions, a reentrant backward, undefined
        output gradients), with signed directions and a tolerance that does not grow with the input.

        One backward with random grad_outputs, a second to compare with it (``nondet_tol``), one with
        undefined grad_outputs, and two forwards per input; torch's fast mode would add a forward, its
        own finite differences and (failing) a full Jacobian."""
        differentiable = [o for o, keep in zip(outputs, mask) if keep]
        generator = ctx.generator(index)
        weights = [random_like(o.detach(), generator) for o in differentiable]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                analytic = vjp(differentiable, leaves, weights, retain_graph=True)
                again = vjp(differentiable, leaves, weights, retain_graph=True)
                undefined = _undefined_grad_problem(differentiable, leaves)
                error: Optional[BaseException] = None
            except Exception as exc:
                error = exc
        missing_kernels = _missing_autograd_kernels(caught)
        if error is not None:
            return [self._explain(ctx, call, leaves, mask, index, error, missing_kernels, "fast", eps, tol)]
        labels = [s.label for s in call.slots]
        for slot, first, second in zip(call.slots, analytic, again):
            if first is None or second is None:
                continue
            difference = float((first - second).abs().max().item()) if first.numel() else 0.0
            if difference > ctx.spec.nondet_tol:
                return [
                    Finding(
                        index,
                        f"backward is not reentrant: two backwards of input {slot.label} with the same grad_output "
                        f"differ by up to {difference:.3g} (nondet_tol={ctx.spec.nondet_tol:g}; raise it in the "
                        "marker if the backward is nondeterministic on purpose) [fast mode]",
                        input_name=slot.name,
                    )
                ]
        if undefined is not None:
            return [Finding(index, f"{undefined} [fast mode]")]
        fn = call.function(mask)
        for position, label in enumerate(labels):
            found = directional_mismatch(fn, leaves, position, analytic[position], weights, eps, tol, generator)
            if found is not None:
                return [
                    self._explain_mismatch(
                        ctx,
                        call,
                        leaves,
                        mask,
                        index,
                        missing_kernels,
                        "fast",
                        eps,
                        tol,
                        fallback=(label, f"gradient of input {label} {found}"),
                    )
                ]
        if missing_kernels:
            notes.append(_missing_kernel_note(index, missing_kernels))
        return []

    def _problems(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        mask: list[bool],
        index: int,
        eps: float,
        tol: Tolerance,
        elementwise: bool,
        heatmaps: Optional[dict[str, dict[str, Any]]] = None,
    ) -> list[tuple[str, str]]:
        """Per-input comparison of backward with finite differences, first or second order (``heatmaps``,
        when given, receives the per-element disagreement of each input compared element by element)."""
        labels = [s.label for s in call.slots]
        diagnosis = FiniteDifferenceDiagnosis(ctx, eps, tol)
        if self.order == 1:
            problems = diagnosis.run(call.function(mask), leaves, labels, "gradient", index, elementwise)
        else:
            fn, weights = _gradient_grad_outputs(call, leaves, mask, ctx.generator(index))
            labels = labels + [f"grad_output[{k}]" for k in range(len(weights))]
            problems = diagnosis.run(fn, [*leaves, *weights], labels, "second derivative", index, elementwise)
        if heatmaps is not None:
            heatmaps.update(diagnosis.heatmaps)
        return problems

    def _explain(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        mask: list[bool],
        index: int,
        error: BaseException,
        missing_kernels: list[str],
        mode: str,
        eps: float,
        tol: Tolerance,
    ) -> Finding:
        is_gradcheck_error = type(error).__name__ == "GradcheckError"
        if not is_gradcheck_error:
            if self.order == 2 and refuses_double_backward(error):
                raise _Refused(_first_lines(str(error), 1))
            if _NO_FORMULA.search(str(error)):
                return Finding(
                    index,
                    f"{ctx.op.name} has no autograd formula: {_first_lines(str(error), 1)} "
                    "(register one with torch.library.register_autograd)",
                )
            if raised_in_finite_differences(error):
                return Finding(
                    index,
                    f"the forward raised on an input moved by eps={eps:g} for finite differences (it ran on the "
                    f"sample itself; if such inputs are outside the op's domain, give samples away from its edges "
                    f"or a smaller eps=): {format_user_traceback(error)}",
                )
            return Finding(index, f"backward raised {format_user_traceback(error)}")
        return self._explain_mismatch(
            ctx, call, leaves, mask, index, missing_kernels, mode, eps, tol, torch_says=_first_lines(str(error), 1)
        )

    def _explain_mismatch(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        mask: list[bool],
        index: int,
        missing_kernels: list[str],
        mode: str,
        eps: float,
        tol: Tolerance,
        torch_says: str = "",
        fallback: Optional[tuple[str, str]] = None,
    ) -> Finding:
        """The finding for derivatives that disagree with finite differences: per input by schema name
        (element by element for small inputs), with why when it can be told; ``fallback`` (label,
        message) is the fast path's own finding, kept when the diagnosis draws other directions."""
        heatmaps: dict[str, dict[str, Any]] = {}
        try:
            problems = self._problems(ctx, call, leaves, mask, index, eps, tol, elementwise=True, heatmaps=heatmaps)
        except Exception as exc:  # the diagnosis itself hit the bug: report what was found before
            problems = []
            torch_says = f"{torch_says} (diagnosis failed: {type(exc).__name__}: {exc})"
        if not problems and fallback is not None:
            problems = [fallback]
        why = []
        if self.order == 2:
            detached = _detached_gradients(call, leaves, mask, ctx.generator(index))
            if detached:
                why.append(
                    f"the gradient backward computes for {', '.join(detached)} does not require grad: backward "
                    "detaches it (.detach(), torch.no_grad(), .data, numpy) so its own derivative is lost"
                )
        if missing_kernels:
            why.append(
                f"backward calls {', '.join(missing_kernels)}, which has no autograd formula, so its derivative "
                "is silently wrong (torch only warns)"
            )
        reason = f"; why: {'; '.join(why)}" if why else ""
        full = self._full_jacobians(ctx, call, leaves, mask, eps, tol) if ctx.full_jacobian and mode == "fast" else ""
        if problems:
            label, message = problems[0]
            others = f" (also: {', '.join(p[0] for p in problems[1:])})" if len(problems) > 1 else ""
            return Finding(
                index,
                f"{message}{others}{reason} [{mode} mode]{full}",
                input_name=_slot_name(call, label),
                heatmap=heatmaps.get(label),
            )
        return Finding(
            index,
            f"torch.autograd.{'gradcheck' if self.order == 1 else 'gradgradcheck'} ({mode} mode): {torch_says}{reason}{full}",
        )

    def _full_jacobians(
        self, ctx: CheckContext, call: OpCall, leaves: list[torch.Tensor], mask: list[bool], eps: float, tol: Tolerance
    ) -> str:
        """torch's slow-mode message with both full Jacobians (``--customop-full-jacobian``): seconds to
        minutes on large inputs, so only on request."""
        runner = torch.autograd.gradcheck if self.order == 1 else torch.autograd.gradgradcheck
        inputs = tuple(t.detach().requires_grad_(True) for t in leaves)
        try:
            runner(
                call.function(mask),
                inputs,
                eps=eps,
                atol=tol.atol,
                rtol=tol.rtol,
                nondet_tol=ctx.spec.nondet_tol,
                fast_mode=False,
                raise_exception=True,
            )
        except Exception as exc:
            return f"\nfull Jacobians (slow mode, --customop-full-jacobian):\n{str(exc).strip()}"
        return "\n(slow-mode gradcheck with full Jacobians passes: the disagreement is small or along few directions)"

    def _against_reference_dtype(
        self,
        ctx: CheckContext,
        call: OpCall,
        leaves: list[torch.Tensor],
        outputs: list[Any],
        mask: list[bool],
        index: int,
        notes: list[str],
    ) -> list[Finding]:
        """A low-precision item: the op's derivatives at this dtype against reference derivatives of the
        same input values at the highest precision the op runs at (the precision ladder), which are
        themselves proven against finite differences there."""
        generator = ctx.generator(index)
        try:
            # The forward already run on these leaves is reused: a low-precision check is ~1 ms.
            got = self._derivatives(call, leaves, mask, generator, weights=None, outputs=outputs)
        except _Refused:
            raise
        except Exception as exc:
            if self.order == 2 and refuses_double_backward(exc):
                raise _Refused(_first_lines(str(exc), 1)) from None
            return [Finding(index, f"backward raised {format_user_traceback(exc)}")]
        found = self._reference_derivatives(ctx, call, mask, got, index)
        if isinstance(found, str):
            if ctx.spec.reference is not None:
                note = f"reference: the marker's reference= in {dtype_id(reference_dtype(ctx.dtype))} autograd (no precision runs {ctx.op.name} for finite differences)"
                if note not in notes:
                    notes.append(note)
                return []  # the comparison with reference= that follows is the proof
            raise _NoReference(found)
        ref_dtype, reference, expected, declined = found
        try:
            proof = self._prove(ctx, reference, mask, expected, ref_dtype, index, notes)
        except _ImpreciseRung as imprecise:
            # The op runs at this precision in name only (it computes below it): the next rung down.
            found = self._reference_derivatives(ctx, call, mask, got, index, imprecise=(ref_dtype, str(imprecise)))
            if isinstance(found, str):
                raise _NoReference(found) from None
            ref_dtype, reference, expected, declined = found
            proof = self._prove(ctx, reference, mask, expected, ref_dtype, index, notes)
        note = _reference_note(ref_dtype, ctx.dtype, declined)
        if note not in notes:
            notes.append(note)
        what = "gradient" if self.order == 1 else "second derivative"
        if proof is not None:
            label, name, detail = proof
            return [
                Finding(
                    index,
                    f"{what} of input {label} is wrong at {dtype_id(ref_dtype)}, the reference precision, so at "
                    f"every precision: {detail} [{note}]",
                    input_name=name,
                )
            ]
        if ref_dtype == ctx.dtype:
            return []  # the item's own derivatives are the reference, just proven
        findings = []
        tol = ctx.tolerance
        labels = [s.label for s in call.slots] + [f"grad_output[{k}]" for k in range(len(got.weights))]
        names = [s.name for s in call.slots] + [None] * len(got.weights)
        for label, name, g, e in zip(labels, names, got.grads, expected.grads):
            mismatch = worst_mismatch(g, e, tol)
            if mismatch is not None:
                findings.append(
                    Finding(
                        index,
                        f"{what} of input {label} at {dtype_id(ctx.dtype)} differs from the {dtype_id(ref_dtype)} "
                        f"{what} of the same input values: "
                        + mismatch.describe(dtype_id(ref_dtype), dtype_id(ctx.dtype))
                        + f" [{note}]",
                        input_name=name,
                        heatmap=difference_grid(g, e, label.replace("'", "")),
                    )
                )
        return findings[:1] if findings else []

    def _against_reference_function(
        self, ctx: CheckContext, call: OpCall, mask: Sequence[bool], index: int, notes: list[str]
    ) -> list[Finding]:
        """The marker's ``reference=``: the op's outputs and derivatives at this dtype against autograd
        of the reference in float64 (complex128) on the same input values, grad_outputs and directions."""
        ref_dtype = reference_dtype(ctx.dtype)
        what_ref = f"reference= in {dtype_id(ref_dtype)}"
        note = f"also compared with the marker's {what_ref} (outputs and {'first' if self.order == 1 else 'second'} derivatives)"
        if note not in notes:
            notes.append(note)
        leaves = call.leaves()
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
            got = self._derivatives(call, leaves, mask, ctx.generator(20_000 + index), weights=None, outputs=outputs)
        except _Refused:
            raise
        except Exception as exc:
            return [Finding(index, f"backward raised {format_user_traceback(exc)}")]
        assert ctx.spec.reference is not None
        reference_call = _ReferenceFunction(ctx.spec.reference, call.with_dtype(ref_dtype))
        ref_leaves = reference_call.leaves()
        try:
            with torch.enable_grad():
                ref_outputs = reference_call.outputs(ref_leaves)
            if len(ref_outputs) != len(outputs):
                return [
                    Finding(index, f"the marker's reference= returns {len(ref_outputs)} output(s), {ctx.op.name} {len(outputs)}")
                ]
            expected = self._derivatives(
                reference_call,  # type: ignore[arg-type]  # an OpCall-shaped stand-in for the reference
                ref_leaves,
                mask,
                generator=None,
                weights=got.weights,
                outputs=ref_outputs,
            )
        except _Refused:
            raise
        except Exception as exc:
            return [Finding(index, f"the marker's reference= raised {format_user_traceback(exc)}")]
        tol = ctx.tolerance
        for k, (o, e) in enumerate(zip(outputs, ref_outputs)):
            if not (isinstance(o, torch.Tensor) and isinstance(e, torch.Tensor)):
                continue
            if o.shape != e.shape:
                return [Finding(index, f"output {k} has shape {list(o.shape)}, the reference's {list(e.shape)}")]
            mismatch = worst_mismatch(o.detach(), e.detach(), tol)
            if mismatch is not None:
                return [
                    Finding(
                        index,
                        f"output {k} at {dtype_id(ctx.dtype)} differs from the {what_ref} on the same input values: "
                        + mismatch.describe(what_ref, dtype_id(ctx.dtype)),
                    )
                ]
        what = "gradient" if self.order == 1 else "second derivative"
        labels = [s.label for s in call.slots] + [f"grad_output[{k}]" for k in range(len(got.weights))]
        names = [s.name for s in call.slots] + [None] * len(got.weights)
        for label, name, g, e in zip(labels, names, got.grads, expected.grads):
            mismatch = worst_mismatch(g, e, tol)
            if mismatch is not None:
                return [
                    Finding(
                        index,
                        f"{what} of input {label} at {dtype_id(ctx.dtype)} differs from the {what_ref}'s autograd "
                        f"{what} of the same input values: " + mismatch.describe(what_ref, dtype_id(ctx.dtype)),
                        input_name=name,
                    )
                ]
        return []

    def _reference_derivatives(
        self,
        ctx: CheckContext,
        call: OpCall,
        mask: Sequence[bool],
        got: _Derivatives,
        index: int,
        imprecise: Optional[tuple[torch.dtype, str]] = None,
    ) -> tuple[torch.dtype, OpCall, _Derivatives, list[str]] | str:
        """Climb down the precision ladder from the highest rung the op accepted before (kept in
        ``ctx.cache``, per op and device): (reference dtype, the sample at it, its derivatives with the
        item's grad_outputs, what higher rungs raised), or the skip reason when no rung works.
        ``imprecise``: a rung the op was just found to compute below, and why; the climb starts under it."""
        key = ("reference precision", ctx.op.name, ctx.device, ctx.dtype.is_complex)
        rungs = list(ladder(ctx.dtype))
        known = ctx.cache.get(key)
        declined: list[str] = list(ctx.cache.get(key + ("declined",), []))
        if imprecise is not None:
            rung, why = imprecise
            declined.append(f"{dtype_id(rung)}: {why}")
            ctx.cache[key + ("declined",)] = declined
            known = rungs[rungs.index(rung) + 1] if rung in rungs and rung != rungs[-1] else None
            if known is None:
                return f"no precision at or above {dtype_id(ctx.dtype)} gives finite differences that mean something ({'; '.join(declined)})"
        if known in rungs:
            rungs = rungs[rungs.index(known) :]
        for ref_dtype in rungs:
            if ref_dtype == ctx.dtype:
                ctx.cache[key] = ref_dtype
                return ref_dtype, call, got, declined
            reference = call.with_dtype(ref_dtype)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    expected = self._derivatives(reference, reference.leaves(), mask, generator=None, weights=got.weights)
            except _Refused:
                raise
            except Exception as exc:  # the plugin's probe at a precision the op may not support
                if self.order == 2 and refuses_double_backward(exc):
                    raise _Refused(_first_lines(str(exc), 1)) from None
                refusal = f"{dtype_id(ref_dtype)}: {type(exc).__name__}: {_first_lines(str(exc), 1)}"
                if refusal not in declined:
                    declined.append(refusal)
                ctx.cache[key + ("declined",)] = declined
                continue
            ctx.cache[key] = ref_dtype
            return ref_dtype, reference, expected, declined
        return (
            f"no precision at or above {dtype_id(ctx.dtype)} where finite differences mean something runs "
            f"{ctx.op.name} ({'; '.join(declined)}), so its gradients cannot be proven here: give the marker "
            "reference=fn, a plain PyTorch function with the op's signature, whose float64 autograd they are "
            "then compared with"
        )

    def _prove(
        self,
        ctx: CheckContext,
        reference: OpCall,
        mask: Sequence[bool],
        derivatives: _Derivatives,
        ref_dtype: torch.dtype,
        index: int,
        notes: list[str],
    ) -> Optional[tuple[str, Optional[str], str]]:
        """Prove the reference derivatives against central differences at their precision, along one
        random direction moving every input at once; when that fails, input by input, to name one
        (an input is blamed only when its own direction fails too). None when proven."""
        generator = ctx.generator(10_000 + index)
        leaves = derivatives.leaves
        if self.order == 1:
            inputs = list(leaves)
            loss_of = loss_function(reference.function(mask), derivatives.weights)
            grads = list(derivatives.grads)
            labels = [s.label for s in reference.slots]
            names: list[Optional[str]] = [s.name for s in reference.slots]
            rounding = loss_rounding(derivatives.outputs, derivatives.weights)
        else:
            if not derivatives.live:
                return None
            inputs = [*leaves, *derivatives.weights]
            loss_of = _first_derivative_loss(reference, mask, len(leaves), derivatives.live, derivatives.directions)
            grads = list(derivatives.grads)
            labels = [s.label for s in reference.slots] + [f"grad_output[{k}]" for k in range(len(derivatives.weights))]
            names = [s.name for s in reference.slots] + [None] * len(derivatives.weights)
            rounding = loss_rounding(derivatives.first_live, derivatives.directions)
        eps = ctx.spec.eps
        directions = [random_like(x.detach(), generator) for x in inputs]
        try:
            joint = prove_directional(loss_of, inputs, grads, directions, rounding, ref_dtype, eps, ctx.tolerance.rtol)
        except Exception:  # a forward that fails a step away: nothing proven, nothing to blame
            return None
        if joint.holds:
            return None
        if not math.isfinite(joint.numeric) and math.isfinite(joint.analytic):
            # A step left the op's domain (a log or sqrt of an input near 0): a smaller one may not.
            with contextlib.suppress(Exception):
                joint = prove_directional(
                    loss_of, inputs, grads, directions, rounding, ref_dtype, eps, ctx.tolerance.rtol, widen=0.01
                )
            if joint.holds:
                return None
            if not math.isfinite(joint.numeric):
                notes.append(
                    f"sample {index}: the {dtype_id(ref_dtype)} reference is not proven: the loss is not finite a "
                    f"finite-difference step away (step {joint.step:g}); its derivatives were compared, not proven"
                )
                return None
        try:
            noise = abs(loss_of(inputs) - loss_of(inputs))
        except Exception:
            noise = 0.0
        if noise > 0:
            # A nondeterministic function (atomic adds, a noisy backward): differences over a step
            # 1000x larger see through its noise; what is left of the disagreement is the op's.
            noisy_proof = prove_directional(
                loss_of, inputs, grads, directions, rounding, ref_dtype, eps, ctx.tolerance.rtol, noise=noise, widen=1000.0
            )
            if noisy_proof.holds:
                return None
        elif is_reference_precision(ref_dtype) and ref_dtype != ctx.dtype:
            # Central differences of a smooth function at steps h and 2h agree to O(h^2), and over a step
            # 1000x larger the forward's rounding shrinks 1000x while the truncation error of a smooth
            # function stays far below the tolerance. When h and 2h disagree, or the larger step agrees
            # with the backward, the forward's own rounding drowns the differences at h: the op computes
            # below this precision (an upcast with .float() is a downcast for float64 inputs). Not blamed.
            doubled: Optional[DirectionalProof]
            far: Optional[DirectionalProof]
            try:
                doubled = prove_directional(
                    loss_of, inputs, grads, directions, rounding, ref_dtype, eps, ctx.tolerance.rtol, widen=2.0
                )
                far = prove_directional(
                    loss_of, inputs, grads, directions, rounding, ref_dtype, eps, ctx.tolerance.rtol, widen=1000.0
                )
            except Exception:  # a forward that fails further away: nothing learnt
                doubled = far = None
            if doubled is not None and far is not None:
                spread = abs(doubled.numeric - joint.numeric)
                if not spread <= joint.allowed or far.holds:
                    raise _ImpreciseRung(
                        f"its finite differences at steps {joint.step:g}, {doubled.step:g} and {far.step:g} give "
                        f"{joint.numeric:.6g}, {doubled.numeric:.6g} and {far.numeric:.6g} (the backward: "
                        f"{joint.analytic:.6g}): the forward's rounding drowns them, it computes below "
                        f"{dtype_id(ref_dtype)} precision"
                    )
        for position in range(len(inputs)):
            alone = [d if k == position else None for k, d in enumerate(directions)]
            own = [random_like(inputs[position].detach(), generator) if k == position else None for k in range(len(inputs))]
            try:
                proofs = [
                    prove_directional(loss_of, inputs, grads, way, rounding, ref_dtype, eps, ctx.tolerance.rtol)
                    for way in (alone, own)
                ]
            except Exception:
                continue
            if not any(p.holds for p in proofs):
                detail = proofs[0].describe()
                if grads[position] is None:
                    detail += "; backward returned None for it (taken as zeros)"
                return labels[position], names[position], detail
        return None

    def _derivatives(
        self,
        call: OpCall,
        leaves: list[torch.Tensor],
        mask: Sequence[bool],
        generator: Optional[torch.Generator],
        weights: Optional[list[torch.Tensor]],
        outputs: Optional[list[Any]] = None,
    ) -> _Derivatives:
        """First (or second) derivatives with respect to each input, and what was used to get them.

        With ``weights`` given (the low-precision run's, converted) the same directions are reused;
        ``outputs``, the op's outputs on ``leaves`` with their graph, saves a forward when given."""
        with torch.enable_grad():
            if outputs is None:
                outputs = call.outputs(leaves)
            outputs = [o for o, keep in zip(outputs, mask) if keep]
            if weights is None:
                assert generator is not None
                weights = [random_like(o, generator) for o in outputs]
            else:
                weights = [w.detach().to(o.dtype) for w, o in zip(weights, outputs)]
            if self.order == 1:
                return _Derivatives(vjp(outputs, leaves, weights), weights, leaves, [o.detach() for o in outputs])
            weights = [w.detach().requires_grad_(True) for w in weights]
            first = vjp(outputs, leaves, weights, create_graph=True)
            if _once_differentiable(first):
                raise _Refused("its backward is marked @once_differentiable")
            live = [k for k, g in enumerate(first) if g is not None and g.requires_grad]
            live_first = [g for g in first if g is not None and g.requires_grad]
            detached = [w.detach() for w in weights]
            if not live:
                return _Derivatives([None] * (len(leaves) + len(weights)), detached, leaves, [])
            # Same directions for the low-precision run and its reference: fixed seeds.
            directions = [random_like(g.detach(), torch.Generator().manual_seed(7 + n)) for n, g in enumerate(live_first)]
            second = torch.autograd.grad(real_loss(live_first, directions), [*leaves, *weights], allow_unused=True)
            return _Derivatives(
                list(second),
                detached,
                leaves,
                [],
                live=live,
                directions=directions,
                first_live=[g.detach() for g in live_first],
            )


class _ReferenceFunction:
    """The marker's ``reference=`` standing in for the op on a sample (converted to float64): called with
    the op's arguments, positional and keyword-only as the schema has them."""

    def __init__(self, function: Callable[..., Any], call: OpCall) -> None:
        self.function = function
        self.call = call

    def leaves(self) -> list[torch.Tensor]:
        return self.call.leaves()

    def outputs(self, leaves: Sequence[torch.Tensor]) -> list[Any]:
        from ..differentiation import flatten_outputs

        args, kwargs = self.call.op.split_bound(self.call.substitute(leaves))
        return flatten_outputs(self.function(*args, **kwargs))


class _Derivatives:
    """What :meth:`_GradientCheck._derivatives` computed: the derivatives (first: one per input; second:
    one per input and grad_output), the grad_outputs, the leaves, the outputs, and for second order
    which first derivatives were differentiated along which directions."""

    def __init__(
        self,
        grads: list[Optional[torch.Tensor]],
        weights: list[torch.Tensor],
        leaves: list[torch.Tensor],
        outputs: list[torch.Tensor],
        live: Sequence[int] = (),
        directions: Sequence[torch.Tensor] = (),
        first_live: Sequence[torch.Tensor] = (),
    ) -> None:
        self.grads = grads
        self.weights = weights
        self.leaves = leaves
        self.outputs = outputs
        self.live = list(live)
        self.directions = list(directions)
        self.first_live = list(first_live)


def _first_derivative_loss(
    call: OpCall, mask: Sequence[bool], count: int, live: Sequence[int], directions: Sequence[torch.Tensor]
) -> Callable[[Sequence[torch.Tensor]], float]:
    """``sum_k Re(<d first_k(x, w), directions_k>)`` in float64, as a function of (inputs, grad_outputs):
    the loss whose gradient the second derivatives are, for finite differences of the backward."""
    fn = call.function(mask)

    def loss_of(values: Sequence[torch.Tensor]) -> float:
        xs = [v.detach().requires_grad_(True) for v in values[:count]]
        ws = [v.detach() for v in values[count:]]
        with torch.enable_grad():
            outs = fn(*xs)
            first = torch.autograd.grad(list(outs), xs, ws, allow_unused=True)
        terms = [first[k] if first[k] is not None else torch.zeros_like(xs[k]) for k in live]
        return loss_function(lambda *t: t, directions)(terms)

    return loss_of


def _reference_note(ref_dtype: torch.dtype, dtype: torch.dtype, declined: Sequence[str]) -> str:
    """Which reference an item used, for its message and the report."""
    why = f" ({'; '.join(declined)})" if declined else ""
    if ref_dtype == dtype:
        return f"reference: the op's own {dtype_id(ref_dtype)} derivatives, proven against finite differences in {dtype_id(ref_dtype)}{why}"
    return f"reference: {dtype_id(ref_dtype)} derivatives of the same input values, proven against finite differences in {dtype_id(ref_dtype)}{why}"


class _NotDifferentiable(Exception):
    """Every output of the op is integer or bool on a sample: nothing to differentiate there."""


class _ImpreciseRung(Exception):
    """A reference precision whose finite differences the forward's own rounding drowns."""


class _NoReference(Exception):
    """No precision of the ladder runs the op (and no ``reference=``): the item is a skip, this its reason."""


def _missing_autograd_kernels(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """The ops torch warned about while differentiating: "an autograd kernel was not registered"."""
    return sorted({m.group(1) for w in caught for m in [_MISSING_AUTOGRAD_KERNEL.search(str(w.message))] if m})


def _missing_kernel_note(index: int, kernels: list[str]) -> str:
    return (
        f"sample {index}: backprop went through {', '.join(kernels)}, which has no autograd kernel "
        "(torch warned it may be silently incorrect)"
    )


def _undefined_grad_problem(outputs: list[torch.Tensor], leaves: list[torch.Tensor]) -> Optional[str]:
    """What torch's ``check_undefined_grad`` finds, on the graph already built: the backward must accept
    undefined grad_outputs (all of them, and each alone) and then give zero or no gradients."""
    make_undefined = make_undefined_grad()
    if make_undefined is None:  # pragma: no cover - not in this torch
        return None
    variants = [list(range(len(outputs)))]
    if len(outputs) > 1:
        variants += [[k] for k in range(len(outputs))]
    for number, undefined in enumerate(variants):
        marked = [make_undefined()(o) if k in undefined else o for k, o in enumerate(outputs)]
        zeros = [torch.zeros_like(o) for o in marked]
        which = "every grad_output" if len(undefined) == len(outputs) else f"grad_output[{undefined[0]}]"
        try:
            grads = torch.autograd.grad(marked, leaves, zeros, allow_unused=True, retain_graph=number < len(variants) - 1)
        except Exception as exc:
            return (
                f"backward fails when {which} is undefined (None), as autograd passes it for an output that "
                f"is not used: {type(exc).__name__}: {_first_lines(str(exc), 1)}"
            )
        if any(g is not None and not bool(g.eq(0).all()) for g in grads):
            return f"backward returns nonzero gradients when {which} is undefined (None): they must be zero or None"
    return None


def _slot_name(call: OpCall, label: str) -> Optional[str]:
    """The schema name behind a label (None for a grad_output)."""
    return next((s.name for s in call.slots if s.label == label), None)


class _Refused(Exception):
    """A backward refused to be differentiated (raised out of one sample's second-order check)."""


class _SecondOrderProbeError(Exception):
    """The one double backward of the refusal probe raised something other than a refusal."""


def _first_derivatives_with_graph(
    call: OpCall,
    leaves: list[torch.Tensor],
    mask: Sequence[bool],
    generator: torch.Generator,
    probe_second: bool = False,
) -> list[Optional[torch.Tensor]]:
    """First derivatives computed with ``create_graph=True`` and grad_outputs that require grad.

    ``probe_second``: also differentiate them once, so that a backward refusing double backward raises
    here, as fast as torch refuses, not after gradgradcheck's finite differences (seconds on real
    inputs); a refusal propagates, another error is a :class:`_SecondOrderProbeError`."""
    with torch.enable_grad():
        fresh = [t.detach().requires_grad_(True) for t in leaves]
        outputs = call.function(mask)(*fresh)
        weights = [random_like(o, generator).requires_grad_(True) for o in outputs]
        first = vjp(outputs, fresh, weights, create_graph=True)
        live = [g for g in first if g is not None and g.requires_grad]
        if probe_second and live and not _once_differentiable(first):
            try:
                torch.autograd.grad(real_loss(live, [torch.ones_like(g) for g in live]), [*fresh, *weights], allow_unused=True)
            except Exception as exc:
                if refuses_double_backward(exc):
                    raise
                raise _SecondOrderProbeError(str(exc)) from exc
        return first


def _once_differentiable(grads: Sequence[Optional[torch.Tensor]]) -> bool:
    # @once_differentiable hangs a DelayedError node ("Error") on what its backward returns; torch
    # 2.13 does not always raise from it, and gradgradcheck then sees zeros instead of a refusal.
    return any(g is not None and type(g.grad_fn).__name__ in ("Error", "DelayedError") for g in grads)


def _detached_gradients(call: OpCall, leaves: list[torch.Tensor], mask: Sequence[bool], generator: torch.Generator) -> list[str]:
    """Labels of inputs whose first derivative comes back without a graph though the grad_outputs
    require grad: a backward that detached what it computed."""
    try:
        grads = _first_derivatives_with_graph(call, leaves, mask, generator)
    except Exception:
        return []
    return [s.label for s, g in zip(call.slots, grads) if g is not None and not g.requires_grad]


class GradCheck(_GradientCheck):
    """First derivatives: ``torch.autograd.gradcheck`` in float64/complex128; at lower precision, the
    op's gradients compared with proven reference gradients of the same input values."""

    name = "gradcheck"
    description = (
        "first derivatives against finite differences (float64), or against reference gradients proven by them (lower precision)"
    )
    order = 1


class GradGradCheck(_GradientCheck):
    """Second derivatives: ``torch.autograd.gradgradcheck`` in float64/complex128; at lower precision,
    second-order vector-Jacobian products compared with proven reference ones."""

    name = "gradgradcheck"
    description = "second derivatives (backward of backward) against finite differences, or proven reference ones"
    order = 2

    def not_applicable(self, op: Any, spec: Any) -> Optional[str]:
        if spec.supports_gradgrad is False:
            return "the marker declares supports_gradgrad=False"
        return None
