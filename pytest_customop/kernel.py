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
import inspect
from collections import namedtuple
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import torch

from .dtypes import dtype_id
from .ops import ArgInfo, RegistrationStyle, ResolvedOp
from .samples import SampleInput

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

# Attributes the plugin keeps on ``ctx``: skipped when looking for saved tensors backward modified.
_CTX_PREFIX = "_customop_"


# -- problems ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradientProblem:
    """One thing wrong with what backward returned or did; ``input_name`` is a schema argument name."""

    message: str
    input_name: Optional[str] = None


class GradientValidationError(RuntimeError):
    """A custom op's backward returned gradients that do not fit its inputs (or modified what it must
    not). ``problems`` lists each, by input name."""

    def __init__(self, op_name: str, problems: Sequence[GradientProblem], backward: str = "") -> None:
        self.op_name = op_name
        self.problems = list(problems)
        self.backward = backward
        prefix = f"{op_name}: "
        lines = [f"the backward of {op_name} is wrong:"] + [
            f"  {p.message[len(prefix):] if p.message.startswith(prefix) else p.message}" for p in self.problems
        ]
        if backward:
            lines.append(f"  (backward: {backward})")
        super().__init__("\n".join(lines))


# -- what a gradient must look like ------------------------------------------------------------------
@dataclass(frozen=True)
class TensorMeta:
    """What a gradient must match: its input's shape, dtype, device and layout."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    layout: torch.layout

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorMeta":
        return cls(tuple(t.shape), t.dtype, t.device, t.layout)


@dataclass(frozen=True)
class InputDescription:
    """One schema argument as it was passed: tensor metadata (a list of it for ``Tensor[]``; None for
    an element that was None), or the type name of a non-tensor value."""

    arg: ArgInfo
    tensor: Optional[TensorMeta] = None
    elements: Optional[tuple[Optional[TensorMeta], ...]] = None  # Tensor[] inputs
    value_type: str = ""  # non-tensor inputs: "float", "NoneType", ...

    @property
    def name(self) -> str:
        return self.arg.name

    def what(self) -> str:
        """How the input is described in messages: ``'alpha' (float)``, ``'xs' (Tensor[] of 2)``."""
        type_name = self.arg.kind.value if self.arg.kind.is_tensor_like else self.arg.type
        if self.elements is not None:
            return f"'{self.name}' ({type_name} of {len(self.elements)})"
        if self.tensor is None:
            if self.value_type == "NoneType":
                return f"'{self.name}' ({type_name}, passed None)"
            return f"'{self.name}' ({type_name})"
        return f"'{self.name}' ({type_name})"


def describe_inputs(arguments: Sequence[ArgInfo], bound: Mapping[str, Any]) -> dict[str, InputDescription]:
    """Descriptions of every bound argument (metadata only: no tensor is kept alive)."""
    described = {}
    for arg in arguments:
        value = bound.get(arg.name)
        if isinstance(value, torch.Tensor):
            described[arg.name] = InputDescription(arg, tensor=TensorMeta.of(value))
        elif arg.kind.is_list and isinstance(value, (list, tuple)):
            metas = tuple(TensorMeta.of(v) if isinstance(v, torch.Tensor) else None for v in value)
            described[arg.name] = InputDescription(arg, elements=metas)
        else:
            described[arg.name] = InputDescription(arg, value_type=type(value).__name__)
    return described


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor({list(value.shape)}, {dtype_id(value.dtype)}, {value.device})"
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return f"a {kind} of {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}" if value is not None else "None"


def tensor_problems(op_name: str, label: str, grad: torch.Tensor, meta: TensorMeta) -> list[GradientProblem]:
    """Where gradient ``grad`` for input ``label`` (``'x'`` or ``'xs'[1]``) differs from its input's
    shape, dtype, device or layout."""
    problems = []
    name = label.split("'")[1]
    where = f"{op_name}: the gradient for input {label}"
    if tuple(grad.shape) != meta.shape:
        problems.append(GradientProblem(
            f"{where}: expected shape {list(meta.shape)} (the input's), got {list(grad.shape)}"
            + (" (torch would sum it down silently)" if _broadcasts_to(grad.shape, meta.shape) else ""),
            name,
        ))
    if grad.dtype != meta.dtype:
        problems.append(GradientProblem(
            f"{where}: expected dtype {dtype_id(meta.dtype)} (the input's), got {dtype_id(grad.dtype)} "
            "(torch would cast it silently)",
            name,
        ))
    if grad.device != meta.device:
        problems.append(GradientProblem(f"{where}: expected device {meta.device} (the input's), got {grad.device}", name))
    if grad.layout != meta.layout:
        problems.append(GradientProblem(f"{where}: expected layout {meta.layout} (the input's), got {grad.layout}", name))
    return problems


def _broadcasts_to(got: Sequence[int], expected: Sequence[int]) -> bool:
    """True when a gradient of shape ``got`` would be summed down to ``expected`` by the engine."""
    if len(got) < len(expected):
        return False
    tail = list(got)[len(got) - len(expected):]
    return all(g == e or e == 1 for g, e in zip(tail, expected))


def validate_gradients(
    op_name: str, inputs: Mapping[str, InputDescription], grads: Mapping[str, Any]
) -> list[GradientProblem]:
    """Every problem with ``grads`` (one entry per input name, as :func:`positional_to_dict` or a legacy
    dict gives them) against the inputs they are for."""
    problems: list[GradientProblem] = []
    for name, desc in inputs.items():
        if name not in grads:
            continue  # counted by the normaliser that built ``grads``
        grad = grads[name]
        if desc.elements is not None:
            problems.extend(_list_problems(op_name, desc, grad))
            continue
        if desc.tensor is None:
            if grad is not None:
                problems.append(GradientProblem(
                    f"{op_name}: the gradient for input {desc.what()}: expected None (not a tensor), got {_show(grad)}",
                    name,
                ))
            continue
        if grad is None:
            continue
        if not isinstance(grad, torch.Tensor):
            problems.append(GradientProblem(
                f"{op_name}: the gradient for input {desc.what()}: expected a Tensor or None, got {_show(grad)}", name
            ))
            continue
        problems.extend(tensor_problems(op_name, f"'{name}'", grad, desc.tensor))
    return problems


def _list_problems(op_name: str, desc: InputDescription, grad: Any) -> list[GradientProblem]:
    assert desc.elements is not None
    count = len(desc.elements)
    expected = f"a list of {count} (None or Tensor, one per element)"
    if not isinstance(grad, (list, tuple)):
        return [GradientProblem(f"{op_name}: the gradient for input {desc.what()}: expected {expected}, got {_show(grad)}", desc.name)]
    if len(grad) != count:
        return [GradientProblem(
            f"{op_name}: the gradient for input {desc.what()}: expected {expected}, got a list of {len(grad)}", desc.name
        )]
    problems = []
    for index, (g, meta) in enumerate(zip(grad, desc.elements)):
        label = f"'{desc.name}'[{index}]"
        if g is None:
            continue
        if not isinstance(g, torch.Tensor):
            problems.append(GradientProblem(f"{op_name}: the gradient for input {label}: expected a Tensor or None, got {_show(g)}", desc.name))
        elif meta is None:
            problems.append(GradientProblem(
                f"{op_name}: the gradient for input {label}: expected None (the element was None), got {_show(g)}", desc.name
            ))
        else:
            problems.extend(tensor_problems(op_name, label, g, meta))
    return problems


# -- from what backward returned to one entry per input name -------------------------------------------
def positional_to_dict(
    op_name: str, positional: Sequence[ArgInfo], result: Any
) -> tuple[dict[str, Any], list[GradientProblem]]:
    """A ``register_autograd`` backward's result (a tuple, one per positional argument; or a single
    value for one argument) as a dict by argument name, and the count problems."""
    names = [a.name for a in positional]
    entries = list(result) if isinstance(result, tuple) else [result]
    problems = []
    expected = f"{len(names)}, one per positional input ({', '.join(names)})"
    if len(entries) < len(names):
        missing = names[len(entries):]
        got = f"{len(entries)}" + ("" if isinstance(result, tuple) else f" ({_show(result)}, not a tuple)")
        problems.append(GradientProblem(
            f"{op_name}: backward returned {got} gradient(s), expected {expected}: "
            f"nothing for input {', '.join(repr(m) for m in missing)}",
            missing[0],
        ))
    elif len(entries) > len(names):
        extra = entries[len(names):]
        after = f"after the last input {names[-1]!r}" if names else "(the op has no inputs)"
        silently = " (torch drops a trailing None silently)" if all(e is None for e in extra) else ""
        problems.append(GradientProblem(
            f"{op_name}: backward returned {len(entries)} gradients, expected {expected}: extra trailing "
            f"{'entry' if len(extra) == 1 else 'entries'} {', '.join(_show(e) for e in extra)} {after}{silently}",
            names[-1] if names else None,
        ))
    return dict(zip(names, entries)), problems


def validate_dict_keys(
    op_name: str, arguments: Sequence[ArgInfo], result: Any
) -> list[GradientProblem]:
    """Problems with a legacy-contract backward result: a dict keyed by exactly the tensor-like inputs."""
    expected = [a.name for a in arguments if a.kind.is_tensor_like]
    shown_expected = "{" + ", ".join(repr(n) for n in expected) + "}"
    if not isinstance(result, dict):
        return [GradientProblem(
            f"{op_name}: backward must return a dict keyed by input name (the legacy contract), expected keys "
            f"{shown_expected}, got {_show(result)}"
        )]
    shown_got = "{" + ", ".join(repr(k) for k in result) + "}"
    problems = []
    non_tensor = {a.name: a for a in arguments if not a.kind.is_tensor_like}
    for name in expected:
        if name not in result:
            problems.append(GradientProblem(
                f"{op_name}: the dict returned by backward has no key {name!r}: expected keys {shown_expected} "
                f"(one per tensor input, None allowed), got {shown_got}",
                name,
            ))
    for key in result:
        if key in expected:
            continue
        if key in non_tensor:
            why = f"input {key!r} is a {non_tensor[key].type}, not a tensor: it takes no gradient"
        else:
            why = f"{op_name} has no input {key!r}"
        problems.append(GradientProblem(
            f"{op_name}: the dict returned by backward has an extra key {key!r} ({why}): expected keys "
            f"{shown_expected}, got {shown_got}",
            key if key in non_tensor else None,
        ))
    return problems


def dict_to_positional(arguments: Sequence[ArgInfo], grads: Mapping[str, Any]) -> tuple:
    """One entry per argument in ``arguments`` (None where ``grads`` has none)."""
    return tuple(grads.get(a.name) for a in arguments)


# -- where the op's backward is ----------------------------------------------------------------------------
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


# -- the generated autograd.Function ------------------------------------------------------------------------
def _flatten(result: Any) -> list[Any]:
    if isinstance(result, (list, tuple)):
        return [leaf for item in result for leaf in _flatten(item)]
    return [result]


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
                bound[name] = self.list_types[name](flat[position:position + count])
                position += count
            else:
                bound[name] = flat[position]
                position += 1
        return bound

    def flatten_outputs(self, result: Any) -> tuple:
        self.out_tuple = isinstance(result, tuple)
        items = result if self.out_tuple else (result,)
        flat = []
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
                items.append(list(flat[position:position + length]))
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
                grouped.append(flat[position:position + count])
                position += count
            else:
                grouped.append(flat[position])
                position += 1
        return grouped


@contextlib.contextmanager
def _below_autograd() -> Iterator[None]:
    below = getattr(torch._C, "_AutoDispatchBelowAutograd", None)
    with (below() if below is not None else torch.no_grad()):
        yield


def _same_values(before: torch.Tensor, after: torch.Tensor) -> bool:
    if before.shape != after.shape or before.dtype != after.dtype:
        return False
    if before.layout != torch.strided or after.layout != torch.strided:
        return True  # not compared: sparse tensors
    if before.is_floating_point() or before.is_complex():
        return bool(torch.allclose(before, after, rtol=0, atol=0, equal_nan=True))
    return bool(torch.equal(before, after))


def _snapshot(labelled: Sequence[tuple[str, Any]]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [
        (label, t, t.detach().clone())
        for label, t in labelled
        if isinstance(t, torch.Tensor) and t.layout == torch.strided
    ]


def _saved_tensors(ctx: Any, legacy_saved: Any = None) -> list[tuple[str, Any]]:
    """The tensors backward may read: ``ctx.saved_tensors``, tensor attributes of ``ctx``, and for
    legacy ops the ``saved`` object."""
    if legacy_saved is not None:  # the legacy kernel keeps everything in ``saved``
        return _legacy_saved_labels(legacy_saved, "saved")
    found: list[tuple[str, Any]] = []
    try:
        found += [(f"ctx.saved_tensors[{k}]", t) for k, t in enumerate(ctx.saved_tensors)]
    except RuntimeError:  # freed by an earlier backward: the backward will say so itself
        pass
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
        GradientProblem(
            f"{op_name}: backward modified {label} in place ({what}): expected it unchanged, got different values"
        )
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
            list_lengths={a.name: len(bound[a.name]) for a in arguments if a.kind.is_list and isinstance(bound[a.name], (list, tuple))},
            list_types={a.name: type(bound[a.name]) for a in arguments if a.kind.is_list and isinstance(bound[a.name], (list, tuple))},
            inputs=describe_inputs(arguments, bound),
        )
        flat: list[Any] = []
        for name in names:
            value = bound[name]
            flat.extend(value) if name in call.list_lengths else flat.append(value)
        outputs = self.function.apply(*flat, call)
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
            with _below_autograd():
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
        saved = self.source.setup_context(inputs, result)  # save_for_backward(inputs, output)
        save_pytree(ctx, saved)
        differentiability = self.source.output_differentiability
        if differentiability is not None:
            outputs = result if isinstance(result, tuple) else (result,)
            frozen = [t for out, keep in zip(outputs, differentiability) if not keep for t in _flatten(out)
                      if isinstance(t, torch.Tensor)]
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
        if problems:
            raise GradientValidationError(op_name, problems, source.describe())
        return (*call.flat_grads(by_name), None)


def _any_requires_grad(values: Any) -> bool:
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in _flatten(list(values)))


def _legacy_inputs(op: ResolvedOp, bound: Mapping[str, Any]) -> Any:
    names = [a.name for a in op.arguments]
    cls = namedtuple(f"{op.qualname.split('::')[-1]}_args", names)  # type: ignore[misc]
    return cls(*(bound[n] for n in names))


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


# -- entry points ------------------------------------------------------------------------------------------
_CACHE_KEY = "customop-kernel"


def kernel_for(op: ResolvedOp, probe: Optional[Mapping[str, Any]] = None, cache: Optional[dict] = None) -> GradientCheckingKernel:
    """The kernel of ``op`` (its backward found once and kept in ``cache`` when given).

    ``probe``: bound arguments with an input that requires grad, needed to find the backward of a
    ``Library.define`` op (see :func:`find_backward`)."""
    key = (_CACHE_KEY, op.name)
    if cache is not None and key in cache:
        return cache[key]
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
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and getattr(compiler, "is_compiling", lambda: False)():
        return True
    try:
        from torch._C._functorch import peek_interpreter_stack
    except ImportError:
        return False
    return peek_interpreter_stack() is not None
