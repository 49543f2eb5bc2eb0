"""Coverage of the namespaces under test: the ops registered there, and which have no autograd formula.

Computed where the ops are registered (the process that imported the test modules: under pytest-xdist a
worker, not the controller) and sent on as builtins.
"""

from __future__ import annotations

from typing import Any

from ..torch_internals import all_op_names, custom_op_backward, custom_op_defs, has_kernel, legacy_custom_ops, legacy_impl

__all__ = ["has_autograd_formula", "namespace_ops"]

# A kernel at one of these keys is an autograd formula (or, for CompositeImplicitAutograd, a
# decomposition that autograd differentiates through).
_AUTOGRAD_KEYS = ("Autograd", "AutogradCPU", "AutogradCUDA", "AutogradXPU", "AutogradMPS", "CompositeImplicitAutograd")


def _registered_overloads(namespace: str) -> list[str]:
    """``ns::op`` (default overload) and ``ns::op.overload`` names, as ``ResolvedOp.name`` spells them."""
    prefix = f"{namespace}::"
    return sorted({name for name in all_op_names() if name.startswith(prefix)})


def _custom_op_def(qualname: str) -> Any:
    return custom_op_defs().get(qualname)


def _legacy_op(qualname: str) -> Any:
    return legacy_custom_ops().get(qualname)


def _has_kernel(name: str, key: str) -> bool:
    return has_kernel(name, key)


def has_autograd_formula(name: str) -> bool:
    """Whether the op overload ``name`` (``ns::op`` or ``ns::op.overload``) can be differentiated.

    ``torch.library.custom_op`` registers an Autograd kernel whether or not ``register_autograd`` was
    called (it raises at backward), so for those ops the registered backward decides; likewise for the
    legacy ``torch._custom_ops`` ops. For the others, a kernel at an Autograd key or a
    CompositeImplicitAutograd one counts.
    """
    qualname, _, overload = name.partition(".")
    if not overload:
        custom = _custom_op_def(qualname)
        if custom is not None:
            return custom_op_backward(custom) is not None
        legacy = _legacy_op(qualname)
        if legacy is not None:
            return legacy_impl(legacy, "backward") is not None
    return any(_has_kernel(name, key) for key in _AUTOGRAD_KEYS)


def namespace_ops(namespaces: list[str]) -> dict[str, dict[str, list[str]]]:
    """For each namespace: ``{"ops": [...], "no_autograd": [...]}`` (builtins, sorted)."""
    found = {}
    for namespace in sorted(set(namespaces)):
        ops = _registered_overloads(namespace)
        found[namespace] = {"ops": ops, "no_autograd": [op for op in ops if not has_autograd_formula(op)]}
    return found
