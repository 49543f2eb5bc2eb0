"""A ``torch.autograd.Function`` subclass as the op under test.

:func:`resolve_autograd_function` turns the class into an :class:`AutogradFunctionOp`: the interface of
:class:`~pytest_customop.ops.ResolvedOp` (``name``, ``schema``, ``arguments``, ``bind``, ``call_bound``)
with one argument per parameter of ``forward`` (``ctx`` excluded; a ``setup_context``-style forward has
none), so samples bind to those names and every message names an input as it names a schema argument.

A parameter's annotation gives its type (``torch.Tensor``, ``Optional[torch.Tensor]``, ``float``, ...);
an unannotated one is :attr:`~pytest_customop.ops.ArgKind.ANY`: a tensor or not as the value passed.

:class:`FunctionCheckingKernel` is what the ``grad_keys`` check runs the Function through: a subclass
generated per call whose backward calls the Function's own backward (``@once_differentiable`` and all)
on the real ``ctx``, then validates its result by input name before the autograd engine can sum, cast
or drop it. ``forward``, ``setup_context``, ``jvp`` and ``vmap`` are the Function's own. No pytest here.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from .ops import ArgInfo, ArgKind, OpResolutionError, RegistrationStyle, ResolvedOp

__all__ = [
    "AutogradFunctionOp",
    "FunctionBackwardSource",
    "FunctionCheckingKernel",
    "FunctionSignature",
    "function_arguments",
    "resolve_autograd_function",
]


def _overrides(function: type[torch.autograd.Function], method: str) -> bool:
    """Whether ``function`` defines ``method`` (``setup_context``, ``jvp``, ``vmap``, ``backward``...)
    rather than inheriting the placeholder of ``torch.autograd.Function``."""
    return getattr(function, method, None) is not getattr(torch.autograd.Function, method, None)


def uses_setup_context(function: type[torch.autograd.Function]) -> bool:
    """``forward(*inputs)`` plus ``setup_context(ctx, inputs, output)``, rather than ``forward(ctx, *inputs)``."""
    return _overrides(function, "setup_context")


# -- forward's parameters as schema arguments -----------------------------------------------------------
_UNIONS = (typing.Union, getattr(types, "UnionType", typing.Union))  # Optional[T] and T | None (Python >= 3.10)


def _annotation_type(annotation: Any) -> tuple[str, ArgKind]:
    """The schema-style type name and kind of one annotation (``inspect.Parameter.empty``: none)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return "Any", ArgKind.ANY
    if annotation is torch.Tensor:
        return "Tensor", ArgKind.TENSOR
    origin, parameters = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _UNIONS and type(None) in parameters and len(parameters) == 2:
        inner = next(p for p in parameters if p is not type(None))
        name, kind = _annotation_type(inner)
        return f"Optional[{name}]", ArgKind.OPTIONAL_TENSOR if kind is ArgKind.TENSOR else ArgKind.OTHER
    if origin in (list, tuple, typing.Sequence) and parameters:
        # autograd.Function.apply differentiates only tensors passed directly: a list is not an input to it
        return f"List[{_annotation_type(parameters[0])[0]}]", ArgKind.OTHER
    if isinstance(annotation, type):
        return annotation.__name__, ArgKind.OTHER
    return str(annotation), ArgKind.OTHER


def _forward_parameters(function: type[torch.autograd.Function]) -> list[inspect.Parameter]:
    forward = function.forward
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError) as exc:
        raise OpResolutionError(f"{function.__qualname__}.forward has no signature Python can read: {exc}") from None
    parameters = list(signature.parameters.values())
    if not uses_setup_context(function):
        if not parameters:
            raise OpResolutionError(f"{function.__qualname__}.forward takes no ctx: expected forward(ctx, *inputs)")
        parameters = parameters[1:]  # ctx
    variadic = [p.name for p in parameters if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if variadic:
        raise OpResolutionError(
            f"{function.__qualname__}.forward takes *{variadic[0]}: its inputs have no names to check them by; "
            "give forward one named parameter per input"
        )
    keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    if keyword_only:
        raise OpResolutionError(
            f"{function.__qualname__}.forward has keyword-only parameter {keyword_only[0]!r}: "
            "torch.autograd.Function.apply takes its inputs positionally"
        )
    return parameters


def function_arguments(function: type[torch.autograd.Function]) -> list[ArgInfo]:
    """One :class:`ArgInfo` per input of ``function.forward``, typed from its annotations."""
    try:
        hints = typing.get_type_hints(function.forward)
    except (NameError, TypeError, AttributeError):  # an annotation naming what is not importable here: the raw ones
        hints = {}
    arguments = []
    for parameter in _forward_parameters(function):
        type_name, kind = _annotation_type(hints.get(parameter.name, parameter.annotation))
        has_default = parameter.default is not inspect.Parameter.empty
        arguments.append(
            ArgInfo(
                name=parameter.name,
                type=type_name,
                kind=kind,
                kwarg_only=parameter.kind is inspect.Parameter.KEYWORD_ONLY,
                has_default=has_default,
                default=parameter.default if has_default else None,
            )
        )
    return arguments


@dataclass(frozen=True)
class _SignatureArgument:
    """What the checks read of a schema argument (``name``, ``type``, ``alias_info``)."""

    name: str
    type: str
    kwarg_only: bool
    default_value: Any = None
    alias_info: Any = None  # an autograd.Function declares no mutation


@dataclass(frozen=True)
class FunctionSignature:
    """The stand-in for a ``FunctionSchema``: forward's parameters, no mutation, no declared returns."""

    name: str
    arguments: tuple[_SignatureArgument, ...]
    returns: tuple = ()
    is_mutable: bool = False

    def __str__(self) -> str:
        shown: list[str] = []
        for argument in self.arguments:
            if argument.kwarg_only and "*" not in shown:
                shown.append("*")
            text = f"{argument.type} {argument.name}"
            if argument.default_value is not None:
                text += f"={argument.default_value!r}"
            shown.append(text)
        return f"{self.name}.forward({', '.join(shown)})"


@dataclass(repr=False)
class AutogradFunctionOp(ResolvedOp):
    """A ``torch.autograd.Function`` subclass, resolved into the interface the checks use.

    ``overload`` is ``function.apply``; ``name`` is ``module.Qualname`` (``test_ops.MulFunction``).
    """

    function: Any = None
    _arguments: list[ArgInfo] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.qualname.split("::", 1)[1]

    @property
    def schema(self) -> FunctionSignature:
        return FunctionSignature(
            self.function.__qualname__,
            tuple(_SignatureArgument(a.name, a.type, a.kwarg_only, a.default) for a in self._arguments),
        )

    @property
    def arguments(self) -> list[ArgInfo]:
        return self._arguments

    @property
    def returns(self) -> list[ArgInfo]:
        return []

    @property
    def is_mutable(self) -> bool:
        return False

    @property
    def registration(self) -> RegistrationStyle:
        return RegistrationStyle.AUTOGRAD_FUNCTION

    @property
    def has_jvp(self) -> bool:
        return _overrides(self.function, "jvp")

    @property
    def has_vmap_rule(self) -> bool:
        """A ``vmap`` staticmethod or ``generate_vmap_rule = True`` (both need ``setup_context``)."""
        return _overrides(self.function, "vmap") or bool(getattr(self.function, "generate_vmap_rule", False))

    def no_jvp_reason(self) -> Optional[str]:
        """Why forward-mode AD does not apply, or None when the Function defines a ``jvp``."""
        if self.has_jvp:
            return None
        return (
            f"forward-mode AD is unsupported for {self.name}: the autograd.Function defines no jvp "
            "staticmethod (torch raises 'You must implement the jvp function'); not a failure of the op"
        )

    def compile_unsupported_reason(self) -> Optional[str]:
        """Why torch.compile cannot trace this Function (Dynamo refuses a custom jvp or vjp), or None."""
        custom = [m for m in ("jvp", "vjp") if _overrides(self.function, m)]
        if not custom:
            return None
        return (
            f"{self.name} defines a custom {custom[0]}: torch {torch.__version__}'s torch.compile does not trace "
            f"an autograd.Function with one ('Unsupported custom {custom[0]}'); not a failure of the op"
        )

    def __repr__(self) -> str:
        return f"<AutogradFunctionOp {self.name}: {self.schema}>"


def resolve_autograd_function(function: type[torch.autograd.Function]) -> AutogradFunctionOp:
    """The op under test for a ``torch.autograd.Function`` subclass. Raises OpResolutionError when its
    inputs cannot be named or it has no backward."""
    if not _overrides(function, "backward") and not _overrides(function, "vjp"):
        raise OpResolutionError(f"{function.__qualname__} defines no backward: there is no gradient to check")
    module = getattr(function, "__module__", "") or ""
    shown = f"{module}.{function.__qualname__}" if module and module != "__main__" else function.__qualname__
    return AutogradFunctionOp(
        overload=function.apply,
        qualname=f"autograd.Function::{shown}",
        overload_name="default",
        function=function,
        _arguments=function_arguments(function),
    )


# -- the validating kernel ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FunctionBackwardSource:
    """The Function's own backward, described as :class:`~pytest_customop.kernel.BackwardSource` is."""

    function: Any
    style: str = "autograd.Function"
    detail: str = ""

    @property
    def is_python(self) -> bool:
        return True

    @property
    def method(self) -> str:
        """``vjp`` when the Function defines its backward under that name, else ``backward``."""
        return "vjp" if _overrides(self.function, "vjp") else "backward"

    def describe(self) -> str:
        """``MulFunction.backward (test_ops.py:12), the autograd.Function's own``."""
        fn = getattr(self.function, self.method)
        fn = getattr(fn, "__wrapped__", fn)  # @once_differentiable keeps the original here
        try:
            path = inspect.getsourcefile(fn) or "?"
            where = f" ({path.rsplit('/', 1)[-1]}:{inspect.getsourcelines(fn)[1]})"
        except (TypeError, OSError):
            where = ""
        return f"{self.function.__qualname__}.{self.method}{where}, the autograd.Function's own"


def _call_descriptions(op: AutogradFunctionOp, bound: Mapping[str, Any]) -> Any:
    """The inputs of one call described for validation; an unannotated parameter typed by its value."""
    from .kernel import describe_inputs

    arguments = []
    for argument in op.arguments:
        if argument.kind is ArgKind.ANY:
            value = bound.get(argument.name)
            if isinstance(value, torch.Tensor):
                argument = ArgInfo(
                    argument.name, "Tensor", ArgKind.TENSOR, argument.kwarg_only, argument.has_default, argument.default
                )
            else:
                argument = ArgInfo(
                    argument.name,
                    type(value).__name__,
                    ArgKind.OTHER,
                    argument.kwarg_only,
                    argument.has_default,
                    argument.default,
                )
        arguments.append(argument)
    return describe_inputs(arguments, bound)


class FunctionCheckingKernel:
    """The Function under test with its backward's result validated by input name.

    Calling it with grad enabled and an input that requires grad applies a subclass of the Function,
    generated for the call, whose backward raises
    :class:`~pytest_customop.kernel.GradientValidationError` on any problem; otherwise it applies the
    Function itself.
    """

    def __init__(self, op: AutogradFunctionOp) -> None:
        self.op = op
        self.source = FunctionBackwardSource(op.function)
        self._positional = [a for a in op.arguments if not a.kwarg_only]
        #: Broadcast-reducible gradients seen, left to the engine's sum_to (grad_keys notes them), as the
        #: generated kernel of an op does.
        self.reduced_shapes: list[Any] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .samples import SampleInput

        try:
            bound = self.op.bind(SampleInput(*args, **kwargs))
        except TypeError:
            return self.op(*args, **kwargs)  # the Function's own error for a call that does not fit it
        return self.call_bound(bound)

    def call_bound(self, bound: Mapping[str, Any]) -> Any:
        """Apply the Function to arguments by name, through the validating subclass where it applies."""
        from .kernel.generated_kernel import _any_requires_grad, _transforming

        if not torch.is_grad_enabled() or not _any_requires_grad(bound.values()) or _transforming():
            return self.op.call_bound(dict(bound))
        checking = self._checking_subclass(_call_descriptions(self.op, bound))
        args, kwargs = self.op.split_bound(dict(bound))
        return checking.apply(*args, **kwargs)

    def _checking_subclass(self, inputs: Mapping[str, Any]) -> Any:
        from .kernel import (
            GradientValidationError,
            positional_to_dict,
            validate_gradients,
        )
        from .kernel.generated_kernel import _mutations, _saved_tensors, _snapshot

        function, source, positional = self.op.function, self.source, self._positional
        op_name, reduced_shapes = self.op.name, self.reduced_shapes
        user_backward: Callable[..., Any] = getattr(function, source.method)

        def backward(ctx: Any, *grad_outputs: Any) -> Any:
            __tracebackhide__ = True  # a failure shows the validation message, not these frames
            grad_snapshot = _snapshot([(f"grad_output[{k}]", g) for k, g in enumerate(grad_outputs)])
            saved_snapshot = _snapshot(_saved_tensors(ctx))
            result = user_backward(ctx, *grad_outputs)
            by_name, problems = positional_to_dict(op_name, positional, result)
            problems += validate_gradients(op_name, inputs, by_name)
            problems += _mutations(op_name, grad_snapshot, "the gradient of the op's output it was given")
            problems += _mutations(op_name, saved_snapshot, "a tensor saved for backward")
            reduced_shapes.extend(p for p in problems if p.reducible and p not in reduced_shapes)
            problems = [p for p in problems if not p.reducible]
            if problems:
                raise GradientValidationError(op_name, problems, source.describe())
            grads = tuple(by_name.get(a.name) for a in positional)
            return grads if len(grads) != 1 else grads[0]

        # Same name, so torch's messages and grad_fn (MulFunctionBackward) read as the Function's own.
        namespace = {
            source.method: staticmethod(backward),
            "__qualname__": function.__qualname__,
            "__module__": function.__module__,
        }
        return type(function.__name__, (function,), namespace)
