"""Moving off the legacy ``torch._custom_ops`` API: keep a backward that returns a dict keyed by input
name (the legacy contract) on a modern ``torch.library`` op, with the legacy API's validation.

See docs/migrating-from-legacy.md for a before/after example.
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, Callable, Optional

from .kernel.grad_validation import (
    GradientValidationError,
    describe_inputs,
    dict_to_positional,
    validate_dict_keys,
    validate_gradients,
)
from .kernel.pytree import save_pytree, unpack_pytree
from .ops import resolve_op

__all__ = ["register_dict_backward"]


def register_dict_backward(
    op: Any,
    backward: Callable[..., dict],
    *,
    save_for_backward: Optional[Callable[[Any, Any], Any]] = None,
    setup_context: Optional[Callable[..., None]] = None,
    lib: Any = None,
) -> None:
    """Register ``backward``, which returns a dict ``{input name: gradient or None}``, as the autograd
    formula of the modern op ``op`` (a ``torch.library.custom_op`` object, a ``"ns::name"`` string or
    an ``OpOverload`` of a ``Library.define`` op), through ``torch.library.register_autograd``.

    Two ways to save what backward needs:

    - ``save_for_backward(inputs, output) -> saved`` (the legacy contract, unchanged): ``inputs`` is a
      namedtuple of the op's arguments by name; ``saved`` is any nesting of tensors and values, handed
      back as ``backward(ctx, saved, *grads)``.
    - ``setup_context(ctx, inputs, output)`` (``register_autograd``'s; with ``keyword_only_inputs`` when
      the op has keyword-only arguments): then ``backward(ctx, *grads)``.

    On every backward the dict is checked as the legacy API did and more: exactly one key per
    tensor-like input (None allowed), no key for a non-tensor argument, a list of the input's length
    for a ``Tensor[]``, and each gradient with its input's shape, dtype, device and layout. A problem
    raises :class:`pytest_customop.kernel.GradientValidationError` naming the op and the input; the
    dict is then turned into the tuple ``register_autograd`` expects.
    """
    if save_for_backward is not None and setup_context is not None:
        raise TypeError("register_dict_backward: give save_for_backward (legacy) or setup_context, not both")
    resolved = resolve_op(op)
    name = resolved.name
    arguments = resolved.arguments
    positional = [a for a in arguments if not a.kwarg_only]
    has_kwarg_only = len(positional) != len(arguments)
    inputs_tuple = namedtuple(f"{resolved.qualname.split('::')[-1]}_args", [a.name for a in arguments])  # type: ignore[misc]

    def dict_setup_context(ctx: Any, inputs: tuple, output: Any, keyword_only_inputs: Optional[dict] = None) -> None:
        bound = dict(zip((a.name for a in positional), inputs))
        bound.update(keyword_only_inputs or {})
        ctx._customop_inputs = describe_inputs(arguments, bound)  # metadata only, for validation
        if save_for_backward is not None:
            save_pytree(ctx, save_for_backward(inputs_tuple(*(bound.get(a.name) for a in arguments)), output))
        elif setup_context is not None:
            if has_kwarg_only:
                setup_context(ctx=ctx, inputs=inputs, keyword_only_inputs=keyword_only_inputs, output=output)
            else:
                setup_context(ctx=ctx, inputs=inputs, output=output)

    def dict_backward(ctx: Any, *grads: Any) -> tuple:
        if save_for_backward is not None:
            result = backward(ctx, unpack_pytree(ctx), *grads)
        else:
            result = backward(ctx, *grads)
        problems = validate_dict_keys(name, arguments, result)
        by_name = dict(result) if isinstance(result, dict) else {}
        described = getattr(ctx, "_customop_inputs", None)
        if described is not None:
            # a broadcast-reducible gradient is the engine's to sum down (grad_keys notes it)
            problems += [p for p in validate_gradients(name, described, by_name) if not p.reducible]
        if problems:
            raise GradientValidationError(name, problems, getattr(backward, "__qualname__", repr(backward)))
        return dict_to_positional(positional, by_name)

    dict_backward.__customop_dict_backward__ = backward  # type: ignore[attr-defined]
    dict_backward.__qualname__ = f"register_dict_backward({getattr(backward, '__qualname__', backward)})"
    import torch

    target = resolved.custom_op_def if resolved.custom_op_def is not None else resolved.name
    if lib is not None:
        torch.library.register_autograd(target, dict_backward, setup_context=dict_setup_context, lib=lib)
    else:
        torch.library.register_autograd(target, dict_backward, setup_context=dict_setup_context)
