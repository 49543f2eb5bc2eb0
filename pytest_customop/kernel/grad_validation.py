"""What a custom op's backward must return, and what is wrong with what it returned: problems named by
op and input (:class:`GradientProblem`, :class:`GradientValidationError`), the metadata a gradient must
match (:class:`TensorMeta`, :class:`InputDescription`), and the rules (:func:`validate_gradients`,
:func:`positional_to_dict`, :func:`validate_dict_keys`). Modelled on ``validate_grad_inputs_dict`` in
``torch/_custom_op/autograd.py``. No pytest here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

from ..dtypes import dtype_id
from ..ops import ArgInfo

__all__ = [
    "GradientProblem",
    "GradientValidationError",
    "InputDescription",
    "TensorMeta",
    "describe_inputs",
    "dict_to_positional",
    "positional_to_dict",
    "tensor_problems",
    "validate_dict_keys",
    "validate_gradients",
]


# -- problems ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GradientProblem:
    """One thing wrong with what backward returned or did; ``input_name`` is a schema argument name."""

    message: str
    input_name: Optional[str] = None
    #: A larger gradient the engine's ``sum_to`` reduces to the input's shape by design: a note unless
    #: the marker asks for strict shapes.
    reducible: bool = False


class GradientValidationError(RuntimeError):
    """A custom op's backward returned gradients that do not fit its inputs (or modified what it must
    not). ``problems`` lists each, by input name."""

    def __init__(self, op_name: str, problems: Sequence[GradientProblem], backward: str = "") -> None:
        self.op_name = op_name
        self.problems = list(problems)
        self.backward = backward
        prefix = f"{op_name}: "
        lines = [f"the backward of {op_name} is wrong:"] + [
            f"  {p.message[len(prefix) :] if p.message.startswith(prefix) else p.message}" for p in self.problems
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
    def of(cls, t: torch.Tensor) -> TensorMeta:
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
    if tuple(grad.shape) != meta.shape and _broadcasts_to(grad.shape, meta.shape):
        problems.append(
            GradientProblem(
                f"{where} has shape {list(grad.shape)}, larger than the input's {list(meta.shape)}: relies on the "
                f"engine to reduce {list(grad.shape)} to {list(meta.shape)}",
                name,
                reducible=True,
            )
        )
    elif tuple(grad.shape) != meta.shape:
        problems.append(
            GradientProblem(f"{where}: expected shape {list(meta.shape)} (the input's), got {list(grad.shape)}", name)
        )
    if grad.dtype != meta.dtype:
        problems.append(
            GradientProblem(
                f"{where}: expected dtype {dtype_id(meta.dtype)} (the input's), got {dtype_id(grad.dtype)} "
                "(torch would cast it silently)",
                name,
            )
        )
    if grad.device != meta.device:
        problems.append(GradientProblem(f"{where}: expected device {meta.device} (the input's), got {grad.device}", name))
    if grad.layout != meta.layout:
        problems.append(GradientProblem(f"{where}: expected layout {meta.layout} (the input's), got {grad.layout}", name))
    return problems


def _broadcasts_to(got: Sequence[int], expected: Sequence[int]) -> bool:
    """True when a gradient of shape ``got`` would be summed down to ``expected`` by the engine."""
    if len(got) < len(expected):
        return False
    tail = list(got)[len(got) - len(expected) :]
    return all(g == e or e == 1 for g, e in zip(tail, expected))


def validate_gradients(op_name: str, inputs: Mapping[str, InputDescription], grads: Mapping[str, Any]) -> list[GradientProblem]:
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
                problems.append(
                    GradientProblem(
                        f"{op_name}: the gradient for input {desc.what()}: expected None (not a tensor), got {_show(grad)}",
                        name,
                    )
                )
            continue
        if grad is None:
            continue
        if not isinstance(grad, torch.Tensor):
            problems.append(
                GradientProblem(
                    f"{op_name}: the gradient for input {desc.what()}: expected a Tensor or None, got {_show(grad)}", name
                )
            )
            continue
        problems.extend(tensor_problems(op_name, f"'{name}'", grad, desc.tensor))
    return problems


def _list_problems(op_name: str, desc: InputDescription, grad: Any) -> list[GradientProblem]:
    assert desc.elements is not None
    count = len(desc.elements)
    expected = f"a list of {count} (None or Tensor, one per element)"
    if not isinstance(grad, (list, tuple)):
        return [
            GradientProblem(f"{op_name}: the gradient for input {desc.what()}: expected {expected}, got {_show(grad)}", desc.name)
        ]
    if len(grad) != count:
        return [
            GradientProblem(
                f"{op_name}: the gradient for input {desc.what()}: expected {expected}, got a list of {len(grad)}", desc.name
            )
        ]
    problems = []
    for index, (g, meta) in enumerate(zip(grad, desc.elements)):
        label = f"'{desc.name}'[{index}]"
        if g is None:
            continue
        if not isinstance(g, torch.Tensor):
            problems.append(
                GradientProblem(
                    f"{op_name}: the gradient for input {label}: expected a Tensor or None, got {_show(g)}", desc.name
                )
            )
        elif meta is None:
            problems.append(
                GradientProblem(
                    f"{op_name}: the gradient for input {label}: expected None (the element was None), got {_show(g)}", desc.name
                )
            )
        else:
            problems.extend(tensor_problems(op_name, label, g, meta))
    return problems


# -- from what backward returned to one entry per input name -------------------------------------------
def positional_to_dict(op_name: str, positional: Sequence[ArgInfo], result: Any) -> tuple[dict[str, Any], list[GradientProblem]]:
    """A ``register_autograd`` backward's result (a tuple, one per positional argument; or a single
    value for one argument) as a dict by argument name, and the count problems."""
    names = [a.name for a in positional]
    entries = list(result) if isinstance(result, tuple) else [result]
    problems = []
    expected = f"{len(names)}, one per positional input ({', '.join(names)})"
    if len(entries) < len(names):
        missing = names[len(entries) :]
        got = f"{len(entries)}" + ("" if isinstance(result, tuple) else f" ({_show(result)}, not a tuple)")
        problems.append(
            GradientProblem(
                f"{op_name}: backward returned {got} gradient(s), expected {expected}: "
                f"nothing for input {', '.join(repr(m) for m in missing)}",
                missing[0],
            )
        )
    elif len(entries) > len(names):
        extra = entries[len(names) :]
        after = f"after the last input {names[-1]!r}" if names else "(the op has no inputs)"
        silently = " (torch drops a trailing None silently)" if all(e is None for e in extra) else ""
        problems.append(
            GradientProblem(
                f"{op_name}: backward returned {len(entries)} gradients, expected {expected}: extra trailing "
                f"{'entry' if len(extra) == 1 else 'entries'} {', '.join(_show(e) for e in extra)} {after}{silently}",
                names[-1] if names else None,
            )
        )
    return dict(zip(names, entries)), problems


def validate_dict_keys(op_name: str, arguments: Sequence[ArgInfo], result: Any) -> list[GradientProblem]:
    """Problems with a legacy-contract backward result: a dict keyed by exactly the tensor-like inputs."""
    expected = [a.name for a in arguments if a.kind.is_tensor_like]
    shown_expected = "{" + ", ".join(repr(n) for n in expected) + "}"
    if not isinstance(result, dict):
        return [
            GradientProblem(
                f"{op_name}: backward must return a dict keyed by input name (the legacy contract), expected keys "
                f"{shown_expected}, got {_show(result)}"
            )
        ]
    shown_got = "{" + ", ".join(repr(k) for k in result) + "}"
    problems = []
    non_tensor = {a.name: a for a in arguments if not a.kind.is_tensor_like}
    for name in expected:
        if name not in result:
            problems.append(
                GradientProblem(
                    f"{op_name}: the dict returned by backward has no key {name!r}: expected keys {shown_expected} "
                    f"(one per tensor input, None allowed), got {shown_got}",
                    name,
                )
            )
    for key in result:
        if key in expected:
            continue
        if key in non_tensor:
            why = f"input {key!r} is a {non_tensor[key].type}, not a tensor: it takes no gradient"
        else:
            why = f"{op_name} has no input {key!r}"
        problems.append(
            GradientProblem(
                f"{op_name}: the dict returned by backward has an extra key {key!r} ({why}): expected keys "
                f"{shown_expected}, got {shown_got}",
                key if key in non_tensor else None,
            )
        )
    return problems


def dict_to_positional(arguments: Sequence[ArgInfo], grads: Mapping[str, Any]) -> tuple:
    """One entry per argument in ``arguments`` (None where ``grads`` has none)."""
    return tuple(grads.get(a.name) for a in arguments)
