"""Edge-shape variants of a sample, in two tiers: proven by the op's own forward, or merely suspected.

A *proven* variant comes from a relation that the op's forward confirms on the original sample:

- **a shared dimension**: a size that the inputs and the outputs share (a batch or a sequence), found by
  matching sizes. Slicing it to 1 in every tensor that has it (index and mask tensors included: they
  change together with the dimension they index) must give the first slice of the original output; when
  the forward confirms that, the slice to 0 is proven too (the op computes that dimension entry by
  entry, so an empty one is a valid input) and must give an empty output there;
- **a size-1 broadcast**: an input under test given size 1 in one dimension must give the output of that
  input broadcast back (expanded explicitly) to its shape.

Every other variant (a dimension of one size made 0 or 1 in the inputs under test alone, an input made
0-dim, an input without its leading dimension) is *suspected*: the forward accepts it, but nothing
shows it is an input the op means to support. Only the differentiable inputs that require grad change in
suspected variants; integer, bool and buffer tensors keep their shape and values.

The confirming forwards go through :func:`pytest_customop.isolation.run_contained`, so a compiled kernel
crashing on a probe costs that relation, not the run. No pytest here.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from .differentiation import flatten_outputs
from .dtypes import is_differentiable_dtype
from .isolation import Crash, run_contained
from .samples import SampleInput

__all__ = ["EdgeVariant", "edge_variants", "sample_tensors", "tensor_names"]

#: Relations tried per sample (each costs one or two forwards on the original sample's slices).
MAX_CANDIDATES = 12


@dataclass
class EdgeVariant:
    """One derived sample: what was changed, and whether the op's forward proved it a valid input.

    ``evidence`` says what the forward gave that proves it; ``expected_shapes`` are the output shapes a
    proven shared-dimension slice must give (None when not checked)."""

    description: str
    sample: SampleInput
    proven: bool
    evidence: str = ""
    expected_shapes: Optional[list[Optional[tuple[int, ...]]]] = None
    source: int = 0  # index of the given sample it was derived from

    def signature(self) -> str:
        return repr(SampleInput(*self.sample.args, **self.sample.kwargs))


def sample_tensors(sample: SampleInput) -> list[torch.Tensor]:
    """The tensors of ``sample`` in traversal order (lists included)."""
    found: list[torch.Tensor] = []

    def collect(t: torch.Tensor) -> torch.Tensor:
        found.append(t)
        return t

    sample.map(collect)
    return found


def tensor_names(op: Any, sample: SampleInput, tensors: Sequence[torch.Tensor]) -> list[str]:
    """Each tensor's schema name (``'x'``, ``'xs'[1]``), by identity."""
    by_id: dict[int, str] = {}
    try:
        for name, value in op.bind(sample).items():
            if isinstance(value, torch.Tensor):
                by_id[id(value)] = f"'{name}'"
            elif isinstance(value, (list, tuple)):
                for k, item in enumerate(value):
                    if isinstance(item, torch.Tensor):
                        by_id[id(item)] = f"'{name}'[{k}]"
    except TypeError:
        pass
    return [by_id.get(id(t), f"tensor {k}") for k, t in enumerate(tensors)]


def _under_test(t: torch.Tensor) -> bool:
    return is_differentiable_dtype(t.dtype) and t.requires_grad


def rebuild(sample: SampleInput, change: Callable[[int, torch.Tensor], torch.Tensor]) -> SampleInput:
    """``sample`` with its k-th tensor replaced by ``change(k, values)`` (contiguous, requires_grad kept)."""
    counter = itertools.count()

    def apply(t: torch.Tensor) -> torch.Tensor:
        new = change(next(counter), t.detach()).clone().contiguous()
        return new.requires_grad_(True) if t.requires_grad else new

    return sample.map(apply)


def _one_narrowed(sample: SampleInput, k: int, d: int) -> SampleInput:
    """``sample`` with tensor ``k`` given size 1 in dimension ``d``."""
    return rebuild(sample, lambda j, t: t.narrow(d, 0, 1) if j == k else t)


def _made_0_dim(sample: SampleInput, chosen: set[int]) -> SampleInput:
    return rebuild(sample, lambda j, t: t.reshape(-1)[0] if j in chosen else t)


def _without_leading(sample: SampleInput, k: int) -> SampleInput:
    return rebuild(sample, lambda j, t: t[0] if j == k else t)


def _forward(op: Any, sample: SampleInput) -> list[Any]:
    with torch.no_grad():
        result = op.call_bound(op.bind(sample.map(lambda t: t.detach())))
    return [o.detach() if isinstance(o, torch.Tensor) else o for o in flatten_outputs(result)]


def _close(got: torch.Tensor, expected: torch.Tensor) -> bool:
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    if not (got.is_floating_point() or got.is_complex()):
        return bool(torch.equal(got, expected))
    # A slice may be computed in another reduction order: allow rounding at the output's precision.
    rtol = {torch.float64: 1e-7, torch.complex128: 1e-7, torch.float32: 1e-4, torch.complex64: 1e-4}.get(got.dtype, 2e-2)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    return bool(torch.allclose(got, expected, rtol=rtol, atol=rtol * scale, equal_nan=True))


def _shape(t: Any) -> str:
    return str(list(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _output_names(count: int, positions: Sequence[int]) -> str:
    if count == 1:
        return "the output"
    return " and ".join(f"output {p}" for p in positions)


@dataclass
class _SharedDim:
    size: int
    dims: dict[int, list[int]]  # tensor index -> its dimensions of this size that are sliced
    label: str = ""
    expected: list[Any] = field(default_factory=list)  # per output: the first slice, or None if unchanged


def _sliced(sample: SampleInput, dims: dict[int, list[int]], to: int) -> SampleInput:
    def change(k: int, t: torch.Tensor) -> torch.Tensor:
        for d in dims.get(k, ()):
            t = t.narrow(d, 0, to)
        return t

    return rebuild(sample, change)


def _shared_dim_candidates(tensors: list[torch.Tensor], outputs: list[Any]) -> list[_SharedDim]:
    out_sizes = {e for o in outputs if isinstance(o, torch.Tensor) for e in o.shape}
    sizes = sorted({e for t in tensors for e in t.shape if e >= 2 and e in out_sizes})
    candidates: list[_SharedDim] = []
    alternatives: list[_SharedDim] = []
    for size in sizes:
        every = {k: [d for d, e in enumerate(t.shape) if e == size] for k, t in enumerate(tensors)}
        every = {k: dims for k, dims in every.items() if dims}
        options = [every]
        if any(len(dims) > 1 for dims in every.values()):  # a size at several dimensions: try one each
            options += [{k: dims[:1] for k, dims in every.items()}, {k: dims[-1:] for k, dims in every.items()}]
        # The size shared by coincidence with one tensor (a kernel width equal to the batch): leave out a
        # tensor that has it at a position (counted from the end) no other tensor has it at. Tensors that
        # share the position (a and x of a scan) change together or not at all: the forward of a loop
        # over x's length would accept an x shorter than a, an input no caller makes.
        aligned = {k: {d - tensors[k].dim() for d in dims} for k, dims in every.items()}
        for left_out in every:
            others = set().union(*(aligned[k] for k in every if k != left_out)) if len(every) > 1 else set()
            if len(every) > 1 and not aligned[left_out] & others:
                options.append({k: dims for k, dims in every.items() if k != left_out})
        candidates.append(_SharedDim(size, every))
        alternatives.extend(_SharedDim(size, dims) for dims in options[1:] if dims and dims != every)
    return candidates + alternatives  # each size's plain relation first, so a cap keeps every size


def _describe_dims(shared: _SharedDim, names: list[str], to: int, outputs: str) -> str:
    places = [(names[k], d) for k, dims in shared.dims.items() for d in dims]
    positions = {d for _, d in places}
    holders = sorted(dict.fromkeys(name for name, _ in places), key=[n for n, _ in places].index)
    if len(positions) == 1:
        where = f"dimension {positions.pop()}, shared by {', '.join(holders)} and {outputs}"
    else:
        spots = ", ".join(f"dimension {d} of {name}" for name, d in places)
        where = f"the dimension of size {shared.size} ({spots}), shared with {outputs}"
    return f"{where}, sliced to {to}"


def _confirm_shared(op: Any, sample: SampleInput, outputs: list[Any], shared: _SharedDim) -> Any:
    """The expected first slice of each output (None where the output keeps its shape), or a string
    saying why the forward does not confirm the relation."""
    try:
        got = _forward(op, _sliced(sample, shared.dims, 1))
    except Exception as exc:
        return f"the forward rejects the slice ({type(exc).__name__})"
    if len(got) != len(outputs):
        return "the forward returns another number of outputs"
    expected: list[Any] = []
    changed: list[int] = []
    for position, (new, old) in enumerate(zip(got, outputs)):
        if not isinstance(old, torch.Tensor):
            expected.append(None)
            continue
        if not isinstance(new, torch.Tensor) or new.dim() != old.dim():
            return f"output {position} changes rank"
        dims = [d for d, (a, b) in enumerate(zip(new.shape, old.shape)) if a != b]
        if any(old.shape[d] != shared.size or new.shape[d] != 1 for d in dims):
            return f"output {position} changes shape otherwise ({_shape(old)} -> {_shape(new)})"
        reference = old
        for d in dims:
            reference = reference.narrow(d, 0, 1)
        if not _close(new, reference):
            return f"output {position} is not the slice of the original output"
        expected.append(tuple(dims))
        if dims:
            changed.append(position)
    if not changed:
        return "no output has that dimension"
    return expected


def _extent_at(t: Any, aligned: int) -> Optional[int]:
    return t.shape[aligned] if isinstance(t, torch.Tensor) and t.dim() >= -aligned else None


def _broadcast_candidates(tensors: list[torch.Tensor], outputs: list[Any]) -> list[tuple[int, int]]:
    """(tensor, dimension) pairs whose size-1 broadcast may be a relation: another input under test has
    that size at the same position counted from the end (what the input broadcasts against), and so does
    an output (the dimension broadcasts into the result, as in elementwise ops). A size shared with a
    mask or index tensor alone, or absent from the output (the keys' length of an attention), is not."""
    found = []
    for k, t in enumerate(tensors):
        if not _under_test(t):
            continue
        for d, extent in enumerate(t.shape):
            if extent < 2:
                continue
            aligned = d - t.dim()
            partner = any(j != k and _under_test(u) and _extent_at(u, aligned) == extent for j, u in enumerate(tensors))
            if partner and any(_extent_at(o, aligned) == extent for o in outputs):
                found.append((k, d))
    return found


def _confirm_broadcast(op: Any, sample: SampleInput, k: int, d: int, shape: tuple[int, ...]) -> Any:
    narrow = rebuild(sample, lambda j, t: t.narrow(d, 0, 1) if j == k else t)
    expanded = rebuild(sample, lambda j, t: t.narrow(d, 0, 1).expand(shape) if j == k else t)
    try:
        got, want = _forward(op, narrow), _forward(op, expanded)
    except Exception as exc:
        return f"the forward rejects it ({type(exc).__name__})"
    if len(got) != len(want):
        return "the forward returns another number of outputs"
    for position, (g, w) in enumerate(zip(got, want)):
        if isinstance(w, torch.Tensor) and not (isinstance(g, torch.Tensor) and _close(g, w)):
            return f"output {position} differs from the output of the input broadcast explicitly"
    return True


def _suspected(sample: SampleInput, tensors: list[torch.Tensor], names: list[str]) -> list[tuple[str, SampleInput]]:
    """Variants that change the inputs under test only, with no relation to show they are valid."""
    testing = [k for k, t in enumerate(tensors) if _under_test(t)]
    if not testing:
        return []
    sizes = sorted({e for k in testing for e in tensors[k].shape})
    label = " and ".join(names[k] for k in testing)

    def resize(size: int, to: int) -> SampleInput:
        def change(k: int, t: torch.Tensor) -> torch.Tensor:
            if k in testing:
                for d, e in enumerate(t.shape):
                    if e == size:
                        t = t.narrow(d, 0, to)
            return t

        return rebuild(sample, change)

    zero = [(f"every dimension of size {s} of {label} made 0", resize(s, 0)) for s in sizes if s >= 1]
    ones = [(f"every dimension of size {s} of {label} made 1", resize(s, 1)) for s in sizes if s >= 2]
    groups: dict[tuple[int, ...], list[int]] = {}
    for k in testing:
        if tensors[k].dim() >= 1 and tensors[k].numel() > 0:
            groups.setdefault(tuple(tensors[k].shape), []).append(k)
    scalar: list[tuple[str, SampleInput]] = []
    for members in groups.values():
        chosen = set(members)
        text = " and ".join(names[k] for k in members)
        scalar.append((f"{text} made 0-dim", _made_0_dim(sample, chosen)))
    if len(groups) > 1:
        every = {k for members in groups.values() for k in members}
        scalar.append((f"{label} made 0-dim", _made_0_dim(sample, every)))
    broadcast: list[tuple[str, SampleInput]] = []
    for k in testing:
        t = tensors[k]
        for d, extent in enumerate(t.shape):
            if extent > 1:
                broadcast.append((f"{names[k]} given size 1 in dimension {d}", _one_narrowed(sample, k, d)))
        if t.dim() >= 1 and t.numel() > 0:
            broadcast.append((f"{names[k]} without its leading dimension", _without_leading(sample, k)))
    merged: list[tuple[str, SampleInput]] = []
    for batch in itertools.zip_longest(zero, scalar, ones, broadcast):
        merged.extend(item for item in batch if item is not None)
    return merged


def samples_broadcast(samples: Sequence[SampleInput]) -> bool:
    """Whether any of the op's own samples broadcasts two inputs under test against each other (a bias
    [C] beside x [N, C], y [3, 1] beside x [3, 4]): broadcasting is then part of the op's contract."""
    for sample in samples:
        shapes = [tuple(t.shape) for t in sample_tensors(sample) if _under_test(t)]
        for a, b in itertools.combinations(set(shapes), 2):
            try:
                torch.broadcast_shapes(a, b)
            except RuntimeError:
                continue
            return True
    return False


def edge_variants(
    op: Any, sample: SampleInput, isolate: bool, source: int = 0, broadcasting: bool = True
) -> tuple[list[EdgeVariant], list[str]]:
    """The proven and the suspected edge variants of ``sample`` (proven first), and notes on relations
    the forward did not confirm because it crashed. ``broadcasting``: whether the op's samples show that
    it broadcasts its inputs (:func:`samples_broadcast`); without that, a size-1 broadcast the forward
    accepts is only suspected (q and k of a self-attention share their length by coincidence, and no
    caller broadcasts them)."""
    tensors = sample_tensors(sample)
    if not any(_under_test(t) for t in tensors):
        return [], []
    names = tensor_names(op, sample, tensors)
    notes: list[str] = []
    try:
        outputs = _forward(op, sample)
    except Exception:
        outputs = []  # reported by the other checks; only suspected variants remain
    shared = _shared_dim_candidates(tensors, outputs)[:MAX_CANDIDATES] if outputs else []

    def probe(run: Callable[[], Any]) -> Any:
        try:
            return run()
        except Exception as exc:  # a probe the plugin chose: never the op's finding
            return f"the probe failed ({type(exc).__name__})"

    verdicts = run_contained(len(shared), lambda step: probe(lambda: _confirm_shared(op, sample, outputs, shared[step])), isolate)
    proven: list[EdgeVariant] = []
    independent: set[tuple[int, int]] = set()  # (tensor, dimension) of every confirmed shared dimension
    for relation, verdict in zip(shared, verdicts):
        if isinstance(verdict, Crash):
            notes.append(f"a relation probe of sample {source} {verdict.describe()}; that relation is not used")
            continue
        if isinstance(verdict, str):
            continue
        independent.update((k, d) for k, dims in relation.dims.items() for d in dims)
        changed = [p for p, dims in enumerate(verdict) if dims]
        out_text = _output_names(len(outputs), changed)
        before = ", ".join(_shape(outputs[p]) for p in changed)
        for to in (0, 1):
            expected_shapes: list[Optional[tuple[int, ...]]] = []
            for p, dims in enumerate(verdict):
                if dims is None:
                    expected_shapes.append(None)
                    continue
                shape = list(outputs[p].shape)
                for d in dims:
                    shape[d] = to
                expected_shapes.append(tuple(shape))
            proven.append(
                EdgeVariant(
                    _describe_dims(relation, names, to, out_text),
                    _sliced(sample, relation.dims, to),
                    True,
                    evidence=f"on the given sample, slicing it to 1 gives the first slice of the original output ({before})",
                    expected_shapes=expected_shapes,
                    source=source,
                )
            )
    # A size-1 broadcast only along a dimension the op computes entry by entry (a confirmed shared
    # dimension): broadcasting x of a layer norm along the normalized dimension is no input a caller makes.
    spots = [spot for spot in _broadcast_candidates(tensors, outputs) if spot in independent][:MAX_CANDIDATES]
    confirmed = run_contained(
        len(spots),
        lambda step: probe(lambda: _confirm_broadcast(op, sample, *spots[step], tuple(tensors[spots[step][0]].shape))),
        isolate,
    )
    for (k, d), verdict in zip(spots, confirmed):
        if isinstance(verdict, Crash):
            notes.append(f"a broadcast probe of sample {source} {verdict.describe()}; that relation is not used")
        elif verdict is True and broadcasting:
            proven.append(
                EdgeVariant(
                    f"{names[k]} given size 1 in dimension {d}, broadcast against the others",
                    _one_narrowed(sample, k, d),
                    True,
                    evidence=f"the forward gives the output of {names[k]} expanded back to {list(tensors[k].shape)}",
                    source=source,
                )
            )
    seen = {v.signature() for v in proven}
    suspected = []
    for description, derived in _suspected(sample, tensors, names):
        variant = EdgeVariant(description, derived, False, source=source)
        if variant.signature() not in seen:
            seen.add(variant.signature())
            suspected.append(variant)
    unique: list[EdgeVariant] = []
    signatures: set[str] = set()
    for variant in proven:
        if variant.signature() not in signatures:
            signatures.add(variant.signature())
            unique.append(variant)
    return unique + suspected, notes
