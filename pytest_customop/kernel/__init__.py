"""The plugin's own autograd kernel, by concern:

- :mod:`.generated_kernel`: the op under test behind a generated ``autograd.Function``
  (:class:`GradientCheckingKernel`, :func:`kernel_for`, :func:`call_through_kernel`);
- :mod:`.grad_validation`: what a backward must return and the problems with what it returned;
- :mod:`.backward_source`: finding the op's registered backward;
- :mod:`.pytree`: flattening nested values (saved for backward, inputs, outputs).

The names below are re-exported so ``pytest_customop.kernel.GradientValidationError`` keeps working.
"""

from __future__ import annotations

from .backward_source import BackwardSource, find_backward
from .generated_kernel import GradientCheckingKernel, call_through_kernel, kernel_for
from .grad_validation import (
    GradientProblem,
    GradientValidationError,
    InputDescription,
    TensorMeta,
    describe_inputs,
    dict_to_positional,
    positional_to_dict,
    tensor_problems,
    validate_dict_keys,
    validate_gradients,
)
from .pytree import save_pytree, unpack_pytree

__all__ = [
    "BackwardSource",
    "GradientCheckingKernel",
    "GradientProblem",
    "GradientValidationError",
    "InputDescription",
    "TensorMeta",
    "describe_inputs",
    "dict_to_positional",
    "call_through_kernel",
    "find_backward",
    "kernel_for",
    "positional_to_dict",
    "save_pytree",
    "tensor_problems",
    "unpack_pytree",
    "validate_dict_keys",
    "validate_gradients",
]
