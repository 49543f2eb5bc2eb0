"""Finding a custom op's registered backward (:func:`find_backward`): on its ``CustomOpDef``, on a legacy
``CustomOp``, or, for ``Library.define`` ops given ``register_autograd``, in the closure of the
``autograd.Function`` torch generated for it. No pytest here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..ops import RegistrationStyle, ResolvedOp
from .pytree import _flatten

__all__ = ["BackwardSource", "find_backward"]


@dataclass(frozen=True)
class BackwardSource:
    """The op's registered backward, as found.

    ``style``: ``"register_autograd"`` (``setup_context`` / ``backward``), ``"legacy"``
    (``save_for_backward`` / a dict-returning ``backward``), ``"opaque"`` (not visible to Python: a C++
    autograd kernel, ``CompositeImplicitAutograd``, an ``autograd.Function`` registered by hand) or
    ``"none"`` (no backward is registered).
    """

    style: str
    backward: Optional[Callable[..., Any]] = None
    setup_context: Optional[Callable[..., Any]] = None  # legacy: save_for_backward
    output_differentiability: Optional[Sequence[bool]] = None  # legacy only
    detail: str = ""

    @property
    def is_python(self) -> bool:
        return self.style in ("register_autograd", "legacy")

    def describe(self) -> str:
        """``bw (test_ops.py:12), registered with torch.library.register_autograd``."""
        fn = self.backward
        if fn is None:
            return self.detail
        user = getattr(fn, "__customop_dict_backward__", None)
        shown = _where(user or fn)
        how = {
            "register_autograd": "registered with register_autograd",
            "legacy": "legacy torch._custom_ops impl_backward",
        }[self.style]
        if user is not None:
            how = "registered with pytest_customop.register_dict_backward"
        return f"{shown}, {how}"


def _where(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        path = inspect.getsourcefile(fn) or "?"
        line = inspect.getsourcelines(fn)[1]
    except (TypeError, OSError):
        return name
    return f"{name} ({path.rsplit('/', 1)[-1]}:{line})"


def _find_info(fn: Any, depth: int = 0) -> Any:
    """The ``info`` object (``_backward_fn``, ``_setup_context_fn``) a ``make_autograd_impl`` kernel
    closes over, searched through nested closures (``supports_tensorlist`` wraps it once more)."""
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # empty cell
            continue
        if hasattr(value, "_backward_fn") and hasattr(value, "_setup_context_fn"):
            return value
        if depth < 4 and inspect.isfunction(value):
            found = _find_info(value, depth + 1)
            if found is not None:
                return found
    return None


def _opaque_reason(op: ResolvedOp, grad_fn: Any) -> str:
    has = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
    node = type(grad_fn).__name__ if grad_fn is not None else "no grad_fn"
    if has is not None and has(op.qualname if op.overload_name == "default" else op.name, "CompositeImplicitAutograd"):
        return f"{op.name} is CompositeImplicitAutograd: its gradient comes from the ops it calls (grad_fn {node})"
    forward_cls = getattr(grad_fn, "_forward_cls", None)
    if forward_cls is not None:
        return f"{op.name}'s autograd kernel is the autograd.Function {forward_cls.__qualname__}, not register_autograd"
    return f"{op.name} has an autograd kernel Python cannot see into (C++; grad_fn {node})"


def find_backward(op: ResolvedOp, probe: Optional[Mapping[str, Any]] = None) -> BackwardSource:
    """Find the op's registered backward.

    ``torch.library.custom_op`` ops keep it on their ``CustomOpDef``, legacy ops on their ``CustomOp``.
    ``Library.define`` ops registered with ``torch.library.register_autograd`` keep it nowhere but in
    the closure of the kernel torch generated: ``probe`` (bound arguments with an input that requires
    grad) is run forward to reach it through its ``grad_fn``. Without a probe such ops are opaque.
    """
    if op.is_mutable:
        return BackwardSource("opaque", detail=f"{op.name} mutates its inputs: torch registers no backward for such ops")
    definition = op.custom_op_def
    if definition is not None and op.registration is RegistrationStyle.CUSTOM_OP:
        backward = getattr(definition, "_backward_fn", None)
        if backward is None:
            return BackwardSource("none", detail=f"{op.name} has no backward (register one with register_autograd)")
        return BackwardSource("register_autograd", backward, getattr(definition, "_setup_context_fn", None))
    legacy = op.legacy_op
    if legacy is not None:
        has_impl = getattr(legacy, "_has_impl", lambda kind: False)
        if has_impl("backward") and has_impl("save_for_backward"):
            return BackwardSource(
                "legacy",
                legacy._get_impl("backward").func,
                legacy._get_impl("save_for_backward").func,
                output_differentiability=getattr(legacy, "_output_differentiability", None),
            )
        return BackwardSource("none", detail=f"{op.name} has no impl_backward/impl_save_for_backward")
    if probe is None:
        return BackwardSource("opaque", detail=f"{op.name}: no sample with an input requiring grad to look for its backward")
    with torch.enable_grad():
        outputs = _flatten(op.call_bound(dict(probe)))
    grad_fn = next((o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None), None)
    forward_cls = getattr(grad_fn, "_forward_cls", None)
    info = _find_info(getattr(forward_cls, "backward", None)) if forward_cls is not None else None
    if info is not None and forward_cls.__name__.startswith("GeneratedBackwardFor_"):
        if info._backward_fn is None:
            return BackwardSource("none", detail=f"{op.name} has no backward (register one with register_autograd)")
        return BackwardSource("register_autograd", info._backward_fn, info._setup_context_fn)
    if grad_fn is None:
        return BackwardSource("opaque", detail=f"no output of {op.name} requires grad: it has no autograd kernel")
    return BackwardSource("opaque", detail=_opaque_reason(op, grad_fn))
