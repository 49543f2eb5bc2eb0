"""Differentiating one sample of an op: which inputs take part, vector-Jacobian products, finite
differences, and the worst mismatch between two gradients. Shared by every gradient check.

Conventions (PyTorch's): a vector-Jacobian product with grad_output ``w`` is the gradient of the real
loss ``L = sum(Re(conj(w) * y))`` over the outputs ``y``, and the gradient of a complex input is
``dL/d(re) + i dL/d(im)``, so one finite-difference formula serves real and complex inputs alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .dtypes import Tolerance, is_differentiable_dtype
from .ops import ResolvedOp
from .samples import SampleInput

__all__ = [
    "Mismatch",
    "OpCall",
    "Slot",
    "flatten_outputs",
    "numerical_jvp",
    "numerical_vjp",
    "directional_vjp",
    "random_like",
    "real_loss",
    "vjp",
    "worst_mismatch",
]


@dataclass(frozen=True)
class Slot:
    """One differentiable tensor input: a schema argument, and a position for ``Tensor[]`` ones."""

    name: str
    index: Optional[int] = None

    @property
    def label(self) -> str:
        return f"'{self.name}'" if self.index is None else f"'{self.name}'[{self.index}]"


def flatten_outputs(result: Any) -> list[Any]:
    """The op's outputs as a flat list (tuples and ``Tensor[]`` returns unpacked)."""
    if isinstance(result, (list, tuple)):
        flat = []
        for item in result:
            flat.extend(flatten_outputs(item))
        return flat
    return [result]


def _is_diff_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and is_differentiable_dtype(value.dtype)


class OpCall:
    """One sample bound to the op's schema, ready to be differentiated.

    The differentiable inputs (:attr:`slots`) are the floating-point and complex tensors the sample
    marks ``requires_grad``, in schema order, ``Tensor[]`` elements one by one.
    """

    def __init__(self, op: ResolvedOp, sample: SampleInput) -> None:
        self.op = op
        self.sample = sample
        self.bound = op.bind(sample)
        self.slots: list[Slot] = []
        self._originals: list[torch.Tensor] = []
        for name, value in self.bound.items():
            if isinstance(value, (list, tuple)):
                for index, item in enumerate(value):
                    if _is_diff_tensor(item) and item.requires_grad:
                        self.slots.append(Slot(name, index))
                        self._originals.append(item)
            elif _is_diff_tensor(value) and value.requires_grad:
                self.slots.append(Slot(name))
                self._originals.append(value)

    def leaves(self, dtype: Optional[torch.dtype] = None) -> list[torch.Tensor]:
        """Fresh leaf copies of the differentiable inputs (optionally converted to ``dtype``)."""
        return [(t.detach().to(dtype) if dtype is not None else t.detach().clone()).requires_grad_(True) for t in self._originals]

    def substitute(self, leaves: Sequence[torch.Tensor]) -> dict[str, Any]:
        """The bound arguments with the differentiable inputs replaced by ``leaves``."""
        bound = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.bound.items()}
        for slot, leaf in zip(self.slots, leaves):
            if slot.index is None:
                bound[slot.name] = leaf
            else:
                bound[slot.name][slot.index] = leaf
        for name, value in self.bound.items():
            if isinstance(value, tuple):
                bound[name] = tuple(bound[name])
        return bound

    def outputs(self, leaves: Sequence[torch.Tensor]) -> list[Any]:
        """Run the op on ``leaves``; its outputs, flattened."""
        return flatten_outputs(self.op.call_bound(self.substitute(leaves)))

    def function(self, output_mask: Optional[Sequence[bool]] = None) -> Callable[..., tuple]:
        """``fn(*leaves) -> tuple of outputs`` for gradcheck: the outputs kept by ``output_mask``."""

        def fn(*leaves: torch.Tensor) -> tuple:
            outs = self.outputs(leaves)
            if output_mask is None:
                return tuple(o for o in outs if _is_diff_tensor(o))
            return tuple(o for o, keep in zip(outs, output_mask) if keep)

        return fn

    def differentiable_output_mask(self, outputs: Sequence[Any]) -> list[bool]:
        """Which outputs of a forward with grad enabled carry a gradient back to the inputs."""
        return [_is_diff_tensor(o) and o.requires_grad for o in outputs]

    def with_dtype(self, dtype: torch.dtype, source: Optional[Sequence[torch.dtype]] = None) -> OpCall:
        """The same sample with the tensors built at the item's dtype converted to ``dtype``'s kind:
        values kept, so a float64 reference sees exactly the numbers a float32 run saw.

        ``source``: the dtypes converted (with their real/complex counterparts); by default those of the
        inputs that require grad (all floating and complex tensors when none does). Tensors of other
        dtypes (a float32 buffer in a float16 sample, int64 indices) keep theirs: the op may need them so."""
        if source is None:
            source = [t.dtype for t in self._originals] or None
        converted = None if source is None else {d for s in source for d in (s, _counterpart(s))}

        def convert(t: torch.Tensor) -> torch.Tensor:
            if not is_differentiable_dtype(t.dtype) or (converted is not None and t.dtype not in converted):
                return t
            target = dtype if t.dtype.is_complex == dtype.is_complex else _counterpart(dtype)
            return t.detach().to(target).requires_grad_(t.requires_grad)

        return OpCall(self.op, self.sample.map(convert))


def _counterpart(dtype: torch.dtype) -> torch.dtype:
    """float32 <-> complex64, float64 <-> complex128 (others: themselves)."""
    pairs = {torch.float32: torch.complex64, torch.float64: torch.complex128, torch.float16: torch.complex32}
    pairs.update({v: k for k, v in pairs.items()})
    return pairs.get(dtype, dtype)


def random_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal values shaped and typed like ``t``, drawn on the CPU for reproducibility.

    Drawn in float32 (then converted): torch's float64 normal sampler is ~6x slower on the CPU (6.7 ms
    against 1.2 ms for 512x512), more than the forward and backward of many ops, and a direction or a
    grad_output needs no more than float32's resolution to be random."""
    values = torch.randn(t.shape, generator=generator, dtype=torch.float32)
    if t.dtype.is_complex:
        values = torch.complex(values, torch.randn(t.shape, generator=generator, dtype=torch.float32))
    return values.to(device=t.device, dtype=t.dtype)


def real_loss(outputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum(Re(conj(w) * y))``: the real scalar whose gradient is the vector-Jacobian product."""
    total = None
    for y, w in zip(outputs, weights):
        term = (w.conj() * y).real.sum() if y.is_complex() else (w * y).sum()
        total = term if total is None else total + term
    assert total is not None
    return total


def vjp(
    outputs: Sequence[torch.Tensor],
    leaves: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    *,
    create_graph: bool = False,
    retain_graph: Optional[bool] = None,
) -> list[Optional[torch.Tensor]]:
    """Vector-Jacobian products of ``outputs`` with ``weights``, one per leaf (None if unused).

    ``retain_graph=True`` keeps the graph for another backward over the same outputs."""
    grads = torch.autograd.grad(
        list(outputs),
        list(leaves),
        list(weights),
        allow_unused=True,
        create_graph=create_graph,
        retain_graph=retain_graph,
    )
    return list(grads)


def _loss_at(fn: Callable[..., tuple], leaves: list[torch.Tensor], weights: Sequence[torch.Tensor]) -> float:
    with torch.no_grad():
        return float(real_loss(fn(*leaves), weights).item())


def numerical_vjp(
    fn: Callable[..., tuple],
    leaves: Sequence[torch.Tensor],
    position: int,
    weights: Sequence[torch.Tensor],
    eps: float,
) -> torch.Tensor:
    """The vector-Jacobian product for input ``position`` by central differences, element by element
    (two forward calls per element, four for complex)."""
    base = [t.detach() for t in leaves]
    target = base[position]
    grad = torch.zeros(target.shape, dtype=target.dtype)
    flat_grad = grad.view(-1)
    steps = [1.0, 1j] if target.is_complex() else [1.0]
    for k in range(target.numel()):
        for step in steps:
            derivative = 0.0
            for sign in (1.0, -1.0):
                bumped = target.clone()
                bumped.view(-1)[k] += sign * eps * step
                trial = list(base)
                trial[position] = bumped
                derivative += sign * _loss_at(fn, trial, weights)
            derivative /= 2 * eps
            flat_grad[k] += derivative * step
    return grad.to(target.device)


def directional_vjp(
    fn: Callable[..., tuple],
    leaves: Sequence[torch.Tensor],
    position: int,
    direction: torch.Tensor,
    weights: Sequence[torch.Tensor],
    eps: float,
) -> float:
    """``Re(<grad, direction>)`` for input ``position`` by one central difference along ``direction``."""
    base = [t.detach() for t in leaves]
    plus, minus = list(base), list(base)
    plus[position] = base[position] + eps * direction
    minus[position] = base[position] - eps * direction
    return (_loss_at(fn, plus, weights) - _loss_at(fn, minus, weights)) / (2 * eps)


def numerical_jvp(
    fn: Callable[..., tuple],
    leaves: Sequence[torch.Tensor],
    tangents: Sequence[Optional[torch.Tensor]],
    eps: float,
) -> list[torch.Tensor]:
    """The Jacobian-vector product of every output of ``fn`` along ``tangents`` (one per leaf, None for
    no motion) by one central difference: two forward calls, whatever the sizes."""
    base = [t.detach() for t in leaves]
    plus = [b if d is None else b + eps * d for b, d in zip(base, tangents)]
    minus = [b if d is None else b - eps * d for b, d in zip(base, tangents)]
    with torch.no_grad():
        ahead, behind = fn(*plus), fn(*minus)
    return [(a - b) / (2 * eps) for a, b in zip(ahead, behind)]


def inner(grad: Optional[torch.Tensor], direction: torch.Tensor) -> float:
    """``Re(<grad, direction>)``, with a missing gradient counting as zero."""
    if grad is None:
        return 0.0
    return float((grad.conj() * direction).real.sum().item()) if grad.is_complex() else float((grad * direction).sum().item())


@dataclass(frozen=True)
class Mismatch:
    """The worst element of a gradient comparison."""

    index: tuple[int, ...]
    expected: complex | float
    got: complex | float
    abs_err: float
    rel_err: float
    tolerance: Tolerance
    mismatched: int
    total: int
    allowed: float = float("nan")  # the error allowed at the worst element

    def describe(self, expected_from: str, got_from: str) -> str:
        where = f"at index {self.index}" if self.index else "at its only element"
        allowed = f" = {self.allowed:.3g} here" if self.tolerance.atol_scale and self.allowed == self.allowed else ""
        return (
            f"{self.mismatched} of {self.total} element(s) differ; worst {where}: "
            f"expected {_fmt(self.expected)} ({expected_from}), got {_fmt(self.got)} ({got_from}); "
            f"abs err {self.abs_err:.3g}, rel err {self.rel_err:.3g} "
            f"(allowed: {self.tolerance.describe()}{allowed})"
        )


def _fmt(value: complex | float) -> str:
    if isinstance(value, complex):
        return f"{value.real:.6g}{value.imag:+.6g}j"
    return f"{value:.6g}"


def worst_mismatch(got: Optional[torch.Tensor], expected: Optional[torch.Tensor], tol: Tolerance) -> Optional[Mismatch]:
    """The worst element where ``got`` and ``expected`` differ beyond ``tol``, or None when all agree.

    Element ``i`` agrees when ``|got_i - expected_i| <= atol + rtol * |expected_i| + atol_scale * max|expected|``
    (:class:`~pytest_customop.dtypes.Tolerance`; the maximum over the finite elements of ``expected``).

    Missing gradients (None) count as zeros; shapes must agree (validated elsewhere).
    """
    if got is None and expected is None:
        return None
    reference = expected if expected is not None else got
    assert reference is not None
    common = torch.promote_types((got if got is not None else reference).dtype, reference.dtype)
    g = (got if got is not None else torch.zeros_like(reference)).detach().to("cpu", common)
    e = (expected if expected is not None else torch.zeros_like(reference)).detach().to("cpu", common)
    if g.shape != e.shape:
        g = g.expand_as(e) if g.dim() <= e.dim() else g
    diff = (g - e).abs().double()
    magnitude = e.abs().double()
    # The scale term: the largest finite |expected| (an inf or NaN expected must not excuse everything).
    finite = magnitude[torch.isfinite(magnitude)]
    expected_max = float(finite.max().item()) if tol.atol_scale and finite.numel() else 0.0
    allowed = tol.atol + tol.rtol * magnitude + tol.atol_scale * expected_max
    bad = ~(diff <= allowed)  # catches NaN too
    if not bool(bad.any()):
        return None
    # Worst = largest excess over what was allowed (NaN first).
    excess = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff - allowed)
    flat = int(torch.argmax(excess).item())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape)) if e.dim() else ()
    exp_value, got_value = e.reshape(-1)[flat].item(), g.reshape(-1)[flat].item()
    abs_err = float(diff.reshape(-1)[flat].item())
    rel_err = abs_err / abs(exp_value) if exp_value != 0 else float("inf")
    return Mismatch(
        index=index,
        expected=exp_value,
        got=got_value,
        abs_err=abs_err,
        rel_err=rel_err,
        tolerance=tol,
        mismatched=int(bad.sum().item()),
        total=e.numel(),
        allowed=float(allowed.reshape(-1)[flat].item()),
    )
