"""The plugin's own autograd kernel: the op under test wrapped in a generated ``autograd.Function`` that
validates what its backward returns before the autograd engine sees it.

The engine silently absorbs several wrong gradients from a custom op's backward (an extra trailing
None, a larger broadcastable shape, another dtype) and names its errors by position. In the spirit of
the legacy ``torch._custom_op`` kernel (``torch/_custom_op/autograd.py``), written for today's
``torch.library``, :class:`GradientCheckingKernel`:

1. runs the op's forward below autograd;
2. runs the op's own registered context-saving step (``register_autograd``'s ``setup_context`` or the
   legacy ``save_for_backward``) on the real ``ctx``;
3. in backward, calls the op's own registered backward, turns its result into a dict keyed by the
   schema's argument names, validates it (:func:`validate_gradients`), checks that backward modified
   neither its grad_outputs nor the tensors it saved, and only then hands the flat tuple to the engine.

Problems are raised as :class:`GradientValidationError`, whose ``problems`` name the op, the input,
what was expected and what was got. No pytest here.
"""

from __future__ import annotations

import contextlib
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import torch

from ..ops import RegistrationStyle, ResolvedOp
from ..samples import SampleInput
from ..torch_internals import below_autograd, transforming
from .backward_source import BackwardSource, find_backward
from .grad_validation import (
    GradientProblem,
    GradientValidationError,
    InputDescription,
    describe_inputs,
    positional_to_dict,
    validate_dict_keys,
    validate_gradients,
)
from .pytree import _flatten, save_pytree, unpack_pytree

__all__ = ["GradientCheckingKernel", "call_through_kernel", "kernel_for"]

# Attributes the plugin keeps on ``ctx``: skipped when looking for saved tensors backward modified.
_CTX_PREFIX = "_customop_"


# -- the generated autograd.Function ------------------------------------------------------------------------
@dataclass
class _Call:
    """One call through the kernel: how the flat ``apply`` arguments and outputs map to the schema.
    Passed as ``apply``'s last argument (like torch's own ``Metadata``); holds no input tensor."""

    names: list[str]  # every argument, positional first, in schema order
    list_lengths: dict[str, int]  # Tensor[] arguments: spread into apply's arguments
    list_types: dict[str, type]
    inputs: dict[str, InputDescription]
    out_tuple: bool = False
    out_lengths: list[Optional[int]] = field(default_factory=list)  # None: a single value

    def rebuild(self, flat: Sequence[Any]) -> dict[str, Any]:
        bound, position = {}, 0
        for name in self.names:
            if name in self.list_lengths:
                count = self.list_lengths[name]
                bound[name] = self.list_types[name](flat[position : position + count])
                position += count
            else:
                bound[name] = flat[position]
                position += 1
        return bound

    def flatten_outputs(self, result: Any) -> tuple:
        self.out_tuple = isinstance(result, tuple)
        items = result if self.out_tuple else (result,)
        flat: list[Any] = []
        for item in items:
            if isinstance(item, (list, tuple)):
                self.out_lengths.append(len(item))
                flat.extend(item)
            else:
                self.out_lengths.append(None)
                flat.append(item)
        return tuple(flat)

    def unflatten(self, flat: Sequence[Any]) -> list[Any]:
        """Per output of the op (a list for a ``Tensor[]`` output)."""
        items, position = [], 0
        for length in self.out_lengths:
            if length is None:
                items.append(flat[position])
                position += 1
            else:
                items.append(list(flat[position : position + length]))
                position += length
        return items

    def flat_grads(self, grads: Mapping[str, Any]) -> tuple:
        flat: list[Any] = []
        for name in self.names:
            grad = grads.get(name)
            if name in self.list_lengths:
                count = self.list_lengths[name]
                flat.extend(list(grad) if isinstance(grad, (list, tuple)) else [None] * count)
            else:
                flat.append(grad)
        return tuple(flat)

    def structured(self, flags: Sequence[bool], positional: Sequence[str]) -> tuple:
        """``needs_input_grad`` as torch gives it to a registered backward: one entry per positional
        argument, a list for ``Tensor[]`` ones."""
        by_name = dict(zip(self.names, self._group(list(flags))))
        return tuple(by_name[name] for name in positional)

    def _group(self, flat: list[Any]) -> list[Any]:
        grouped, position = [], 0
        for name in self.names:
            if name in self.list_lengths:
                count = self.list_lengths[name]
                grouped.append(flat[position : position + count])
                position += count
            else:
                grouped.append(flat[position])
                position += 1
        return grouped


def _same_values(before: torch.Tensor, after: torch.Tensor) -> bool:
    if before.shape != after.shape or before.dtype != after.dtype:
        return False
    if before.layout != torch.strided or after.layout != torch.strided:
        return True  # not compared: sparse tensors
    if before.is_floating_point() or before.is_complex():
        return bool(torch.allclose(before, after, rtol=0, atol=0, equal_nan=True))
    return bool(torch.equal(before, after))


def _snapshot(labelled: Sequence[tuple[str, Any]]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [(label, t, t.detach().clone()) for label, t in labelled if isinstance(t, torch.Tensor) and t.layout == torch.strided]


def _saved_tensors(ctx: Any, legacy_saved: Any = None) -> list[tuple[str, Any]]:
    """The tensors backward may read: ``ctx.saved_tensors``, tensor attributes of ``ctx``, and for
    legacy ops the ``saved`` object."""
    if legacy_saved is not None:  # the legacy kernel keeps everything in ``saved``
        return _legacy_saved_labels(legacy_saved, "saved")
    found: list[tuple[str, Any]] = []
    with contextlib.suppress(RuntimeError):  # freed by an earlier backward: the backward will say so itself
        found += [(f"ctx.saved_tensors[{k}]", t) for k, t in enumerate(ctx.saved_tensors)]
    for key, value in vars(ctx).items() if hasattr(ctx, "__dict__") else ():
        if key.startswith(_CTX_PREFIX):
            continue
        if isinstance(value, torch.Tensor):
            found.append((f"ctx.{key}", value))
        elif isinstance(value, (list, tuple)):
            found += [(f"ctx.{key}[{k}]", v) for k, v in enumerate(value) if isinstance(v, torch.Tensor)]
    return found


def _legacy_saved_labels(value: Any, label: str) -> list[tuple[str, Any]]:
    if isinstance(value, torch.Tensor):
        return [(label, value)]
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _legacy_saved_labels(v, f"{label}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [pair for k, v in enumerate(value) for pair in _legacy_saved_labels(v, f"{label}[{k}]")]
    return []


def _mutations(op_name: str, snapshot: Sequence[tuple[str, torch.Tensor, torch.Tensor]], what: str) -> list[GradientProblem]:
    return [
        GradientProblem(f"{op_name}: backward modified {label} in place ({what}): expected it unchanged, got different values")
        for label, tensor, before in snapshot
        if not _same_values(before, tensor.detach())
    ]


class GradientCheckingKernel:
    """The op under test behind the plugin's own ``autograd.Function``.

    Calling it calls the op. When grad is enabled, an input requires grad and the op's backward is a
    Python function (``register_autograd`` or legacy), the op runs through the generated Function,
    whose backward validates the op's gradients and raises :class:`GradientValidationError` on any
    problem. Otherwise (no grad, or an opaque backward) it calls the op directly.
    """

    def __init__(self, op: ResolvedOp, source: BackwardSource) -> None:
        self.op = op
        self.source = source
        self._positional = [a for a in op.arguments if not a.kwarg_only]
        self._has_kwarg_only = any(a.kwarg_only for a in op.arguments)
        self.function = self._generate() if source.is_python else None
        #: Broadcast-reducible gradients seen (messages), left to the engine's sum_to instead of raised.
        self.reduced_shapes: list[GradientProblem] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            bound = self.op.bind(SampleInput(*args, **kwargs))
        except TypeError:
            return self.op(*args, **kwargs)  # torch's own error for a call that does not fit the schema
        return self.call_bound(bound)

    def call_bound(self, bound: Mapping[str, Any]) -> Any:
        """Call the op with arguments by schema name, through the generated Function where it applies."""
        if self.function is None or not torch.is_grad_enabled() or not _any_requires_grad(bound.values()):
            return self.op.call_bound(dict(bound))
        arguments = self.op.arguments
        names = [a.name for a in arguments if not a.kwarg_only] + [a.name for a in arguments if a.kwarg_only]
        call = _Call(
            names=names,
            list_lengths={
                a.name: len(bound[a.name]) for a in arguments if a.kind.is_list and isinstance(bound[a.name], (list, tuple))
            },
            list_types={
                a.name: type(bound[a.name]) for a in arguments if a.kind.is_list and isinstance(bound[a.name], (list, tuple))
            },
            inputs=describe_inputs(arguments, bound),
        )
        flat: list[Any] = []
        for name in names:
            value = bound[name]
            flat.extend(value) if name in call.list_lengths else flat.append(value)
        outputs = self.function.apply(*flat, call)  # type: ignore[attr-defined]  # an autograd.Function subclass
        items = call.unflatten(outputs)
        return tuple(items) if call.out_tuple else items[0]

    # -- the Function --------------------------------------------------------------------------
    def _generate(self) -> type:
        kernel = self
        op, source = self.op, self.source
        legacy = source.style == "legacy"

        def forward(ctx: Any, *flat: Any) -> Any:
            call: _Call = flat[-1]
            bound = call.rebuild(flat[:-1])
            args, kwargs = op.split_bound(bound)
            with below_autograd():
                result = op.overload(*args, **kwargs)
                ctx._customop_call = call
                if legacy:
                    kernel._legacy_setup(ctx, bound, result)
                elif source.setup_context is not None:
                    if kernel._has_kwarg_only:
                        source.setup_context(ctx=ctx, inputs=args, keyword_only_inputs=kwargs, output=result)
                    else:
                        source.setup_context(ctx=ctx, inputs=args, output=result)
            return call.flatten_outputs(result)

        def backward(ctx: Any, *flat_grads: Any) -> Any:
            __tracebackhide__ = True  # a failure shows the validation message, not the kernel's frames
            call: _Call = ctx._customop_call
            return kernel._backward(ctx, call, flat_grads)

        name = f"CustomOpKernel_{op.namespace}_{op.qualname.split('::')[-1]}_{op.overload_name}"
        return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def _legacy_setup(self, ctx: Any, bound: Mapping[str, Any], result: Any) -> None:
        ctx.set_materialize_grads(True)
        inputs = _legacy_inputs(self.op, bound)
        assert self.source.setup_context is not None  # a legacy op has save_for_backward
        saved = self.source.setup_context(inputs, result)  # save_for_backward(inputs, output)
        save_pytree(ctx, saved)
        differentiability = self.source.output_differentiability
        if differentiability is not None:
            outputs = result if isinstance(result, tuple) else (result,)
            frozen = [
                t
                for out, keep in zip(outputs, differentiability)
                if not keep
                for t in _flatten(out)
                if isinstance(t, torch.Tensor)
            ]
            if frozen:
                ctx.mark_non_differentiable(*frozen)

    def _backward(self, ctx: Any, call: _Call, flat_grads: Sequence[Any]) -> tuple:
        __tracebackhide__ = True
        op_name, source = self.op.name, self.source
        grads = call.unflatten(flat_grads)
        grad_labels = [(f"grad_output[{k}]", g) for k, g in enumerate(flat_grads)]
        legacy_saved = unpack_pytree(ctx) if source.style == "legacy" else None
        grad_snapshot = _snapshot(grad_labels)
        saved_snapshot = _snapshot(_saved_tensors(ctx, legacy_saved))
        assert source.backward is not None
        if source.style == "legacy":
            result = source.backward(object(), legacy_saved, *grads)
            problems = validate_dict_keys(op_name, self.op.arguments, result)
            by_name = dict(result) if isinstance(result, dict) else {}
        else:
            previous = ctx.needs_input_grad
            ctx.needs_input_grad = call.structured(previous[:-1], [a.name for a in self._positional])
            try:
                result = source.backward(ctx, *grads)
            finally:
                ctx.needs_input_grad = previous
            by_name, problems = positional_to_dict(op_name, self._positional, result)
        problems += validate_gradients(op_name, call.inputs, by_name)
        problems += _mutations(op_name, grad_snapshot, "the gradient of the op's output it was given")
        problems += _mutations(op_name, saved_snapshot, "a tensor saved for backward")
        reducible = [p for p in problems if p.reducible]
        self.reduced_shapes.extend(p for p in reducible if p not in self.reduced_shapes)
        problems = [p for p in problems if not p.reducible]
        if problems:
            raise GradientValidationError(op_name, problems, source.describe())
        return (*call.flat_grads(by_name), None)


def _any_requires_grad(values: Any) -> bool:
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in _flatten(list(values)))


def _legacy_inputs(op: ResolvedOp, bound: Mapping[str, Any]) -> Any:
    names = [a.name for a in op.arguments]
    cls = namedtuple(f"{op.qualname.split('::')[-1]}_args", names)  # type: ignore[misc]
    return cls(*(bound[n] for n in names))


# -- entry points ------------------------------------------------------------------------------------------
_CACHE_KEY = "customop-kernel"


def kernel_for(op: ResolvedOp, probe: Optional[Mapping[str, Any]] = None, cache: Optional[dict] = None) -> GradientCheckingKernel:
    """The kernel of ``op`` (its backward found once and kept in ``cache`` when given).

    ``probe``: bound arguments with an input that requires grad, needed to find the backward of a
    ``Library.define`` op (see :func:`find_backward`)."""
    key = (_CACHE_KEY, op.name)
    if cache is not None and key in cache:
        return cache[key]
    if op.registration is RegistrationStyle.AUTOGRAD_FUNCTION:  # its own backward, validated by input name
        from ..autograd_functions import FunctionCheckingKernel

        kernel: Any = FunctionCheckingKernel(op)  # type: ignore[arg-type]
    else:
        kernel = GradientCheckingKernel(op, find_backward(op, probe))
    needs_probe = op.registration is RegistrationStyle.LIBRARY and probe is None
    if cache is not None and not needs_probe:
        cache[key] = kernel
    return kernel


def call_through_kernel(op: ResolvedOp, args: tuple, kwargs: Mapping[str, Any], cache: Optional[dict] = None) -> Any:
    """Call ``op(*args, **kwargs)``; when something requires grad, through its :class:`GradientCheckingKernel`
    so that a later backward is validated."""
    if not torch.is_grad_enabled() or not _any_requires_grad([*args, *kwargs.values()]) or _transforming():
        return op(*args, **kwargs)
    try:
        bound = op.bind(SampleInput(*args, **kwargs))
    except TypeError:
        return op(*args, **kwargs)  # torch's own error for a call that does not fit the schema
    return kernel_for(op, bound, cache).call_bound(bound)


def _transforming() -> bool:
    """True under torch.func transforms or torch.compile tracing, which need an ``autograd.Function``
    with ``setup_context`` / a traceable one: there the op is called as registered."""
    return transforming()
