"""Pieces shared by the checks that differentiate samples (gradcheck, gradgradcheck, grad_keys,
forward_ad, batched_grad, noncontiguous, nondeterminism): which samples can be differentiated, why not, and comparisons that
treat a NaN found on both sides as agreement."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from ..differentiation import OpCall, worst_mismatch
from ..dtypes import Tolerance, dtype_id, is_differentiable_dtype
from ..ops import ResolvedOp
from ..torch_internals import vmap_fallback_warning_disabled
from .base import CheckContext, Finding

__all__ = [
    "GradientSamples",
    "integer_outputs_reason",
    "wants_gradients",
    "agreement",
    "gradient_samples",
    "max_abs_difference",
    "mutated_arguments",
    "no_gradient_reason",
    "quiet_vmap",
]


def mutated_arguments(op: ResolvedOp) -> list[str]:
    """Names of the arguments the op's schema declares it writes to (``Tensor(a!)``)."""
    names = []
    for argument in op.schema.arguments:
        alias = getattr(argument, "alias_info", None)
        if alias is not None and alias.is_write:
            names.append(argument.name)
    return names


def no_gradient_reason(op: ResolvedOp) -> str:
    """Why a forward with inputs requiring grad produced no output requiring grad."""
    mutated = mutated_arguments(op)
    if mutated:
        return (
            f"{op.name} mutates {', '.join(repr(m) for m in mutated)} and no output requires grad "
            "(no autograd formula): there is no gradient to check"
        )
    return (
        f"no output of {op.name} requires grad: the op has no autograd formula "
        "(gradcheck reports this; register one with torch.library.register_autograd)"
    )


def wants_gradients(ctx: CheckContext) -> bool:
    """Whether a check that also differentiates (opcheck's autograd sub-tests, compile's backward) asks
    its samples for inputs that require grad: only at floating and complex dtypes (sample functions built
    on ``make_tensor`` raise for ``requires_grad=True`` at integer and bool ones), never for a mutating
    op (it cannot have autograd; inputs requiring grad only make its in-place update an error)."""
    return is_differentiable_dtype(ctx.dtype) and not ctx.op.is_mutable


def integer_outputs_reason(op: ResolvedOp, outputs: list) -> Optional[str]:
    """Why gradient checks do not apply when every tensor output of the op is integer or bool (an
    argmax, nms-style indices): None when some output is floating or complex (or there is none)."""
    tensors = [o for o in outputs if isinstance(o, torch.Tensor)]
    if not tensors or any(is_differentiable_dtype(t.dtype) for t in tensors):
        return None
    kinds = "/".join(sorted({dtype_id(t.dtype) for t in tensors}))
    return f"every output of {op.name} is {kinds}: not differentiable, so gradient checks do not apply"


@dataclass
class GradientSamples:
    """The samples of an item that have an input requiring grad, with the problems found on the way."""

    calls: list[tuple[int, OpCall]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    total: int = 0
    skip_reason: Optional[str] = None


def gradient_samples(ctx: CheckContext) -> GradientSamples:
    """Bind each of the item's samples; keep those with a differentiable input.

    ``skip_reason`` is set when the dtype cannot be differentiated or no sample has such an input."""
    if not is_differentiable_dtype(ctx.dtype):
        return GradientSamples(skip_reason=f"{dtype_id(ctx.dtype)} tensors cannot require grad: nothing to differentiate")
    samples = ctx.samples(requires_grad=True)
    result = GradientSamples(total=len(samples))
    for index, sample in enumerate(samples):
        try:
            call = OpCall(ctx.op, sample)
        except TypeError as exc:
            result.findings.append(Finding(index, f"the sample does not fit the schema: {exc}"))
            continue
        if call.slots:
            result.calls.append((index, call))
    if not result.calls and not result.findings:
        result.skip_reason = (
            f"no sample has an input that requires grad at {dtype_id(ctx.dtype)} "
            "(samples(device, dtype, requires_grad=True) should make floating inputs require grad)"
        )
    return result


def _numeric(t: torch.Tensor) -> torch.Tensor:
    """Bool tensors as integers, so that differences can be taken."""
    return t.to(torch.int64) if t.dtype == torch.bool else t


def _without_shared_nans(got: torch.Tensor, expected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    both = torch.isnan(got) & torch.isnan(expected)
    if not bool(both.any()):
        return got, expected
    zero = torch.zeros((), dtype=got.dtype, device=got.device)
    return torch.where(both, zero, got), torch.where(both, zero.to(expected.dtype), expected)


def agreement(
    got: Optional[torch.Tensor], expected: Optional[torch.Tensor], tol: Tolerance, got_from: str, expected_from: str
) -> Optional[str]:
    """None when ``got`` matches ``expected`` within ``tol`` (NaN on both sides agrees), else what differs."""
    if got is not None and expected is not None:
        if got.shape != expected.shape:
            return f"shape {list(got.shape)} ({got_from}) but {list(expected.shape)} ({expected_from})"
        got, expected = _without_shared_nans(_numeric(got.detach()), _numeric(expected.detach()))
    mismatch = worst_mismatch(got, expected, tol)
    return None if mismatch is None else mismatch.describe(expected_from, got_from)


def max_abs_difference(first: Optional[torch.Tensor], second: Optional[torch.Tensor]) -> tuple[float, tuple[int, ...]]:
    """The largest ``|first - second|`` and where (NaN on both sides counts as equal; on one side as inf)."""
    if first is None and second is None:
        return 0.0, ()
    reference = first if first is not None else second
    assert reference is not None
    a = (first if first is not None else torch.zeros_like(reference)).detach().to("cpu")
    b = (second if second is not None else torch.zeros_like(reference)).detach().to("cpu")
    if a.numel() == 0:
        return 0.0, ()
    a, b = _without_shared_nans(_numeric(a), _numeric(b))
    diff = (a - b).abs().double()
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    flat = int(torch.argmax(diff).item())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
    return float(diff.reshape(-1)[flat].item()), index


@contextlib.contextmanager
def quiet_vmap() -> Iterator[None]:
    """Silence vmap's "performance drop" fallback warning (C++ and Python): expected for custom ops."""
    with vmap_fallback_warning_disabled(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop")
        warnings.filterwarnings("ignore", message=".*is_grads_batched.*")
        yield
