"""Samples derived from an op's schema, for markers that give no ``samples=`` and for discovered ops.

For tensor arguments: small random tensors, first all of one shape, then broadcasting variants; for
``Tensor[]`` lists of two or three tensors; for ``Tensor?`` both a tensor and ``None``; for scalars the
schema's default where it has one, else a typical value. Values stay away from zero (magnitudes in
[0.5, 2]) so division, ``abs`` or ``log`` of a near-zero value does not make finite differences
meaningless.

Every derived sample is first run forward once, without gradients: a sample the op rejects (it raises,
or returns NaN or infinity) is dropped, and when it rejects them all the item says so instead of failing
with the op's own error (:class:`NoUsableSamples`). No pytest here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from .dtypes import is_differentiable_dtype
from .ops import ArgInfo, ArgKind, ResolvedOp
from .samples import SampleInput

__all__ = [
    "DerivedSamples",
    "NoUsableSamples",
    "UnderivableArgument",
    "derive_samples",
    "probe_samples",
    "usable_derived_samples",
]

#: The shape every tensor argument gets in the first variants.
BASE_SHAPE = (2, 3)

#: Broadcasting variants: (shape of the first tensor argument, shape of every other one).
BROADCAST_SHAPES = (
    ((2, 3), (3,)),
    ((3,), (2, 3)),
    ((2, 1), (1, 3)),
)

# Typical values of scalar arguments without a default, by schema type.
_TYPICAL = {
    "int": 1,
    "SymInt": 1,
    "float": 0.5,
    "number": 0.5,  # Scalar
    "bool": False,
    "List[int]": [1],
    "List[SymInt]": [1],
    "List[float]": [0.5],
    "List[bool]": [False],
}


class UnderivableArgument(ValueError):
    """An argument has neither a default nor a type the plugin can give a typical value for."""


class NoUsableSamples(Exception):
    """No derived sample can be used for this op; the message says why and how to give samples."""


def _how_to_give_samples(op: ResolvedOp) -> str:
    function = getattr(op, "function", None)  # an autograd.Function is named by its class, not a string
    target = function.__name__ if function is not None else repr(op.name)
    return (
        f"give the op inputs it accepts: @pytest.mark.customop({target}, samples=my_samples), where "
        "my_samples(device, dtype, requires_grad) yields pytest_customop.SampleInput(...)"
    )


def _typical_value(info: ArgInfo, op: ResolvedOp, device: str, dtype: torch.dtype) -> Any:
    if info.type.startswith("Optional["):
        return None
    if info.type == "Device":
        return torch.device(device)
    if info.type in _TYPICAL:
        value = _TYPICAL[info.type]
        return list(value) if isinstance(value, list) else value
    raise UnderivableArgument(
        f"{op.name}: argument {info.name!r} ({info.type}) has no default and no typical value to derive; "
        + _how_to_give_samples(op)
    )


def _random_tensor(shape: Sequence[int], device: str, dtype: torch.dtype, requires_grad: bool, positive: bool) -> torch.Tensor:
    if is_differentiable_dtype(dtype):
        magnitude = torch.rand(shape, dtype=torch.float64) * 1.5 + 0.5
        if not positive:
            magnitude = magnitude * (torch.randint(0, 2, shape) * 2 - 1)
        values = magnitude
        if dtype.is_complex:
            values = torch.complex(magnitude, torch.rand(shape, dtype=torch.float64) * 1.5 + 0.5)
        tensor = values.to(device=device, dtype=dtype)
        return tensor.requires_grad_(requires_grad)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.randint(1, 4, shape, dtype=dtype, device=device)


@dataclass(frozen=True)
class _Variant:
    name: str
    first_shape: tuple[int, ...]
    other_shape: tuple[int, ...]
    positive: bool = False
    list_length: int = 2
    optional_tensors: bool = True  # False: every Tensor? argument is None


class DerivedSamples:
    """``samples(device, dtype, requires_grad)`` built from ``op``'s schema (see the module docstring).

    Each :class:`SampleInput` is named after its variant, e.g. ``"derived: broadcast [2, 3] with [3]"``.
    Raises :class:`UnderivableArgument` when an argument has no default and no typical value.
    """

    def __init__(self, op: ResolvedOp) -> None:
        self.op = op

    def __repr__(self) -> str:
        return f"<samples derived from the schema of {self.op.name}>"

    @property
    def __name__(self) -> str:  # shown where a samples function's name is shown
        return "derived_samples"

    def variants(self) -> list[_Variant]:
        """The variants that make sense for this schema, in the order they are tried."""
        arguments = self.op.arguments
        tensors = [a for a in arguments if a.kind.is_tensor_like]
        has_optional = any(a.kind is ArgKind.OPTIONAL_TENSOR for a in tensors)
        has_list = any(a.kind.is_list for a in tensors)
        shape = list(BASE_SHAPE)
        variants = [_Variant(f"derived: every tensor {shape}", BASE_SHAPE, BASE_SHAPE)]
        variants.append(
            _Variant(
                f"derived: every tensor {shape}, positive values" + (", lists of 3" if has_list else ""),
                BASE_SHAPE,
                BASE_SHAPE,
                positive=True,
                list_length=3,
            )
        )
        if has_optional:
            variants.append(
                _Variant(f"derived: every tensor {shape}, optional tensors None", BASE_SHAPE, BASE_SHAPE, optional_tensors=False)
            )
        if len(tensors) >= 2:
            for first, other in BROADCAST_SHAPES:
                variants.append(_Variant(f"derived: broadcast {list(first)} with {list(other)}", first, other, positive=True))
        return variants

    def __call__(self, device: str, dtype: torch.dtype, requires_grad: bool) -> Iterator[SampleInput]:
        for variant in self.variants():
            yield self._sample(variant, device, dtype, requires_grad)

    def _sample(self, variant: _Variant, device: str, dtype: torch.dtype, requires_grad: bool) -> SampleInput:
        def tensor(shape: Sequence[int]) -> torch.Tensor:
            return _random_tensor(shape, device, dtype, requires_grad, variant.positive)

        values: dict[str, Any] = {}
        seen_tensor = False
        for info in self.op.arguments:
            shape = variant.other_shape if seen_tensor else variant.first_shape
            if info.kind is ArgKind.TENSOR:
                values[info.name] = tensor(shape)
                seen_tensor = True
            elif info.kind is ArgKind.OPTIONAL_TENSOR:
                if variant.optional_tensors:
                    values[info.name] = tensor(shape)
                    seen_tensor = True
                elif not info.has_default:
                    values[info.name] = None
            elif info.kind.is_list:
                values[info.name] = [tensor(shape) for _ in range(variant.list_length)]
                seen_tensor = True
            elif not info.has_default:
                values[info.name] = _typical_value(info, self.op, device, dtype)
        # Positional up to the first argument left to its default; the rest by name.
        args: list[Any] = []
        for info in self.op.arguments:
            if info.kwarg_only or info.name not in values:
                break
            args.append(values.pop(info.name))
        return SampleInput(*args, sample_name=variant.name, **values)


def derive_samples(op: ResolvedOp) -> DerivedSamples:
    """The samples callable derived from ``op``'s schema."""
    return DerivedSamples(op)


def _all_finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            return bool(torch.isfinite(value).all())
        return True
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def probe_samples(op: ResolvedOp, samples: Sequence[SampleInput]) -> tuple[list[SampleInput], list[str]]:
    """Run ``op`` forward once on each sample (no gradients): the samples it accepts, and for each
    rejected one a line saying why (the op raised, or returned NaN or infinity)."""
    accepted, rejections = [], []
    for sample in samples:
        try:
            with torch.no_grad():
                result = op.call_bound(op.bind(sample.map(lambda t: t.detach().clone())))
        except Exception as exc:  # the op's own error: it is why the sample is rejected
            rejections.append(f"{sample.name or 'sample'}: {_one_line(exc)}")
            continue
        if not _all_finite(result):
            rejections.append(f"{sample.name or 'sample'}: the op returned NaN or infinity")
            continue
        accepted.append(sample)
    return accepted, rejections


def usable_derived_samples(op: ResolvedOp, device: str, dtype: torch.dtype, requires_grad: bool) -> list[SampleInput]:
    """The derived samples ``op`` accepts at ``device`` and ``dtype``.

    Raises :class:`NoUsableSamples` when an argument cannot be derived or the op rejects every sample;
    its message names the op's first error and how to give ``samples=``.
    """
    try:
        samples = list(derive_samples(op)(device, dtype, requires_grad))
    except UnderivableArgument as exc:
        raise NoUsableSamples(f"no samples could be derived from the schema: {exc}") from None
    accepted, rejections = probe_samples(op, samples)
    if not accepted:
        raise NoUsableSamples(
            f"{op.name} rejected every sample derived from its schema ({len(samples)} tried; first: "
            f"{rejections[0]}); {_how_to_give_samples(op)}"
        )
    return accepted
