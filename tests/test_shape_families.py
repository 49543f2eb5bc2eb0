"""Correct ops shaped like real library kernels (roi pooling with index tensors, attention with a mask,
segment reductions over an index tensor, layer norms, scans, causal convolutions, rotary embeddings)
pass every default check; a bug planted at an edge shape or a layout fails exactly the check that
should catch it."""

from __future__ import annotations

from shape_family_ops import BUGS, OPS, marked_tests, with_bugs

FAMILIES = ["csr_sum", "roi_mean", "masked_attention", "segment_sum", "layer_norm", "linear_scan", "causal_conv", "rotary"]


def test_correct_ops_of_every_shape_family_pass_every_default_check(pytester, ns, run):
    pytester.makepyfile(test_ops=(OPS + marked_tests(FAMILIES)).replace("NS", ns))
    result = run("-rA")
    outcomes = result.parseoutcomes()
    assert not outcomes.get("failed") and not outcomes.get("errors"), result.stdout.str()[-6000:]


def test_edge_bugs_in_those_ops_fail_edge_shapes_alone_naming_the_relation(pytester, ns, run):
    pytester.makepyfile(test_ops=(with_bugs(OPS) + marked_tests(FAMILIES)).replace("NS", ns))
    result = run("-rf")
    failed = sorted(line.split("::")[1].split(" ")[0] for line in result.stdout.lines if line.startswith("FAILED test_ops.py"))
    assert failed == sorted(f"test_{name}[cpu-{dtype}-edge_shapes]" for name, _, _ in BUGS for dtype in ("float64", "float32"))
    result.stdout.fnmatch_lines_random(
        [
            "    on a proven edge (dimension 0, shared by 'rois' and the output, sliced to 0), the backward raised RuntimeError: "
            "max(): Expected reduction dim to be specified for input.numel() == 0*",
            "    on a proven edge (dimension 0, shared by 'x' and the output, sliced to 0), the backward raised RuntimeError: "
            "cannot reshape tensor of 0 elements into shape [[]0, -1[]]*",
        ]
    )
