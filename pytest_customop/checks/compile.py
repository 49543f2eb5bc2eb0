"""``compile``: the op's forward and backward under ``torch.compile`` agree with eager.

A small function that calls the op is compiled with ``fullgraph=True`` (without it, whatever dynamo
cannot trace silently runs eagerly and nothing is tested) for each backend (``eager`` and
``aot_eager`` by default: neither needs a C compiler; ``aot_eager`` is the one that traces the fake
kernel and the backward). Each sample's outputs, and its gradients for one random grad_output, are
compared with eager mode's under the dtype's tolerance. An op that mutates its inputs is compared on
its outputs and the mutated inputs.

Dynamo's caches are reset before each backend, so every item starts clean and compiles once per
sample shape (``dynamic=False``). The first compilation in a process pays a one-time warm-up (about
a second), noted in the result that paid it.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from ..differentiation import OpCall, Slot, flatten_outputs, random_like, vjp, worst_mismatch
from ..dtypes import dtype_id
from ..fake_kernels import missing_fake_kernel
from ..samples import SampleInput
from ..torch_internals import dynamo_unsupported_reason, reset_compiled
from ._support import wants_gradients
from .base import Check, CheckContext, CheckResult, Finding
from .opcheck import first_lines

__all__ = ["CompileCheck", "DEFAULT_BACKENDS"]

#: Backends compiled with by default: both run without a C compiler.
DEFAULT_BACKENDS = ("eager", "aot_eager")

# Loggers that print a full traceback for a failure the check reports in one line.
_NOISY_LOGGERS = ("torch._subclasses.fake_tensor", "torch._dynamo", "torch._inductor", "torch.fx.experimental.symbolic_shapes")

_warmed_up = False


def _call_op(op: Any, args: tuple, kwargs: dict) -> Any:
    """The function handed to torch.compile: a call of the op, nothing else to trace."""
    return op(*args, **kwargs)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    previous = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, was in zip(loggers, previous):
            logger.disabled = was


def _dynamo_unsupported_reason() -> Optional[str]:
    return dynamo_unsupported_reason()


def _differentiable(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.requires_grad


@dataclass
class _Run:
    """One sample run through a callable: outputs, tensor inputs after the call, gradients (None
    when no output requires grad)."""

    outputs: list[Any]
    inputs_after: dict[str, Any]
    grads: Optional[list[Optional[torch.Tensor]]]


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return [_detached(v) for v in value]
    return value


def _run(fn: Any, op: Any, sample: SampleInput, weights_for: Callable[[list[torch.Tensor]], list[torch.Tensor]]) -> _Run:
    """Call ``fn(op.overload, args, kwargs)`` on fresh copies of ``sample``; backward with the weights."""
    call = OpCall(op, sample.map(lambda t: t.detach().clone().requires_grad_(t.requires_grad)))
    leaves = call.leaves()
    bound = call.substitute(leaves)
    args, kwargs = op.split_bound(bound)
    with torch.enable_grad():
        outputs = flatten_outputs(fn(op.overload, args, kwargs))
    differentiable = [o for o in outputs if _differentiable(o)]
    grads = vjp(differentiable, leaves, weights_for(differentiable)) if leaves and differentiable else None
    tensors_after = {
        name: _detached(value)
        for name, value in bound.items()
        if isinstance(value, torch.Tensor)
        or (isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value))
    }
    return _Run(_detached(outputs), tensors_after, grads)


class CompileCheck(Check):
    """Forward and backward under ``torch.compile(fullgraph=True)`` agree with eager.

    Options (``options={"compile": {...}}``): ``backends`` (default ``["eager", "aot_eager"]``),
    ``fullgraph`` (default True), ``dynamic`` (default False).
    """

    name = "compile"
    options_accepted = ("backends", "fullgraph", "dynamic")
    description = "forward and backward under torch.compile(fullgraph=True) agree with eager"

    def not_applicable(self, op: Any, spec: Any) -> Optional[str]:
        if not any(a.kind.is_tensor_like for a in op.arguments):
            return f"{op.name} takes no tensor argument"
        if op.registration.name == "AUTOGRAD_FUNCTION" and op.compile_unsupported_reason():
            return op.compile_unsupported_reason()
        return None  # whether dynamo runs here is asked in run(): importing it takes seconds

    def run(self, ctx: CheckContext) -> CheckResult:
        global _warmed_up
        samples = ctx.samples(requires_grad=wants_gradients(ctx))
        no_fake = missing_fake_kernel(ctx.op, samples)
        if no_fake:
            # Dynamo runs every op on fake tensors while it traces, whatever the backend. Asked
            # before importing dynamo, which takes seconds.
            return ctx.skipped(f"torch.compile traces with fake tensors: {no_fake}", total=len(samples))
        reason = _dynamo_unsupported_reason()
        if reason:
            return ctx.skipped(reason)
        options = ctx.options
        backends = options.get("backends", DEFAULT_BACKENDS)
        if isinstance(backends, str):
            backends = [backends]
        fullgraph = bool(options.get("fullgraph", True))
        dynamic = options.get("dynamic", False)
        findings: list[Finding] = []
        notes: list[str] = []
        failed_samples: set[int] = set()
        started = time.perf_counter()
        for backend in backends:
            reset_compiled()
            compiled = torch.compile(_call_op, backend=backend, fullgraph=fullgraph, dynamic=dynamic)
            for index, sample in enumerate(samples):
                if index in failed_samples:
                    continue  # a later backend traces through dynamo too: it would repeat the finding
                problem = self._compare(ctx, compiled, backend, index, sample)
                if problem is not None:
                    findings.append(problem)
                    failed_samples.add(index)
        reset_compiled()
        elapsed = time.perf_counter() - started
        notes.append(f"backends: {', '.join(backends)} (fullgraph={fullgraph}, dynamic={dynamic})")
        if not _warmed_up:
            _warmed_up = True
            notes.append(f"{elapsed:.1f} s, including torch.compile's one-time warm-up in this process")
        checked = len(samples) - len(failed_samples)
        if findings:
            return ctx.failed(findings, total=len(samples), checked=checked, notes=notes)
        return ctx.passed(len(samples), len(samples), notes=notes)

    def _compare(self, ctx: CheckContext, compiled: Any, backend: str, index: int, sample: SampleInput) -> Optional[Finding]:
        try:
            slots = OpCall(ctx.op, sample).slots
        except TypeError as exc:
            return Finding(index, f"the sample does not fit the schema: {exc}")
        generator = ctx.generator(index)
        weights: list[torch.Tensor] = []

        def draw(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
            weights.extend(random_like(o.detach(), generator) for o in outputs)
            return weights

        def same_weights(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [w.to(o.dtype) for w, o in zip(weights, outputs)]

        try:
            expected = _run(_call_op, ctx.op, sample, draw)
        except Exception as exc:
            return Finding(index, f"eager forward or backward raised {type(exc).__name__}: {first_lines(str(exc), 1)}")
        label = f"torch.compile(backend={backend!r})"
        try:
            with _quiet():
                got = _run(compiled, ctx.op, sample, same_weights)
        except Exception as exc:
            return Finding(index, f"{label} raised {type(exc).__name__}: {first_lines(str(exc), 3)}")
        return self._difference(ctx, label, index, expected, got, slots)

    def _difference(
        self, ctx: CheckContext, label: str, index: int, expected: _Run, got: _Run, slots: list[Slot]
    ) -> Optional[Finding]:
        if len(expected.outputs) != len(got.outputs):
            return Finding(index, f"{label} returned {len(got.outputs)} output(s), eager {len(expected.outputs)}")
        pairs: list[tuple[str, Optional[str], Any, Any]] = [
            (f"output {k}", None, e, g) for k, (e, g) in enumerate(zip(expected.outputs, got.outputs))
        ]
        if ctx.op.is_mutable:
            pairs += [
                (f"input '{name}' after the call", name, value, got.inputs_after[name])
                for name, value in expected.inputs_after.items()
            ]
        if (expected.grads is None) != (got.grads is None):
            which = "compiled" if got.grads is None else "eager"
            return Finding(index, f"{label}: no output of the {which} call requires grad; the other's do")
        if expected.grads is not None and got.grads is not None:
            pairs += [
                (f"gradient of input {slot.label}", slot.name, e, g) for slot, e, g in zip(slots, expected.grads, got.grads)
            ]
        for what, name, e, g in pairs:
            problem = _disagreement(e, g, ctx)
            if problem is not None:
                return Finding(index, f"{label}: {what} {problem}", input_name=name)
        return None


def _disagreement(expected: Any, got: Any, ctx: CheckContext) -> Optional[str]:
    """How ``got`` (compiled) differs from ``expected`` (eager), or None when they agree."""
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and len(expected) == len(got):
        for k, (e, g) in enumerate(zip(expected, got)):
            problem = _disagreement(e, g, ctx)
            if problem is not None:
                return f"[{k}] {problem}"
        return None
    if isinstance(expected, torch.Tensor) and isinstance(got, torch.Tensor):
        if expected.shape != got.shape or expected.dtype != got.dtype:
            return (
                f"has shape {list(got.shape)} and dtype {dtype_id(got.dtype)}, eager gives "
                f"{list(expected.shape)} and {dtype_id(expected.dtype)} (is the fake kernel right?)"
            )
        if not (expected.is_floating_point() or expected.is_complex()):
            return None if torch.equal(expected.cpu(), got.cpu()) else "differs from eager (exact values expected)"
    elif expected is None and isinstance(got, torch.Tensor) or got is None and isinstance(expected, torch.Tensor):
        pass  # a missing gradient counts as zeros
    elif isinstance(expected, torch.Tensor) or isinstance(got, torch.Tensor) or expected != got:
        return f"is {got!r}, eager gives {expected!r}"
    else:
        return None
    mismatch = worst_mismatch(got, expected, ctx.tolerance)
    return None if mismatch is None else f"differs from eager: {mismatch.describe('eager', 'compiled')}"
