"""Whether an op can run on fake tensors: what ``torch.compile`` and opcheck's fake-tensor and AOT
tests need, and what eager-only ops legitimately lack.

The registries cannot answer it: a ``torch.library.custom_op`` without ``register_fake`` still has a
fake kernel registered, one that raises. So the op is run once on fake copies of a real sample
(about a millisecond), and only the errors that mean "no fake kernel at all" count as missing. A
fake kernel that exists but is wrong is not this module's business: the checks report it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Optional, Sequence

from .samples import SampleInput

if TYPE_CHECKING:
    from .ops import ResolvedOp

__all__ = ["missing_fake_kernel", "HOW_TO_ADD"]

HOW_TO_ADD = "register one with torch.library.register_fake (or @op.register_fake) to test it"

# torch.library.custom_op: "There was no fake impl registered for ..."; the legacy torch._custom_op:
# "there is no abstract impl registered for this CustomOp".
_NO_KERNEL_MESSAGE = re.compile(r"no (fake|abstract) impl(ementation)? registered", re.IGNORECASE)

# Per op overload: registrations do not change while the checks of a run are going.
_answers: dict[str, Optional[str]] = {}


def _fits(op: ResolvedOp, sample: SampleInput) -> bool:
    try:
        op.bind(sample)
    except TypeError:
        return False
    return True


def _is_missing_kernel_error(exc: BaseException) -> bool:
    if type(exc).__name__ == "UnsupportedOperatorException":  # no Meta, composite or fake kernel
        return True
    return bool(_NO_KERNEL_MESSAGE.search(str(exc)))


def missing_fake_kernel(op: ResolvedOp, samples: Sequence[SampleInput]) -> Optional[str]:
    """Why ``op`` cannot run on fake tensors (it has no fake kernel), or None when it can, or when it
    fails on them for another reason (a wrong fake kernel is a finding, not a missing one). Asked on
    the first of ``samples`` that fits the schema; None when none does."""
    from .triton_support import interpreted_fake_reason

    interpreted = interpreted_fake_reason(op)  # not cached: the interpreter is switched per run
    if interpreted is not None:
        return interpreted
    key = op.name
    if key in _answers:
        return _answers[key]
    fitting = next((sample for sample in samples if _fits(op, sample)), None)
    if fitting is None:
        return None
    from .torch_internals import fake_tensor_mode

    answer: Optional[str] = None
    try:
        with fake_tensor_mode(allow_non_fake_inputs=True) as mode:
            fake = fitting.map(lambda t: mode.from_tensor(t.detach()))
            args, kwargs = op.split_bound(op.bind(fake))
            op.overload(*args, **kwargs)
    except Exception as exc:
        if _is_missing_kernel_error(exc):
            answer = f"{op.name} has no fake (meta) kernel, so it cannot run on fake tensors; {HOW_TO_ADD}"
    _answers[key] = answer
    return answer
