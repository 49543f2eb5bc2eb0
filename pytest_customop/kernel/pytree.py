"""Flattening the nested values a custom op takes, returns and saves for backward. No pytest here."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["save_pytree", "unpack_pytree"]


def _flatten(result: Any) -> list[Any]:
    if isinstance(result, (list, tuple)):
        return [leaf for item in result for leaf in _flatten(item)]
    return [result]


def save_pytree(ctx: Any, value: Any) -> None:
    """Save any nesting of tensors and other values on ``ctx`` (tensors through
    ``ctx.save_for_backward``), as the legacy kernel did; :func:`unpack_pytree` gives it back."""
    from torch.utils import _pytree as pytree

    flat, spec = pytree.tree_flatten(value)
    is_tensor = [isinstance(v, torch.Tensor) for v in flat]
    ctx.save_for_backward(*[v for v, t in zip(flat, is_tensor) if t])
    ctx._customop_saved = (spec, [None if t else v for v, t in zip(flat, is_tensor)], is_tensor)


def unpack_pytree(ctx: Any) -> Any:
    """What :func:`save_pytree` saved."""
    from torch.utils import _pytree as pytree

    spec, others, is_tensor = ctx._customop_saved
    tensors = iter(ctx.saved_tensors)
    return pytree.tree_unflatten([next(tensors) if t else v for v, t in zip(others, is_tensor)], spec)
