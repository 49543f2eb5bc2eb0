"""``edge_shapes``: backwards that only work for the shapes their author tried.

From each given sample the check derives edge-case samples, cutting the sample's own values so that
the inputs stay in the op's domain:

- zero-size: every dimension of one size made 0, in every tensor at once (tensors that shared a
  shape still do, so what broadcast before still broadcasts);
- size-1: every dimension of one size made 1, in every tensor at once;
- 0-dim: the tensors of one shape (or all tensors) made 0-dim;
- broadcast: one tensor that shares its shape with another given size 1 in one dimension, or its
  leading dimension dropped, so it broadcasts against the others.

A derived sample whose forward the op rejects is skipped (the op need not support it; the note says
why). One whose forward works but whose backward raises, or whose gradients are wrong, is a finding:
in float64/complex128 the gradients are compared with finite differences, at lower precisions with
the float64 gradients of the same values.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional

import torch

from ..differentiation import OpCall, random_like, vjp, worst_mismatch
from ..dtypes import dtype_id, is_differentiable_dtype, is_reference_precision, reference_dtype
from ..samples import SampleInput
from .base import Check, CheckContext, CheckResult, Finding, format_user_traceback
from .gradcheck import FiniteDifferenceDiagnosis  # the per-input comparison gradcheck explains failures with
from .opcheck import first_lines
from .requires_grad_subsets import gradient_check_not_applicable

__all__ = ["EdgeShapesCheck", "derive_edge_samples"]

#: Derived samples checked per item unless ``options={"edge_shapes": {"max_derived": N}}`` says otherwise.
DEFAULT_MAX_DERIVED = 24


def _tensors_of(sample: SampleInput) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    sample.map(lambda t: found.append(t) or t)
    return found


def _rebuild(sample: SampleInput, change: Callable[[int, torch.Tensor], torch.Tensor]) -> SampleInput:
    """``sample`` with its k-th tensor (in traversal order) replaced by ``change(k, values)``."""
    counter = itertools.count()

    def apply(t: torch.Tensor) -> torch.Tensor:
        new = change(next(counter), t.detach()).clone().contiguous()
        return new.requires_grad_(True) if t.requires_grad else new

    return sample.map(apply)


def _resize_dims(t: torch.Tensor, size: int, to: int) -> torch.Tensor:
    for dim, extent in enumerate(t.shape):
        if extent == size:
            t = t.narrow(dim, 0, to)
    return t


def _names(op: Any, sample: SampleInput, tensors: list[torch.Tensor]) -> list[str]:
    """Each tensor's schema name ('x', 'xs'[1]), by identity."""
    by_id: dict[int, str] = {}
    try:
        for name, value in op.bind(sample).items():
            if isinstance(value, torch.Tensor):
                by_id[id(value)] = f"'{name}'"
            elif isinstance(value, (list, tuple)):
                for k, item in enumerate(value):
                    if isinstance(item, torch.Tensor):
                        by_id[id(item)] = f"'{name}'[{k}]"
    except TypeError:
        pass
    return [by_id.get(id(t), f"tensor {k}") for k, t in enumerate(tensors)]


def derive_edge_samples(op: Any, sample: SampleInput) -> list[tuple[str, SampleInput]]:
    """The edge-case samples derived from ``sample``: (what was changed, derived sample), grouped by
    kind and interleaved so that a cap keeps every kind."""
    tensors = _tensors_of(sample)
    if not tensors:
        return []
    names = _names(op, sample, tensors)
    sizes = sorted({extent for t in tensors for extent in t.shape})
    zero = [
        (f"every dimension of size {s} made 0", _rebuild(sample, lambda k, t, s=s: _resize_dims(t, s, 0)))
        for s in sizes
        if s >= 1
    ]
    ones = [
        (f"every dimension of size {s} made 1", _rebuild(sample, lambda k, t, s=s: _resize_dims(t, s, 1)))
        for s in sizes
        if s >= 2
    ]
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, t in enumerate(tensors):
        if t.dim() >= 1 and t.numel() > 0:
            groups.setdefault(tuple(t.shape), []).append(k)
    scalar = []
    for members in groups.values():
        chosen = set(members)
        label = " and ".join(names[k] for k in members)
        scalar.append(
            (f"{label} made 0-dim", _rebuild(sample, lambda k, t, c=chosen: t.reshape(-1)[0] if k in c else t))
        )
    if len(groups) > 1:
        every = {k for members in groups.values() for k in members}
        scalar.append(("every tensor made 0-dim", _rebuild(sample, lambda k, t: t.reshape(-1)[0] if k in every else t)))
    broadcast = []
    for members in groups.values():
        if len(members) < 2:
            continue
        for k in members:
            shape = tensors[k].shape
            for dim, extent in enumerate(shape):
                if extent > 1:
                    broadcast.append(
                        (
                            f"{names[k]} given size 1 in dimension {dim} (broadcast against the others)",
                            _rebuild(sample, lambda j, t, k=k, dim=dim: t.narrow(dim, 0, 1) if j == k else t),
                        )
                    )
            broadcast.append(
                (
                    f"{names[k]} without its leading dimension (broadcast against the others)",
                    _rebuild(sample, lambda j, t, k=k: t[0] if j == k else t),
                )
            )
    merged = []
    for batch in itertools.zip_longest(zero, scalar, ones, broadcast):
        merged.extend(item for item in batch if item is not None)
    return merged


def _signature(sample: SampleInput) -> str:
    return repr(SampleInput(*sample.args, **sample.kwargs))


class EdgeShapesCheck(Check):
    """Backward on zero-size, 0-dim, size-1 and broadcast samples derived from the given ones.

    Options (``options={"edge_shapes": {...}}``): ``max_derived``, the most derived samples checked
    per item (default 24).
    """

    name = "edge_shapes"
    options_accepted = ("max_derived",)
    description = "backward on zero-size, 0-dim, size-1 and broadcast samples derived from the given ones"

    def not_applicable(self, op: Any, spec: Any) -> Optional[str]:
        return gradient_check_not_applicable(op)

    def run(self, ctx: CheckContext) -> CheckResult:
        if not is_differentiable_dtype(ctx.dtype):
            return ctx.skipped(f"{dtype_id(ctx.dtype)} tensors cannot require grad: nothing to differentiate")
        limit = int(ctx.options.get("max_derived", DEFAULT_MAX_DERIVED))
        samples = ctx.samples(requires_grad=True)
        derived: list[tuple[int, str, SampleInput]] = []
        seen: set[str] = {_signature(s) for s in samples}
        per_sample = [derive_edge_samples(ctx.op, s) for s in samples]
        # Round-robin over the given samples, so a cap keeps derivations of each.
        for batch in itertools.zip_longest(*per_sample):
            for index, item in enumerate(batch):
                if item is None:
                    continue
                description, sample = item
                signature = _signature(sample)
                if signature not in seen:
                    seen.add(signature)
                    derived.append((index, description, sample))
        derived = derived[:limit]
        findings: list[Finding] = []
        rejected: list[str] = []
        checked = 0
        for number, (index, description, sample) in enumerate(derived):
            outcome = self._check_derived(ctx, index, number, description, sample)
            if isinstance(outcome, Finding):
                findings.append(outcome)
            elif outcome is None:
                checked += 1
            else:
                rejected.append(outcome)
        notes = [f"{len(derived)} derived sample(s): {checked} right, {len(findings)} wrong, {len(rejected)} skipped"]
        if rejected:
            notes.append(f"skipped, e.g. {rejected[0]}")
        if findings:
            return ctx.failed(findings, total=len(samples), checked=checked, notes=notes)
        if checked == 0:
            if not derived:
                return ctx.skipped("no edge-case sample could be derived from the given samples", total=len(samples))
            return ctx.skipped(
                f"the op rejects or cannot differentiate every derived sample, e.g. {rejected[0]}", total=len(samples), notes=notes
            )
        return ctx.passed(len(samples), len(samples), notes=notes)

    def _check_derived(self, ctx: CheckContext, index: int, number: int, description: str, sample: SampleInput) -> Any:
        """None when checked and right, a Finding when wrong, a string saying why it was skipped."""
        where = f"derived sample ({description}): {sample!r}"
        try:
            call = OpCall(ctx.op, sample)
        except TypeError as exc:
            return f"{description}: {first_lines(str(exc), 1)}"
        if not call.slots:
            return f"{description}: no input requires grad"
        leaves = call.leaves()
        try:
            with torch.enable_grad():
                outputs = call.outputs(leaves)
        except Exception as exc:
            return f"{description}: the forward rejects it ({type(exc).__name__}: {first_lines(str(exc), 1)})"
        mask = call.differentiable_output_mask(outputs)
        if not any(mask):
            return f"{description}: no output requires grad"
        kept = [o for o, keep in zip(outputs, mask) if keep]
        weights = [random_like(o.detach(), ctx.generator(1000 + number)) for o in kept]
        try:
            grads = vjp(kept, leaves, weights)
        except Exception as exc:
            return Finding(index, f"{where}\nforward works but backward raised {format_user_traceback(exc)}")
        labels = [s.label for s in call.slots]
        try:
            if is_reference_precision(ctx.dtype):
                eps = ctx.spec.eps or 1e-6
                problems = FiniteDifferenceDiagnosis(ctx, eps, ctx.tolerance).run(call.function(mask), leaves, labels, "gradient", salt=1000 + number)
            else:
                problems = self._against_reference(ctx, call, mask, grads, weights, labels)
        except Exception as exc:
            return f"{description}: the reference could not be computed ({type(exc).__name__}: {first_lines(str(exc), 1)})"
        if problems:
            label, message = problems[0]
            name = call.slots[labels.index(label)].name if label in labels else None
            return Finding(index, f"{where}\n{message}", input_name=name)
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
