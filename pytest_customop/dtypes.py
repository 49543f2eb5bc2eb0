"""Dtypes: parsing marker values, readable ids, and the tolerances each dtype is checked under."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "DEFAULT_DTYPES",
    "Tolerance",
    "default_tolerance",
    "dtype_id",
    "is_differentiable_dtype",
    "is_reference_precision",
    "parse_dtype",
    "reference_dtype",
]

#: Dtypes checked when the marker names none: the two where gradcheck is exact, and float32.
DEFAULT_DTYPES = (torch.float64, torch.float32)


@dataclass(frozen=True)
class Tolerance:
    """``|got - expected| <= atol + rtol * |expected|``, element by element (``torch.allclose``)."""

    atol: float
    rtol: float


# float64/complex128 run torch.autograd.gradcheck, with its own defaults. The lower precisions compare
# the op's gradients at that dtype with float64 gradients of the same (already rounded) inputs, so the
# only error allowed for is the op's own rounding: a few ulps per step of the computation.
_TOLERANCES = {
    torch.float64: Tolerance(atol=1e-5, rtol=1e-3),
    torch.complex128: Tolerance(atol=1e-5, rtol=1e-3),
    torch.float32: Tolerance(atol=1e-4, rtol=1e-4),
    torch.complex64: Tolerance(atol=1e-4, rtol=1e-4),
    torch.float16: Tolerance(atol=1e-2, rtol=1e-2),
    torch.bfloat16: Tolerance(atol=5e-2, rtol=5e-2),
}


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """The documented default tolerance for gradients computed at ``dtype``."""
    if dtype in _TOLERANCES:
        return _TOLERANCES[dtype]
    # float8 and other narrow types: the loosest we have.
    return _TOLERANCES[torch.bfloat16]


@functools.lru_cache(maxsize=None)  # dir(torch) costs ~10 ms; parse_dtype runs per marker dtype
def _known_dtypes() -> dict[str, torch.dtype]:
    names = {}
    for name in dir(torch):
        value = getattr(torch, name, None)
        if isinstance(value, torch.dtype):
            names[name] = value
    return names


_INTEGRAL = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def parse_dtype(value: Any) -> torch.dtype:
    """A ``torch.dtype`` from a dtype or its name (``"float64"``, ``"torch.float64"``, ``"double"``).

    Raises ValueError naming what is allowed.
    """
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        known = _known_dtypes()
        name = value.strip().removeprefix("torch.")
        if name in known:
            return known[name]
        allowed = ", ".join(
            sorted({dtype_id(d) for d in known.values() if d.is_floating_point or d.is_complex or d in _INTEGRAL})
        )
        raise ValueError(f"unknown dtype {value!r}; allowed: torch dtypes or their names ({allowed})")
    raise ValueError(f"expected a torch.dtype or its name, got {type(value).__name__} {value!r}")


def dtype_id(dtype: torch.dtype) -> str:
    """``torch.float64`` -> ``"float64"``: the form used in test ids and reports."""
    return str(dtype).removeprefix("torch.")


def is_differentiable_dtype(dtype: torch.dtype) -> bool:
    """Floating point and complex tensors can require grad; integer and bool ones cannot."""
    return dtype.is_floating_point or dtype.is_complex


def is_reference_precision(dtype: torch.dtype) -> bool:
    """float64 and complex128: where gradcheck's finite differences are meaningful."""
    return dtype in (torch.float64, torch.complex128)


def reference_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a lower-precision gradient is compared against."""
    return torch.complex128 if dtype.is_complex else torch.float64
