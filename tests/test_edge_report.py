"""Every report format carries the finding: what was wrong on a failed item (not only the sample), and
the suspected edge of a passing one."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

from customop_sources import write

OPS = """
def rows(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 4, dtype=dtype, requires_grad=requires_grad))


def define(name, backward):
    @torch.library.custom_op(f"NS::{name}", mutates_args=())
    def op(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    op.register_autograd(backward, setup_context=save_inputs)
    return op


def max_scaled(ctx, grad):
    (x,) = ctx.saved_tensors
    scale = grad.abs().max()  # raises on an empty batch
    return grad / scale * torch.cos(x) * scale


def needs_a_dim(ctx, grad):
    (x,) = ctx.saved_tensors
    columns = x.shape[-1]  # raises on a 0-dim x
    return grad * torch.cos(x)


empty_bug = define("empty_bug", max_scaled)
zero_dim_note = define("zero_dim_note", needs_a_dim)


@pytest.mark.customop(empty_bug, samples=rows, checks=["edge_shapes"], dtypes=["float64"], devices=["cpu"])
def test_empty_bug(customop):
    customop.check()


@pytest.mark.customop(zero_dim_note, samples=rows, checks=["edge_shapes"], dtypes=["float64"], devices=["cpu"])
def test_zero_dim_note(customop):
    customop.check()
"""

WHAT = "on a proven edge (dimension 0, shared by 'x' and the output, sliced to 0), the backward raised RuntimeError: max()"
NOTE = "suspected edge: on sample 0 with 'x' made 0-dim, which the forward accepts, the backward raised IndexError"


def test_every_format_says_what_was_wrong_and_shows_the_suspected_edge(pytester, ns, run):
    write(pytester, ns, OPS)
    result = run(
        "--junitxml=junit.xml",
        "--customop-report",
        "--customop-report=json:r.json",
        "--customop-report=md:r.md",
        "--customop-report=html:r.html",
    )
    result.assert_outcomes(passed=1, failed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "  FAILED edge_shapes cpu/float64: sample 0: on a proven edge (dimension 0,*",  # wrapped to the terminal
            "  NOTE edge_shapes cpu/float64: suspected edge: on sample 0*",
        ]
    )
    rows = {r["op"].split("::")[1]: r for r in json.loads((pytester.path / "r.json").read_text())["results"]}
    assert WHAT in rows["empty_bug"]["message"]
    assert NOTE in rows["zero_dim_note"]["message"] and rows["zero_dim_note"]["outcome"] == "passed"
    failure = ElementTree.parse(pytester.path / "junit.xml").getroot().find(".//failure")
    assert WHAT in failure.get("message")
    markdown = (pytester.path / "r.md").read_text()
    assert "- **NOTE** edge\\_shapes cpu/float64: suspected edge: on sample 0 with 'x' made 0-dim" in markdown
    assert "the backward raised RuntimeError: max\\(\\)" in markdown
    page = (pytester.path / "r.html").read_text()
    # the note names its cell, which opens that cell's panel
    assert re.search(
        r'<li class="note-reason"><label for="cell-\d+"><strong>NOTE</strong> edge_shapes cpu/float64</label>: suspected edge:',
        page,
    )
