"""Op resolution: from whatever the marker was given to one ``OpOverload`` with its schema.

Accepted: a qualname string with or without overload (``"mylib::mul"``, ``"mylib::mul.default"``), an
``OpOverload``, an ``OpOverloadPacket``, a ``torch.library.custom_op`` object (``CustomOpDef``), a legacy
``torch._custom_op`` ``CustomOp`` (or the stub function ``torch._custom_ops.custom_op`` decorated), and
any C++ op registered with ``TORCH_LIBRARY`` (reached through the same strings and objects). Ops made with
``torch.library.triton_op`` are ``CustomOpDef`` objects too. A ``torch.autograd.Function`` subclass resolves
to an :class:`~pytest_customop.autograd_functions.AutogradFunctionOp`, the same interface with arguments
named by its ``forward``'s parameters.
"""

from __future__ import annotations

import difflib
import enum
import functools
from dataclasses import dataclass
from typing import Any

import torch

from .samples import SampleInput
from .torch_internals import OpOverloadPacket, all_op_names, custom_op_defs, legacy_custom_ops, op_object_name, overload_schema

__all__ = ["ArgInfo", "ArgKind", "OpResolutionError", "ResolvedOp", "resolve_op", "ops_in_namespace"]


class OpResolutionError(ValueError):
    """The marker's ``op`` does not name exactly one registered operator."""


class ArgKind(enum.Enum):
    """How an argument takes part in differentiation."""

    TENSOR = "Tensor"
    OPTIONAL_TENSOR = "Tensor?"
    TENSOR_LIST = "Tensor[]"
    OPTIONAL_TENSOR_LIST = "Tensor?[]"
    OTHER = "other"  # int, float, bool, str, Scalar, ...: never gets a gradient
    # An autograd.Function's forward parameter without annotation: a tensor or not, as the value passed.
    ANY = "Any"

    @property
    def is_list(self) -> bool:
        return self in (ArgKind.TENSOR_LIST, ArgKind.OPTIONAL_TENSOR_LIST)

    @property
    def is_tensor_like(self) -> bool:
        return self is not ArgKind.OTHER


@dataclass(frozen=True)
class ArgInfo:
    """One schema argument."""

    name: str
    type: str
    kind: ArgKind
    kwarg_only: bool
    has_default: bool
    default: Any


def _arg_kind(jit_type: Any) -> ArgKind:
    if isinstance(jit_type, torch.TensorType):
        return ArgKind.TENSOR
    if isinstance(jit_type, torch.OptionalType):
        inner = jit_type.getElementType()
        if isinstance(inner, torch.TensorType):
            return ArgKind.OPTIONAL_TENSOR
        if isinstance(inner, torch.ListType):  # Tensor[]? behaves like Tensor[] when given
            return _arg_kind(inner)
        return ArgKind.OTHER
    if isinstance(jit_type, torch.ListType):
        inner = jit_type.getElementType()
        if isinstance(inner, torch.TensorType):
            return ArgKind.TENSOR_LIST
        if isinstance(inner, torch.OptionalType) and isinstance(inner.getElementType(), torch.TensorType):
            return ArgKind.OPTIONAL_TENSOR_LIST
    return ArgKind.OTHER


def _arg_info(arg: Any) -> ArgInfo:
    has_default = arg.default_value is not None or (
        # Optional args declared "= None" report default_value None; has_default_value tells them apart.
        hasattr(arg, "has_default_value") and arg.has_default_value()
    )
    return ArgInfo(
        name=arg.name,
        type=str(arg.type),
        kind=_arg_kind(arg.type),
        kwarg_only=arg.kwarg_only,
        has_default=bool(has_default),
        default=arg.default_value,
    )


class RegistrationStyle(str, enum.Enum):
    """How the op under test was defined, which decides where its backward can be found."""

    CUSTOM_OP = "torch.library.custom_op"
    LEGACY = "torch._custom_ops (legacy)"
    LIBRARY = "torch.library.Library"  # Library.define or TORCH_LIBRARY (C++): the dispatcher's
    AUTOGRAD_FUNCTION = "torch.autograd.Function"  # not an operator: its forward/backward are the class's


@dataclass
class ResolvedOp:
    """One operator overload and what the checks need to know about it."""

    overload: Any  # torch._ops.OpOverload
    qualname: str  # "mylib::mul"
    overload_name: str  # "default"
    custom_op_def: Any = None  # torch._library.custom_ops.CustomOpDef, when defined that way
    legacy_op: Any = None  # torch._custom_op.impl.CustomOp, when defined that way

    @property
    def name(self) -> str:
        """``mylib::mul`` for the default overload, ``mylib::mul.out`` otherwise."""
        if self.overload_name == "default":
            return self.qualname
        return f"{self.qualname}.{self.overload_name}"

    @property
    def namespace(self) -> str:
        return self.qualname.split("::", 1)[0]

    @property
    def schema(self) -> Any:
        return overload_schema(self.overload)

    @functools.cached_property  # read on every call of the op by the checks
    def arguments(self) -> list[ArgInfo]:
        return [_arg_info(a) for a in self.schema.arguments]

    @property
    def returns(self) -> list[ArgInfo]:
        return [_arg_info(r) for r in self.schema.returns]

    @property
    def is_mutable(self) -> bool:
        return bool(self.schema.is_mutable)

    @property
    def registration(self) -> RegistrationStyle:
        if self.custom_op_def is not None:
            return RegistrationStyle.CUSTOM_OP
        if self.legacy_op is not None:
            return RegistrationStyle.LEGACY
        return RegistrationStyle.LIBRARY

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.overload(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ResolvedOp {self.name}: {self.schema}>"

    # -- arguments by name --------------------------------------------------------------------
    def bind(self, sample: SampleInput) -> dict[str, Any]:
        """Map a sample's arguments to schema names, defaults filled, in schema order.

        Raises TypeError (with the op's schema) when the sample does not fit it.
        """
        arguments = self.arguments
        positional = [a for a in arguments if not a.kwarg_only]
        if len(sample.args) > len(positional):
            raise TypeError(
                f"{self.name} takes {len(positional)} positional argument(s) but the sample gives "
                f"{len(sample.args)}; schema: {self.schema}"
            )
        bound: dict[str, Any] = {}
        for info, value in zip(positional, sample.args):
            bound[info.name] = value
        by_name = {a.name: a for a in arguments}
        for key, value in sample.kwargs.items():
            if key not in by_name:
                raise TypeError(f"{self.name} has no argument {key!r}; schema: {self.schema}")
            if key in bound:
                raise TypeError(f"{self.name}: argument {key!r} given twice; schema: {self.schema}")
            bound[key] = value
        for info in arguments:
            if info.name not in bound:
                if not info.has_default:
                    raise TypeError(f"{self.name}: the sample gives no value for argument {info.name!r}; schema: {self.schema}")
                bound[info.name] = info.default
        return {a.name: bound[a.name] for a in arguments}

    def call_bound(self, bound: dict[str, Any]) -> Any:
        """Call the op with arguments by schema name (as :meth:`bind` returns them)."""
        args, kwargs = self.split_bound(bound)
        return self.overload(*args, **kwargs)

    def split_bound(self, bound: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Positional and keyword-only parts of a bound call."""
        args = tuple(bound[a.name] for a in self.arguments if not a.kwarg_only)
        kwargs = {a.name: bound[a.name] for a in self.arguments if a.kwarg_only}
        return args, kwargs


def ops_in_namespace(namespace: str) -> list[str]:
    """Every ``ns::name`` registered in ``namespace`` (overloads folded), sorted."""
    prefix = f"{namespace}::"
    names = set()
    for full in all_op_names():
        if full.startswith(prefix):
            names.add(full.split(".", 1)[0])
    return sorted(names)


def _legacy_registry() -> dict[str, Any]:
    return legacy_custom_ops()


def _custom_op_defs() -> dict[str, Any]:
    return custom_op_defs()


def _pick_overload(packet: Any, qualname: str) -> str:
    overloads = list(packet.overloads())
    if "default" in overloads:
        return "default"
    if len(overloads) == 1:
        return overloads[0]
    choices = ", ".join(f"'{qualname}.{o}'" for o in sorted(overloads))
    raise OpResolutionError(f"{qualname} is ambiguous: it has overloads {choices}; name one")


def _registered_packet(namespace: str, name: str) -> Any:
    """``torch.ops.<namespace>.<name>`` when that op is registered, else None."""
    if not namespace.isidentifier() or not name.isidentifier():
        return None
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None
    return packet if isinstance(packet, OpOverloadPacket) else None


def _resolve_qualname(text: str) -> ResolvedOp:
    if "::" not in text:
        raise OpResolutionError(f"{text!r} is not an op name; expected 'namespace::name' or 'namespace::name.overload'")
    namespace, rest = text.split("::", 1)
    name, _, overload_name = rest.partition(".")
    qualname = f"{namespace}::{name}"
    # Direct lookup first: listing every op name in the dispatcher costs ~10 ms, paid per marker at
    # collection (minutes for thousands of markers); the listing is only needed to explain a miss.
    packet = _registered_packet(namespace, name)
    known = [qualname] if packet is not None else ops_in_namespace(namespace)
    if qualname not in known:
        if not known:
            raise OpResolutionError(
                f"namespace {namespace!r} has no registered ops (is the library that defines "
                "it imported, or loaded with torch.ops.load_library, before collection?)"
            )
        close = difflib.get_close_matches(qualname, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise OpResolutionError(f"no op {qualname!r} is registered{hint}")
    if packet is None:
        packet = getattr(getattr(torch.ops, namespace), name)
    if not overload_name:
        overload_name = _pick_overload(packet, qualname)
    elif overload_name not in packet.overloads():
        allowed = ", ".join(repr(o) for o in sorted(packet.overloads()))
        raise OpResolutionError(f"{qualname} has no overload {overload_name!r}; it has {allowed}")
    overload = getattr(packet, overload_name)
    return ResolvedOp(
        overload=overload,
        qualname=qualname,
        overload_name=overload_name,
        custom_op_def=_custom_op_defs().get(qualname) if overload_name == "default" else None,
        legacy_op=_legacy_registry().get(qualname) if overload_name == "default" else None,
    )


def resolve_op(op: Any) -> ResolvedOp:
    """Resolve the marker's ``op`` argument. Raises :class:`OpResolutionError` with a readable reason."""
    if isinstance(op, str):
        return _resolve_qualname(op.strip())
    if isinstance(op, type) and issubclass(op, torch.autograd.Function):
        from .autograd_functions import resolve_autograd_function

        return resolve_autograd_function(op)
    name = op_object_name(op)  # an OpOverload, OpOverloadPacket, CustomOpDef or legacy CustomOp
    if name is not None:
        return _resolve_qualname(name)
    if callable(op) and hasattr(op, "__name__"):
        # The stub function decorated by torch._custom_ops.custom_op keeps no link to its op: match it
        # by name among the legacy ops, when that is unambiguous.
        matches = [q for q, c in _legacy_registry().items() if q.split("::")[-1] == op.__name__]
        if len(matches) == 1:
            return _resolve_qualname(matches[0])
    raise OpResolutionError(
        f"{op!r} ({type(op).__name__}) is not an op; allowed: a qualname string ('mylib::mul' or "
        "'mylib::mul.default'), an OpOverload, an OpOverloadPacket, a torch.library.custom_op (or triton_op) "
        "object, a legacy torch._custom_op op, or a torch.autograd.Function subclass"
    )
