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
    """Element ``i`` agrees when ``|got_i - expected_i| <= atol + rtol * |expected_i| + atol_scale * max|expected|``.

    ``atol`` is an absolute floor, ``rtol`` relative to the element, ``atol_scale`` relative to the
    largest element of the whole expected tensor: rounding from a different reduction order is of the
    size of the tensor's large elements, so it passes wherever it lands, while a gradient collapsed to
    zeros (or to a fraction of its size) misses by about ``max|expected|`` and fails however small its
    elements are. With ``atol_scale=0`` this is ``torch.allclose``.
    """

    atol: float
    rtol: float
    atol_scale: float = 0.0

    def allowed(self, expected_abs: float, expected_max: float) -> float:
        """The error allowed at an element of size ``expected_abs`` in a tensor whose largest is ``expected_max``."""
        return self.atol + self.rtol * expected_abs + self.atol_scale * expected_max

    def describe(self) -> str:
        """The rule in words, as failure messages state it."""
        scale = f" + {self.atol_scale:g} * max|expected|" if self.atol_scale else ""
        return f"atol {self.atol:g} + rtol {self.rtol:g} * |expected|{scale}"


# float64/complex128 items compare with finite differences (torch.autograd.gradcheck, with its own
# defaults): their error is absolute (the loss's rounding over the step), so no scale term.
# The lower precisions compare with gradients computed at a higher precision on the same input values:
# the error allowed is the op's own rounding. rtol and atol_scale are ~840 ulps for float32 (a sum of
# 10^4 float32 terms in any order stays ~100x inside), ~10 ulps for float16 and ~6 for bfloat16 (whose
# kernels accumulate in float32); the floor is far below the gradients tests use, so a gradient of
# elements all under 1e-2 that collapses to zeros still fails.
_TOLERANCES = {
    torch.float64: Tolerance(atol=1e-5, rtol=1e-3, atol_scale=0.0),
    torch.complex128: Tolerance(atol=1e-5, rtol=1e-3, atol_scale=0.0),
    torch.float32: Tolerance(atol=1e-6, rtol=1e-4, atol_scale=1e-4),
    torch.complex64: Tolerance(atol=1e-6, rtol=1e-4, atol_scale=1e-4),
    torch.float16: Tolerance(atol=1e-5, rtol=1e-2, atol_scale=1e-2),
    torch.bfloat16: Tolerance(atol=1e-5, rtol=5e-2, atol_scale=5e-2),
}


def default_tolerance(dtype: torch.dtype) -> Tolerance:
    """The documented default tolerance for gradients computed at ``dtype``."""
    if dtype in _TOLERANCES:
        return _TOLERANCES[dtype]
    # float8 and other narrow types: the loosest we have.
    return _TOLERANCES[torch.bfloat16]


@functools.cache  # dir(torch) costs ~10 ms; parse_dtype runs per marker dtype
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
