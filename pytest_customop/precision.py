"""The precision ladder, and the proof that reference gradients are right.

A low-precision item (float32, float16, bfloat16, complex64) compares the op's gradients with reference
gradients of the same input values, computed at the highest precision the op runs at: float64, else
float32 (complex128, else complex64). Those reference gradients are themselves proven against central
finite differences at that precision, along one random direction that moves every input at once (two
forwards: the cost of about one forward and backward), so that a backward wrong at every dtype fails
every dtype's item instead of being "consistent".

Steps and tolerances follow the precision (``u`` its machine epsilon):

- float64: step ``eps`` (1e-6 unless the marker says), allowed ``1e-5 * sqrt(n) + 1e-3 * |fd|`` plus the
  forward's rounding, as the plugin's fast-mode gradcheck;
- float32: step 1e-3 of each input's root-mean-square (``u / step`` keeps the rounding at ~1e-4 of the
  result; a larger step crosses the kinks of relu-like ops on more elements), allowed ``0.1 * |fd|``
  plus the forward's rounding: a proof to ~10% (a wrong sign, a missing term or factor, zeros), which
  float32 finite differences cannot sharpen for ops with kinks.

The forward's rounding is allowed for as ``32 * u * sqrt(sum((w * y)^2)) / step`` (the loss evaluated in
float64 from the outputs ``y`` and grad_outputs ``w``, so only the op's own rounding counts).

Knows nothing of pytest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .dtypes import dtype_id, is_reference_precision

__all__ = [
    "DirectionalProof",
    "ladder",
    "loss_function",
    "loss_rounding",
    "prove_directional",
    "step_for",
]

_REAL_LADDER = (torch.float64, torch.float32)
_COMPLEX_LADDER = (torch.complex128, torch.complex64)


def ladder(dtype: torch.dtype) -> tuple[torch.dtype, ...]:
    """The precisions a ``dtype`` item's reference may be computed at, highest first (the item's own
    dtype included when finite differences are meaningful there: float32 and complex64)."""
    rungs = _COMPLEX_LADDER if dtype.is_complex else _REAL_LADDER
    return tuple(r for r in rungs if r.itemsize >= dtype.itemsize or r == dtype)


def step_for(dtype: torch.dtype, eps: Optional[float]) -> tuple[float, bool]:
    """(finite-difference step, whether it is relative to each input's root-mean-square) at ``dtype``."""
    if is_reference_precision(dtype):
        return (eps or 1e-6), False
    return 1e-3, True


def _relative_rtol(dtype: torch.dtype) -> float:
    return 1e-3 if is_reference_precision(dtype) else 0.1


def _absolute_tol(dtype: torch.dtype, numel: int) -> float:
    return 1e-5 * numel**0.5 if is_reference_precision(dtype) else 0.0


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.complex128 if t.is_complex() else torch.float64)


def _loss(outputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> float:
    """``sum(Re(conj(w) * y))`` evaluated in float64, from outputs computed at any precision."""
    total = 0.0
    for y, w in zip(outputs, weights):
        y64, w64 = _wide(y), _wide(w)
        total += float((w64.conj() * y64).real.sum().item()) if y64.is_complex() else float((w64 * y64).sum().item())
    return total


def loss_rounding(outputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> float:
    """``sqrt(sum(|w * y|^2))``: the size of the loss's terms, which the forward's rounding scales with."""
    total = 0.0
    for y, w in zip(outputs, weights):
        total += float((_wide(w).abs() * _wide(y).abs()).pow(2).sum().item())
    return total**0.5


@dataclass(frozen=True)
class DirectionalProof:
    """A central difference of the loss along one direction against the backward's inner product with it."""

    numeric: float
    analytic: float
    allowed: float
    step: float
    dtype: torch.dtype

    @property
    def error(self) -> float:
        return abs(self.numeric - self.analytic)

    @property
    def holds(self) -> bool:
        return self.error <= self.allowed  # NaN fails

    def describe(self) -> str:
        return (
            f"along a random direction: expected {self.numeric:.6g} (finite differences in {dtype_id(self.dtype)}, "
            f"step {self.step:g}), got {self.analytic:.6g} (backward in {dtype_id(self.dtype)}); abs err "
            f"{self.error:.3g} (allowed {self.allowed:.3g})"
        )


def _inner(grad: Optional[torch.Tensor], direction: torch.Tensor) -> float:
    if grad is None:
        return 0.0
    g, d = _wide(grad), _wide(direction)
    return float((g.conj() * d).real.sum().item()) if g.is_complex() else float((g * d).sum().item())


def prove_directional(
    loss_of: Callable[[Sequence[torch.Tensor]], float],
    inputs: Sequence[torch.Tensor],
    grads: Sequence[Optional[torch.Tensor]],
    directions: Sequence[Optional[torch.Tensor]],
    rounding: float,
    dtype: torch.dtype,
    eps: Optional[float],
    rtol: float = 0.0,
    noise: float = 0.0,
    widen: float = 1.0,
) -> DirectionalProof:
    """Compare ``sum_i Re(<grads[i], directions[i]>)`` with the central difference of ``loss_of`` (the
    real loss, a float) moving every input ``i`` by ``step * directions[i]`` (None: not moved).

    ``rounding`` is :func:`loss_rounding` of the forward at ``inputs``; the directions are scaled by each
    input's root-mean-square here when the step is relative. ``rtol``, the item's own relative tolerance,
    loosens the proof to it (a bfloat16 item does not ask its reference for more than bfloat16 accuracy).
    ``noise``: how much ``loss_of`` differs between two calls at the same point (a nondeterministic
    backward), allowed for over a step ``widen`` times the usual."""
    step, relative = step_for(dtype, eps)
    step *= widen
    scaled: list[Optional[torch.Tensor]] = []
    for x, d in zip(inputs, directions):
        if d is None:
            scaled.append(None)
            continue
        if relative:
            rms = float(x.detach().abs().double().pow(2).mean().sqrt().item()) if x.numel() else 0.0
            d = d * (rms if rms > 0 and math.isfinite(rms) else 1.0)
        scaled.append(d)
    base = [x.detach() for x in inputs]
    plus = [b if d is None else (b + step * d).to(b.dtype) for b, d in zip(base, scaled)]
    minus = [b if d is None else (b - step * d).to(b.dtype) for b, d in zip(base, scaled)]
    numeric = (loss_of(plus) - loss_of(minus)) / (2 * step)
    # What the backward says the same move changes, against the direction actually taken (rounded to
    # the input's dtype, as the inputs were).
    analytic = sum(_inner(g, ((p - m) / (2 * step))) for g, p, m, d in zip(grads, plus, minus, scaled) if d is not None)
    numel = sum(x.numel() for x, d in zip(inputs, scaled) if d is not None)
    unit = torch.finfo(dtype).eps
    allowed = (
        _absolute_tol(dtype, numel)
        + max(_relative_rtol(dtype), rtol) * abs(numeric)
        + 32 * unit * rounding / step
        + 8 * noise / step
    )
    return DirectionalProof(numeric=numeric, analytic=float(analytic), allowed=allowed, step=step, dtype=dtype)


def loss_function(fn: Callable[..., Sequence[Any]], weights: Sequence[torch.Tensor]) -> Callable[[Sequence[torch.Tensor]], float]:
    """The real loss of ``fn``'s outputs with ``weights``, in float64, as a function of the inputs."""

    def loss_of(inputs: Sequence[torch.Tensor]) -> float:
        with torch.no_grad():
            return _loss(list(fn(*inputs)), weights)

    return loss_of
