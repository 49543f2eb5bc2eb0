"""Sample inputs: what authors yield, and the conversions the checks need.

A :class:`SampleInput` holds the positional and keyword arguments of one call of the op under test.
PyTorch's own OpInfo ``SampleInput`` objects (``input``, ``args``, ``kwargs``) are accepted too and
converted by :func:`as_sample_input`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

__all__ = ["MAX_SAMPLES", "SampleInput", "SamplesError", "as_sample_input", "collect_samples", "map_tensors", "safe_repr"]

#: The most samples one item takes from ``samples=``: more is an error naming ``samples`` (an endless
#: generator would otherwise hang the run; every sample costs a gradcheck).
MAX_SAMPLES = 256


def safe_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, or a description of the value when its ``__repr__`` raises; cut at ``limit``."""
    try:
        text = repr(value)
    except Exception as exc:  # the author's object: describe it, never traceback through the plugin
        text = f"<{type(value).__name__} object (its repr raised {type(exc).__name__})>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<str() of the {type(exc).__name__} raised too>"


class SampleInput:
    """One call of the op under test: ``SampleInput(x, y, alpha=2.0)`` calls ``op(x, y, alpha=2.0)``.

    ``name`` (keyword ``sample_name`` to keep ``name`` free for the op's own arguments) is an optional
    label shown in failure messages.
    """

    __slots__ = ("args", "kwargs", "name")

    def __init__(self, *args: Any, sample_name: str = "", **kwargs: Any) -> None:
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        self.name = sample_name

    def __repr__(self) -> str:
        parts = [_describe(a) for a in self.args]
        parts += [f"{k}={_describe(v)}" for k, v in self.kwargs.items()]
        label = f" {self.name!r}" if self.name else ""
        return f"SampleInput{label}({', '.join(parts)})"

    def map(self, fn: Callable[[Any], Any]) -> SampleInput:
        """A copy with ``fn`` applied to every tensor (also inside lists and tuples)."""
        return SampleInput(
            *map_tensors(fn, self.args),
            sample_name=self.name,
            **{k: map_tensors(fn, v) for k, v in self.kwargs.items()},
        )


class SamplesError(Exception):
    """The ``samples`` callable misbehaved; the message is for the test's author."""


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def map_tensors(fn: Callable[[Any], Any], value: Any) -> Any:
    """Apply ``fn`` to every tensor in ``value`` (a tensor, or a list/tuple nesting of them)."""
    if _is_tensor(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def _describe(value: Any) -> str:
    if _is_tensor(value):
        grad = ", requires_grad" if value.requires_grad else ""
        dtype = str(value.dtype).replace("torch.", "")
        return f"Tensor({list(value.shape)}, {dtype}, {value.device}{grad})"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_describe(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return safe_repr(value)


def _is_opinfo_sample(obj: Any) -> bool:
    # torch.testing._internal.opinfo.core.SampleInput, recognised without importing PyTorch's test
    # internals (they pull in expecttest and friends).
    return (
        type(obj).__name__ == "SampleInput"
        and type(obj).__module__.startswith("torch.testing")
        and hasattr(obj, "input")
        and hasattr(obj, "args")
        and hasattr(obj, "kwargs")
    )


def as_sample_input(obj: Any) -> SampleInput | None:
    """Convert a yielded object to a :class:`SampleInput`, or None when it is not one."""
    if isinstance(obj, SampleInput):
        return obj
    if _is_opinfo_sample(obj):
        name = getattr(obj, "name", "") or ""
        return SampleInput(obj.input, *obj.args, sample_name=name, **(obj.kwargs or {}))
    return None


def collect_samples(samples_fn: Callable[..., Iterable[Any]], device: str, dtype: Any, requires_grad: bool) -> list[SampleInput]:
    """Call the author's ``samples(device, dtype, requires_grad)`` and validate what it yields."""
    where = f"samples(device={device!r}, dtype={dtype}, requires_grad={requires_grad})"
    import itertools

    try:
        produced = samples_fn(device, dtype, requires_grad)
        items = list(itertools.islice(produced, MAX_SAMPLES + 1))
    except (Exception, SystemExit) as exc:  # the author's code: report, never crash the run
        raise SamplesError(f"{where} raised {type(exc).__name__}: {_safe_str(exc)}") from exc
    if len(items) > MAX_SAMPLES:
        raise SamplesError(
            f"{where} yielded more than {MAX_SAMPLES} samples (an endless generator?); an item takes at most "
            f"{MAX_SAMPLES}: yield fewer, or split them over several tests"
        )
    if not items:
        raise SamplesError(f"{where} yielded nothing; it must yield at least one SampleInput")
    converted = []
    for index, item in enumerate(items):
        sample = as_sample_input(item)
        if sample is None:
            raise SamplesError(
                f"{where} yielded {type(item).__name__} {safe_repr(item, 80)} at index {index}; "
                "allowed: pytest_customop.SampleInput or torch.testing's OpInfo SampleInput"
            )
        meta = _meta_tensor_path(sample) if str(device).split(":")[0] != "meta" else None
        if meta is not None:
            raise SamplesError(
                f"{where} yielded a meta tensor ({meta}) in sample {index}; meta tensors hold no values, so no "
                f"gradient can be checked: build the sample's tensors on the device given ({device!r})"
            )
        converted.append(sample)
    return converted


def _meta_tensor_path(sample: SampleInput) -> str | None:
    """Where the first meta tensor of ``sample`` is (``argument 0``, ``keyword 'w'``), or None."""
    found: list[bool] = []

    def note(tensor: Any) -> Any:
        found.append(bool(tensor.is_meta))
        return tensor

    for index, value in enumerate(sample.args):
        found.clear()
        map_tensors(note, value)
        if any(found):
            return f"argument {index}"
    for key, value in sample.kwargs.items():
        found.clear()
        map_tensors(note, value)
        if any(found):
            return f"keyword {key!r}"
    return None
