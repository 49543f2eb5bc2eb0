"""The ``customop`` marker: its signature, and turning its arguments into a validated :class:`CustomOpSpec`.

Every problem is a :class:`MarkerError` whose message names the argument, what was given and what is
allowed; the plugin prefixes the test's node id.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from .devices import parse_device
from .dtypes import DEFAULT_DTYPES, Tolerance, default_tolerance, parse_dtype
from .expectations import Skip, XFail
from .ops import OpResolutionError, ResolvedOp, resolve_op

__all__ = ["CustomOpSpec", "MarkerError", "parse_marker"]


class MarkerError(ValueError):
    """A bad marker argument; the message is complete except for the test's node id."""

    def __init__(self, argument: str, given: Any, allowed: str = "", *, problem: str = "") -> None:
        self.argument = argument
        given_text = given if isinstance(given, str) and given.startswith("<") else repr(given)
        detail = problem or f"allowed: {allowed}"
        super().__init__(f"customop marker argument {argument!r}: got {given_text}; {detail}")


@dataclass
class CustomOpSpec:
    """What one ``customop`` marker asks for, validated."""

    op: ResolvedOp
    samples: Optional[Callable[..., Any]]
    dtypes: list[torch.dtype]
    devices: Optional[list[str]]  # None: the run's devices
    checks: Optional[list[str]]  # None: the run's default checks
    atol: Optional[float] = None
    rtol: Optional[float] = None
    atol_scale: Optional[float] = None
    tolerances: dict[torch.dtype, Tolerance] = field(default_factory=dict)
    eps: Optional[float] = None
    fast_mode: Optional[bool] = None
    nondet_tol: float = 0.0
    supports_gradgrad: Optional[bool] = None
    supports_forward_ad: Optional[bool] = None
    xfails: tuple[XFail, ...] = ()
    skips: tuple[Skip, ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    derived_samples: bool = False  # no samples= given: samples are derived from the op's schema
    #: A plain PyTorch function with the op's signature (OpInfo's ``ref``): gradient items also compare the
    #: op's outputs and derivatives with its float64 autograd on the same input values.
    reference: Optional[Callable[..., Any]] = None
    #: A gradient larger than its input that the engine sums down (broadcast-reducible) fails grad_keys
    #: instead of being a note.
    strict_grad_shapes: bool = False

    def tolerance(self, dtype: torch.dtype) -> Tolerance:
        """The tolerance for ``dtype``: ``tolerances[dtype]``, else the default with ``atol``/``rtol``/
        ``atol_scale`` overriding its parts."""
        if dtype in self.tolerances:
            return self.tolerances[dtype]
        base = default_tolerance(dtype)
        return Tolerance(
            atol=base.atol if self.atol is None else self.atol,
            rtol=base.rtol if self.rtol is None else self.rtol,
            atol_scale=base.atol_scale if self.atol_scale is None else self.atol_scale,
        )

    def check_options(self, check: str) -> dict[str, Any]:
        """Per-check options given as ``options={"check_name": {...}}``."""
        return dict(self.options.get(check, {}))


_KNOWN = [
    "op",
    "samples",
    "dtypes",
    "devices",
    "checks",
    "atol",
    "rtol",
    "atol_scale",
    "tolerances",
    "eps",
    "fast_mode",
    "nondet_tol",
    "supports_gradgrad",
    "supports_forward_ad",
    "xfails",
    "skips",
    "options",
    "reference",
    "strict_grad_shapes",
]


def _as_list(argument: str, value: Any, allowed: str) -> list[Any]:
    if isinstance(value, (str, torch.dtype, torch.device)):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        if not value:
            raise MarkerError(argument, value, f"a non-empty list of {allowed}")
        return list(value)
    raise MarkerError(argument, value, f"a list of {allowed}")


def _number(argument: str, value: Any, *, positive: bool = False) -> Optional[float]:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value < 0
        or (positive and value == 0)
    ):
        raise MarkerError(argument, value, "a positive number" if positive else "a number >= 0")
    return float(value)


def _optional_bool(argument: str, value: Any) -> Optional[bool]:
    if value is None or isinstance(value, bool):
        return value
    raise MarkerError(argument, value, "True, False or None")


def _expectations(argument: str, value: Any, kind: type, known_checks: Sequence[str]) -> tuple[Any, ...]:
    items = [value] if isinstance(value, kind) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, kind) for v in items):
        raise MarkerError(argument, value, f"a list of pytest_customop.{kind.__name__}(reason, checks=, dtypes=, devices=)")
    for item in items:
        problem = item.field_problem(known_checks)
        if problem is None and item.devices is not None:
            for device in item.devices:
                try:
                    parse_device(device)
                except ValueError as exc:
                    problem = f"devices= {exc}; allowed: device strings like 'cpu', 'cuda', 'cuda:1'"
                    break
        if problem is not None:
            raise MarkerError(argument, item, problem=problem)
        if item.dtypes is not None:
            try:
                object.__setattr__(item, "dtypes", tuple(parse_dtype(d) for d in item.dtypes))
            except ValueError as exc:
                raise MarkerError(argument, item, str(exc)) from None
    return tuple(items)


def _tolerances(value: Any) -> dict[torch.dtype, Tolerance]:
    allowed = "a dict {dtype: (atol, rtol)} or {dtype: (atol, rtol, atol_scale)}"
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MarkerError("tolerances", value, allowed)
    result = {}
    for key, parts in value.items():
        try:
            dtype = parse_dtype(key)
        except ValueError as exc:
            raise MarkerError("tolerances", value, f"{allowed}; {exc}") from None
        if isinstance(parts, Tolerance):
            result[dtype] = parts
            continue
        if not (isinstance(parts, (tuple, list)) and len(parts) in (2, 3)):
            raise MarkerError("tolerances", value, allowed)
        numbers_given = [_number("tolerances", p) for p in parts]
        # A pair keeps the dtype's default scale term; a triple sets it (0: plain torch.allclose).
        atol_scale = numbers_given[2] if len(parts) == 3 else default_tolerance(dtype).atol_scale
        result[dtype] = Tolerance(atol=numbers_given[0], rtol=numbers_given[1], atol_scale=atol_scale)  # type: ignore[arg-type]
    return result


def parse_marker(
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    known_checks: Sequence[str],
    known_options: Optional[Mapping[str, Optional[Sequence[str]]]] = None,
) -> CustomOpSpec:
    """Validate the marker's arguments. Raises :class:`MarkerError`.

    Without ``samples=`` the samples are derived from the op's schema.
    """
    unknown = sorted(set(kwargs) - set(_KNOWN))
    if unknown:
        raise MarkerError(unknown[0], kwargs[unknown[0]], f"the keyword arguments {', '.join(_KNOWN[1:])}")
    if len(args) > 1:
        raise MarkerError("op", args, "one positional argument, the op; everything else by keyword")
    if args and "op" in kwargs:
        raise MarkerError("op", kwargs["op"], "the op given once, positionally or as op=")
    if not args and "op" not in kwargs:
        raise MarkerError("op", "<nothing>", "the op as first argument: customop('mylib::op', samples=...)")
    op_value = args[0] if args else kwargs["op"]
    try:
        op = resolve_op(op_value)
    except OpResolutionError as exc:
        raise MarkerError("op", op_value, problem=str(exc)) from None

    samples = kwargs.get("samples")
    if samples is not None and not callable(samples):
        raise MarkerError("samples", samples, "a callable samples(device, dtype, requires_grad) yielding SampleInput")
    derived_samples = samples is None
    if derived_samples:
        from .derived_samples import derive_samples

        samples = derive_samples(op)

    dtypes: list[Any] = list(DEFAULT_DTYPES)
    if kwargs.get("dtypes") is not None:
        dtypes = []
        for value in _as_list("dtypes", kwargs["dtypes"], "torch dtypes"):
            try:
                dtypes.append(parse_dtype(value))
            except ValueError as exc:
                raise MarkerError("dtypes", value, str(exc).split("; allowed: ", 1)[-1]) from None
    dtypes = list(dict.fromkeys(dtypes))

    devices = None
    if kwargs.get("devices") is not None:
        devices = []
        for value in _as_list("devices", kwargs["devices"], "device strings"):
            try:
                devices.append(parse_device(value))
            except ValueError as exc:
                raise MarkerError("devices", value, f"device strings torch knows, like 'cpu', 'cuda', 'cuda:1' ({exc})") from None
        devices = list(dict.fromkeys(devices))

    checks = None
    if kwargs.get("checks") is not None:
        checks = []
        for value in _as_list("checks", kwargs["checks"], "check names"):
            if value not in known_checks:
                raise MarkerError("checks", value, ", ".join(known_checks))
            checks.append(value)
        checks = list(dict.fromkeys(checks))

    fast_mode = kwargs.get("fast_mode")
    if fast_mode is not None and not isinstance(fast_mode, bool):
        raise MarkerError("fast_mode", fast_mode, "True (always fast), False (always slow) or None (by input size)")

    reference = kwargs.get("reference")
    if reference is not None and (not callable(reference) or isinstance(reference, type)):
        raise MarkerError(
            "reference",
            reference,
            "a plain PyTorch function with the op's signature (OpInfo's ref), e.g. reference=lambda x, y: x * y",
        )
    strict_grad_shapes = kwargs.get("strict_grad_shapes", False)
    if not isinstance(strict_grad_shapes, bool):
        raise MarkerError("strict_grad_shapes", strict_grad_shapes, "True or False")

    options = kwargs.get("options") or {}
    if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
        raise MarkerError("options", options, "a dict {check_name: {option: value}}")
    for name in options:
        if name not in known_checks:
            raise MarkerError("options", name, f"check names: {', '.join(known_checks)}")
        accepted = (known_options or {}).get(name)
        unknown_keys = [key for key in options[name] if accepted is not None and key not in accepted]
        if unknown_keys:
            raise MarkerError(
                "options",
                {name: options[name]},
                problem=f"check {name!r} takes no option {', '.join(map(repr, unknown_keys))}; "
                f"it takes: {', '.join(accepted) if accepted else 'none'}",
            )

    return CustomOpSpec(
        op=op,
        samples=samples,
        dtypes=dtypes,
        devices=devices,
        checks=checks,
        atol=_number("atol", kwargs.get("atol")),
        rtol=_number("rtol", kwargs.get("rtol")),
        atol_scale=_number("atol_scale", kwargs.get("atol_scale")),
        tolerances=_tolerances(kwargs.get("tolerances")),
        eps=_number("eps", kwargs.get("eps"), positive=True),
        fast_mode=fast_mode,
        nondet_tol=_number("nondet_tol", kwargs.get("nondet_tol", 0.0)) or 0.0,
        supports_gradgrad=_optional_bool("supports_gradgrad", kwargs.get("supports_gradgrad")),
        supports_forward_ad=_optional_bool("supports_forward_ad", kwargs.get("supports_forward_ad")),
        xfails=_expectations("xfails", kwargs.get("xfails", ()), XFail, known_checks),
        skips=_expectations("skips", kwargs.get("skips", ()), Skip, known_checks),
        options={k: dict(v) for k, v in options.items()},
        derived_samples=derived_samples,
        reference=reference,
        strict_grad_shapes=strict_grad_shapes,
    )
