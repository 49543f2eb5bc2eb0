"""Correct ops shaped like real library kernels (roi pooling with index tensors, attention with a mask,
segment reductions over an index tensor, layer norms, scans, causal convolutions, rotary embeddings)
pass every default check; a bug planted at an edge shape or a layout fails exactly the check that
should catch it."""

from __future__ import annotations

from shape_family_ops import OPS, marked_tests

FAMILIES = ["roi_mean", "masked_attention", "segment_sum", "layer_norm", "linear_scan", "causal_conv", "rotary"]


def test_correct_ops_of_every_shape_family_pass_every_default_check(pytester, ns, run):
    pytester.makepyfile(test_ops=(OPS + marked_tests(FAMILIES)).replace("NS", ns))
    result = run("-rA")
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()[-6000:]
