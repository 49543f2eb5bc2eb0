"""Every use the plugin makes of torch's private corners, in one place.

torch gives no public way to read a custom op's registered backward, to ask the dispatcher which
kernels an op has, or to stop a failing fast-mode gradcheck from recomputing the full Jacobian. The
plugin reads torch's internals for these; each use below says which torch versions it was checked on
(``tests/test_torch_internals.py`` proves, on the torch it runs on, that each one still reaches what it
reads, and ``.ci/run`` runs that test on the oldest supported torch and the newest) and what the plugin
does when the internal is gone (the fallback). Nothing outside this module reads a private torch name.

Checked on: torch 2.4.1, 2.13.0 and 2.15.0 (CPU).
"""

from __future__ import annotations

import contextlib
import inspect
import sys
import traceback
from typing import Any, Callable, Iterator, Optional

import torch

__all__ = [
    "OpOverload",
    "OpOverloadPacket",
    "all_op_names",
    "autograd_function_class",
    "below_autograd",
    "custom_op_backward",
    "custom_op_defs",
    "custom_op_setup_context",
    "custom_op_vmap_rule",
    "dynamo_unsupported_reason",
    "fake_tensor_mode",
    "generated_backward_info",
    "has_kernel",
    "legacy_custom_ops",
    "legacy_impl",
    "legacy_output_differentiability",
    "make_undefined_grad",
    "op_object_name",
    "overload_schema",
    "raised_in_finite_differences",
    "replaced_slow_mode_error",
    "reset_compiled",
    "transforming",
    "tree_flatten",
    "tree_unflatten",
    "vmap_fallback_warning_disabled",
]

# -- op objects ------------------------------------------------------------------------------------------
# torch._ops.OpOverload / OpOverloadPacket: what torch.ops.ns.op(.overload) are. Checked on 2.4.1-2.15.
# No fallback: they are the dispatcher's op objects, as old as torch.ops.
OpOverload = torch._ops.OpOverload
OpOverloadPacket = torch._ops.OpOverloadPacket


def op_object_name(op: Any) -> Optional[str]:
    """``ns::op.overload`` (an OpOverload) or ``ns::op`` (the others) of a torch op object, None for
    anything else: an ``OpOverload`` (``_schema.name``, ``_overloadname``), an ``OpOverloadPacket``
    (``_qualified_op_name``), a ``CustomOpDef`` (``_opoverload``) or a legacy ``CustomOp``
    (``_qualname``). Checked on 2.4.1-2.15. Fallback: None (the marker's op is then refused with a
    message naming the forms accepted)."""
    if isinstance(op, OpOverload):
        return f"{op._schema.name}.{op._overloadname}"
    if isinstance(op, OpOverloadPacket):
        return op._qualified_op_name
    opoverload = getattr(op, "_opoverload", None)  # CustomOpDef
    if isinstance(opoverload, OpOverload):
        return op_object_name(opoverload)
    legacy_qualname = getattr(op, "_qualname", None)  # torch._custom_op.impl.CustomOp
    if isinstance(legacy_qualname, str) and "::" in legacy_qualname:
        return legacy_qualname
    return None


def overload_schema(overload: Any) -> Any:
    """The ``FunctionSchema`` of an ``OpOverload`` (``OpOverload._schema``). Checked on 2.4.1-2.15. No
    fallback: everything the plugin derives starts from the schema."""
    return overload._schema


def autograd_function_class(grad_fn: Any) -> Optional[type]:
    """The ``autograd.Function`` class behind a ``grad_fn`` node (``_forward_cls``), None for a C++
    node. Checked on 2.4.1-2.15. Fallback: None (described as a C++ autograd kernel)."""
    return getattr(grad_fn, "_forward_cls", None)


def all_op_names() -> list[str]:
    """Every op registered with the dispatcher, ``ns::op`` or ``ns::op.overload``.

    ``torch._C._dispatch_get_all_op_names``, checked on 2.4.1-2.15. Fallback: no op (namespace
    discovery then finds none and says how to load the library)."""
    get = getattr(torch._C, "_dispatch_get_all_op_names", None)
    return list(get()) if get is not None else []


def has_kernel(name: str, dispatch_key: str) -> bool:
    """Whether op ``name`` has a kernel registered at ``dispatch_key`` (``"FuncTorchBatched"``,
    ``"AutogradCPU"``, ``"CompositeImplicitAutograd"``...).

    ``torch._C._dispatch_has_kernel_for_dispatch_key``, checked on 2.4.1-2.15. Fallback: False (a key
    this build does not know, or no such query)."""
    query = getattr(torch._C, "_dispatch_has_kernel_for_dispatch_key", None)
    if query is None:
        return False
    try:
        return bool(query(name, dispatch_key))
    except RuntimeError:  # a dispatch key this torch build does not know
        return False


# -- torch.library.custom_op ops (CustomOpDef) ------------------------------------------------------------
def custom_op_defs() -> dict[str, Any]:
    """The ``CustomOpDef`` of every ``torch.library.custom_op`` op, by ``ns::op``.

    ``torch._library.custom_ops.OPDEFS``, checked on 2.4.1-2.15. Fallback: none known (such ops are
    then treated as ``Library.define`` ops, their backward found through a probe)."""
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:
        return {}
    return OPDEFS


def custom_op_backward(definition: Any) -> Optional[Callable[..., Any]]:
    """The backward given to ``register_autograd`` (``CustomOpDef._backward_fn``), None when none is.
    Checked on 2.4.1-2.15. Fallback: None (no backward)."""
    return getattr(definition, "_backward_fn", None)


def custom_op_setup_context(definition: Any) -> Optional[Callable[..., Any]]:
    """The ``setup_context`` given to ``register_autograd`` (``CustomOpDef._setup_context_fn``).
    Checked on 2.4.1-2.15. Fallback: None (backward then sees a ctx without saved values)."""
    return getattr(definition, "_setup_context_fn", None)


def custom_op_vmap_rule(definition: Any) -> Optional[Callable[..., Any]]:
    """The rule given to ``register_vmap`` (``CustomOpDef._vmap_fn``; ``register_vmap`` exists from
    torch 2.5, the attribute is absent on 2.4). Checked on 2.4.1-2.15. Fallback: None (no vmap rule,
    unless the dispatcher has a FuncTorchBatched kernel)."""
    return getattr(definition, "_vmap_fn", None)


def generated_backward_info(grad_fn: Any) -> Optional[Any]:
    """For an output of a ``Library.define`` op given ``torch.library.register_autograd``: the object
    holding its ``_backward_fn`` and ``_setup_context_fn``, which torch keeps nowhere but in the closure
    of the ``autograd.Function`` it generated (``GeneratedBackwardFor_<ns>_<op>_<overload>``, built by
    ``torch._library.autograd.make_autograd_impl``). Checked on 2.4.1-2.15. Fallback: None (the op's
    backward is then reported as opaque to Python, and ``grad_keys`` checks what it can see)."""
    forward_cls = autograd_function_class(grad_fn)
    if forward_cls is None or not forward_cls.__name__.startswith("GeneratedBackwardFor_"):
        return None
    return _find_info(getattr(forward_cls, "backward", None))


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


# -- legacy torch._custom_ops ops (CustomOp) ---------------------------------------------------------------
def legacy_custom_ops() -> dict[str, Any]:
    """The legacy ``CustomOp`` objects, by ``ns::op``.

    ``torch._custom_op.impl.global_registry``, checked on 2.4.1-2.15. Fallback: none known (legacy
    ops then resolve as ``Library.define`` ops)."""
    try:
        from torch._custom_op.impl import global_registry
    except ImportError:
        return {}
    return global_registry


def legacy_impl(legacy_op: Any, kind: str) -> Optional[Callable[..., Any]]:
    """The function a legacy op registered with ``impl_<kind>`` (``"backward"``,
    ``"save_for_backward"``): ``CustomOp._has_impl`` / ``_get_impl(kind).func``. Checked on
    2.4.1-2.15. Fallback: None (not registered)."""
    has_impl = getattr(legacy_op, "_has_impl", None)
    if has_impl is None or not has_impl(kind):
        return None
    return legacy_op._get_impl(kind).func


def legacy_output_differentiability(legacy_op: Any) -> Optional[Any]:
    """``impl_backward``'s ``output_differentiability`` (``CustomOp._output_differentiability``).
    Checked on 2.4.1-2.15. Fallback: None (every output differentiable)."""
    return getattr(legacy_op, "_output_differentiability", None)


# -- autograd and transforms -------------------------------------------------------------------------------
@contextlib.contextmanager
def below_autograd() -> Iterator[None]:
    """Run ops below the Autograd dispatch key, as a generated ``autograd.Function``'s forward does.

    ``torch._C._AutoDispatchBelowAutograd``, checked on 2.4.1-2.15. Fallback: ``torch.no_grad()``."""
    below = getattr(torch._C, "_AutoDispatchBelowAutograd", None)
    with below() if below is not None else torch.no_grad():
        yield


def transforming() -> bool:
    """True under torch.func transforms (``torch._C._functorch.peek_interpreter_stack``, checked on
    2.4.1-2.15; fallback: not transforming) or torch.compile tracing (public
    ``torch.compiler.is_compiling``)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", lambda: False)():
        return True
    try:
        from torch._C._functorch import peek_interpreter_stack
    except ImportError:
        return False
    return peek_interpreter_stack() is not None


def make_undefined_grad() -> Optional[Callable[[], Any]]:
    """``torch._C._functions.UndefinedGrad``: a function whose output's gradient is undefined (what
    torch's own ``check_undefined_grad`` uses). Checked on 2.4.1-2.15. Fallback: None (the
    undefined-grad probe of gradcheck is skipped)."""
    return getattr(getattr(torch._C, "_functions", None), "UndefinedGrad", None)


@contextlib.contextmanager
def vmap_fallback_warning_disabled() -> Iterator[None]:
    """Silence vmap's C++ "performance drop" fallback warning
    (``torch._C._functorch._set_vmap_fallback_warning_enabled``). Checked on 2.4.1-2.15. Fallback:
    the warning is left on (the Python side is filtered by the caller)."""
    setter = getattr(getattr(torch._C, "_functorch", None), "_set_vmap_fallback_warning_enabled", None)
    if setter is not None:
        setter(False)
    try:
        yield
    finally:
        if setter is not None:
            setter(True)


def raised_in_finite_differences(exc: BaseException) -> bool:
    """Whether ``exc`` came out of ``torch.autograd.gradcheck``/``gradgradcheck`` while they evaluated the
    function on inputs moved by ``eps`` (their numerical Jacobian: the frames of
    ``torch/autograd/gradcheck.py`` named ``*numerical*``), not out of the backward. Checked on 2.13.0, slow
    and fast mode. Fallback: False (the error is then reported as the backward's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return any(
        "numerical" in frame.name
        for frame in frames
        if frame.filename.endswith(("autograd/gradcheck.py", "autograd\\gradcheck.py"))
    )


@contextlib.contextmanager
def replaced_slow_mode_error(replacement: Callable[..., str]) -> Iterator[None]:
    """Replace ``torch.autograd.gradcheck._run_slow_mode_and_get_error``, which a failing fast-mode
    gradcheck calls to recompute the full Jacobian for its message. Checked on 2.4.1-2.15. Fallback:
    nothing replaced (the recompute happens, slowly, and the result is the same)."""
    module: Any = sys.modules.get("torch.autograd.gradcheck")
    original = getattr(module, "_run_slow_mode_and_get_error", None)
    if original is None:
        yield
        return
    module._run_slow_mode_and_get_error = replacement
    try:
        yield
    finally:
        module._run_slow_mode_and_get_error = original


def fake_tensor_mode(**options: Any) -> Any:
    """A new ``torch._subclasses.fake_tensor.FakeTensorMode`` (what opcheck and torch.compile run an
    op's fake kernel under). Checked on 2.4.1-2.15. No fallback: torch.compile itself needs it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    return FakeTensorMode(**options)


# -- torch.compile -----------------------------------------------------------------------------------------
def dynamo_unsupported_reason() -> Optional[str]:
    """Why torch.compile cannot run here (``torch._dynamo.is_dynamo_supported``: this Python or
    platform), None when it can. Checked on 2.4.1-2.15. Fallback: assumed supported (torch.compile
    then says itself what is wrong)."""
    try:
        import torch._dynamo
    except ImportError as exc:  # a broken install
        return f"torch._dynamo cannot be imported: {exc}"
    supported = getattr(torch._dynamo, "is_dynamo_supported", None)
    if supported is not None and not supported():
        return f"torch.compile is not supported here (torch {torch.__version__}, this Python or platform)"
    return None


def reset_compiled() -> None:
    """Forget every compiled graph (``torch._dynamo.reset``), so each backend traces afresh. Checked on
    2.4.1-2.15. No fallback: torch.compile needs dynamo."""
    import torch._dynamo

    torch._dynamo.reset()


# -- pytrees -----------------------------------------------------------------------------------------------
def tree_flatten(value: Any) -> tuple[list[Any], Any]:
    """``torch.utils._pytree.tree_flatten`` (the legacy kernel saved nested values this way). Checked
    on 2.4.1-2.15. No fallback: torch's own autograd machinery uses it."""
    from torch.utils import _pytree

    return _pytree.tree_flatten(value)


def tree_unflatten(leaves: list[Any], spec: Any) -> Any:
    """``torch.utils._pytree.tree_unflatten``. Checked on 2.4.1-2.15."""
    from torch.utils import _pytree

    return _pytree.tree_unflatten(leaves, spec)
