"""PyTorch's own test ops (``torch.testing._internal.custom_op_db``): correct ops of many kinds (numpy
kernels, unreduced broadcast gradients, integer-only outputs, index arguments, ops without autograd)
through every default check, at floating and integer dtypes: each item passes or skips, none fails.

Needs ``expecttest`` (PyTorch's test internals import it): a test-only dependency."""

from __future__ import annotations

import pytest

pytest.importorskip("expecttest")

BODY = """
import pytest, torch
from torch.testing._internal.custom_op_db import custom_op_db

OPINFOS = {{o.name: o for o in custom_op_db}}

def samples_of(name):
    opinfo = OPINFOS[name]
    def samples(device, dtype, requires_grad):
        return opinfo.sample_inputs(device, dtype, requires_grad=requires_grad)
    return samples

@pytest.mark.parametrize("name", {names!r})
def test_nothing(name):
    pass
"""

MARKED = """
@pytest.mark.customop(OPINFOS["{name}"].op, samples=samples_of("{name}"), devices=["cpu"],
                      dtypes=[torch.float64, torch.float32, torch.int64], checks={checks!r})
def test_{name}(customop):
    customop.check()
"""

# Every default check: batched_grad meets a vmap rule that declines ("data-dependent" NotImplementedError:
# a skip quoting it), edge_shapes index tensors that must keep their relation to the data.
CHECKS = [
    "gradcheck",
    "gradgradcheck",
    "grad_keys",
    "forward_ad",
    "batched_grad",
    "noncontiguous",
    "nondeterminism",
    "requires_grad_subsets",
    "edge_shapes",
    "opcheck",
    "compile",
]

# Elementwise, broadcast (unreduced gradients on purpose), sort (index outputs), take (index input),
# nonzero (integer output, no autograd).
NAMES = ["NumpyMulCustomOp", "NumpyCubeCustomOp", "NumpySortCustomOp", "NumpyTakeCustomOp", "NumpyNonzeroCustomOp"]


def test_pytorchs_own_test_ops_pass_or_skip_every_default_check(pytester, run):
    pytester.makepyfile(test_db=BODY.format(names=NAMES) + "".join(MARKED.format(name=n, checks=CHECKS) for n in NAMES))
    result = run("-q", "-rs", "-W", "ignore")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("errors", 0) == 0, result.stdout.str()[-6000:]
    assert outcomes.get("passed", 0) > 50
    # integer-only outputs and integer dtypes are reasons, not failures
    result.stdout.fnmatch_lines(["*every output of _torch_testing::numpy_nonzero is int64: not differentiable*"])
