"""The HTML report people click through: a failed cell opens its whole message, a filter leaves only the
failures, each cell shows its duration and each column its environment; a failed gradient shows a heat map
of |got - expected|. Checked in a real headless Chromium where one is installed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from headless_chromium import Chromium, find_chromium

from pytest_customop.report.heatmap import MAX_SIDE, difference_grid, heatmap_svg

BORDER_SUITE = '''
import pytest
import torch
from torch.library import custom_op

from pytest_customop import SampleInput


def border_of(t):
    """1 on the first and last row and column of the last two dimensions, 0 inside."""
    mask = torch.zeros_like(t)
    mask[..., 0, :] = 1
    mask[..., -1, :] = 1
    mask[..., :, 0] = 1
    mask[..., :, -1] = 1
    return mask


@custom_op("{ns}::double_bad_border", mutates_args=())
def double_bad_border(x: torch.Tensor) -> torch.Tensor:
    return x * 2


# wrong on the border only: 3 instead of 2 there (a padding bug)
double_bad_border.register_autograd(lambda ctx, grad: grad * 2 + grad * border_of(grad))


@custom_op("{ns}::double", mutates_args=())
def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


double.register_autograd(lambda ctx, grad: grad * 2)


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(6, 8, device=device, dtype=dtype, requires_grad=requires_grad))


def shaped_samples(device, dtype, requires_grad):
    for shape in [(7,), (2, 3, 4), (5, 1), (16, 16)]:
        yield SampleInput(torch.randn(*shape, device=device, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(double_bad_border, samples=samples, dtypes=["float64"], checks=["gradcheck"])
def test_border(customop):
    customop.check()


@pytest.mark.customop(double, samples=shaped_samples, dtypes=["float64", "float32"], checks=["gradcheck", "gradgradcheck"])
def test_double(customop):
    customop.check()
'''


@pytest.fixture
def border_report(pytester: pytest.Pytester, ns: str, run) -> dict:
    """The JSON and HTML reports of the border-only wrong backward and a correct op."""
    pytester.makepyfile(test_border=BORDER_SUITE.replace("{ns}", ns))
    result = run("--customop-report=json:report.json", "--customop-report=html:report.html")
    result.assert_outcomes(passed=4, failed=1)
    document = json.loads((pytester.path / "report.json").read_text())
    return {"json": document, "html": (pytester.path / "report.html").read_text(), "path": pytester.path / "report.html"}


def test_a_border_only_wrong_backward_shows_its_border(border_report, ns: str) -> None:
    rows = {(r["op"].split("::")[1], r["check"], r["dtype"]): r for r in border_report["json"]["results"]}
    failed = rows[("double_bad_border", "gradcheck", "float64")]
    assert failed["outcome"] == "failed"
    heatmap = failed["heatmap"]
    assert heatmap["input"] == "x" and heatmap["shape"] == [6, 8]
    grid = heatmap["grid"]
    assert len(grid) == 6 and all(len(row) == 8 for row in grid)
    border = {(r, c) for r in range(6) for c in range(8) if r in (0, 5) or c in (0, 7)}
    for r in range(6):
        for c in range(8):
            if (r, c) in border:
                assert grid[r][c] > 0.01, (r, c, grid[r][c])  # |3 w - 2 w| for a random weight w
            else:
                assert grid[r][c] < 1e-6, (r, c, grid[r][c])  # finite differences' own rounding
    # correct ops of several shapes: passed, nothing to draw
    assert all(r["outcome"] == "passed" and r["heatmap"] is None for k, r in rows.items() if k[0] == "double")
    # the whole message travels with the one-line summary
    assert failed["message"].startswith("sample 0: gradient of input 'x'")
    assert "reproduce: pytest 'test_border.py::test_border[cpu-float64-gradcheck]' --customop-seed=1234" in failed["details"]
    assert "SampleInput(Tensor([6, 8], float64, cpu, requires_grad))" in failed["details"]
    # drawn: red squares exactly on the border
    svg = re.search(r"<svg class=\"heatmap\".*?</svg>", border_report["html"]).group(0)
    squares = re.findall(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="\d+" fill="([^"]+)"', svg)
    assert len(squares) == 48
    size = int(squares[0][2])
    coloured = {(int(y) // size, int(x) // size) for x, y, _, fill in squares if fill != "#fff"}
    assert coloured == border


def test_large_inputs_are_max_pooled_and_nan_is_kept() -> None:
    expected = torch.zeros(64, 100, dtype=torch.float64)
    got = expected.clone()
    got[0, :] = 1.0  # the first row is wrong
    got[40, 99] = float("nan")
    heatmap = difference_grid(got, expected, "x")
    grid = heatmap["grid"]
    assert heatmap["shape"] == [64, 100] and len(grid) == MAX_SIDE and all(len(row) == MAX_SIDE for row in grid)
    assert all(v == 1.0 for v in grid[0]) and grid[20][31] is None  # NaN drawn black, not lost
    assert all(v == 0.0 for row in grid[1:] for v in row if v is not None)
    assert 'fill="#000"' in heatmap_svg(heatmap)
    channels = difference_grid(torch.ones(3, 4, 5), torch.zeros(3, 4, 5), "x")  # leading dims flattened
    assert channels["shape"] == [3, 4, 5] and len(channels["grid"]) == 12 and len(channels["grid"][0]) == 5
    assert difference_grid(torch.tensor(2.0), torch.tensor(1.0))["grid"] == [[1.0]]


def test_the_page_is_self_contained(border_report) -> None:
    page = border_report["html"]
    assert "<script" not in page and "http" not in page and "<link" not in page and "src=" not in page
    assert 'class="cell failed"' in page and page.count('class="opener"') == 5  # one panel per cell


chromium = find_chromium()
needs_browser = pytest.mark.skipif(chromium is None, reason="no Chromium installed (apt-get install -y chromium)")


@needs_browser
def test_in_a_browser_a_failed_cell_opens_its_message_and_the_filter_hides_passes(border_report, tmp_path) -> None:
    with Chromium(chromium) as browser:
        browser.open(border_report["path"].as_uri())
        failed_cell = "td.cell.failed label"
        panel_id = browser.evaluate(f"document.querySelector({json.dumps(failed_cell)}).htmlFor") + "-panel"
        assert not browser.visible(f"#{panel_id}")
        browser.click(failed_cell)
        assert browser.visible(f"#{panel_id}")
        text = browser.evaluate(f"document.getElementById('{panel_id}').innerText")
        assert "gradient of input 'x'" in text and "expected" in text and "got" in text
        assert "reproduce: pytest 'test_border.py::test_border[cpu-float64-gradcheck]' --customop-seed=1234" in text
        assert browser.visible(f"#{panel_id} svg.heatmap")
        assert re.search(r"ran on cpu \(.+\), (<1 ms|\d+ ms|[\d.]+ s)", text)
        # a skipped or passed cell opens too
        browser.click("td.cell.passed label")
        assert browser.evaluate("[...document.querySelectorAll('.panel')].filter(p => p.checkVisibility()).length") == 2
        # the column names what it ran on, each cell its duration
        header = browser.evaluate("document.querySelector('table.matrix th:nth-child(2)').innerText")
        assert header.startswith("cpu/float64") and "A: cpu" in header
        assert browser.visible("td.cell .duration")
        # only failures
        assert browser.visible("tr.check-row.clean")
        browser.click("label.filter")
        assert not browser.visible("tr.check-row.clean") and browser.visible("td.cell.failed")
        shot = browser.screenshot(str(tmp_path / "report.png"))
    data = Path(shot).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


LOW_PRECISION_SUITE = """
import pytest
import torch
from torch.library import custom_op

from pytest_customop import SampleInput


@custom_op("{ns}::half_wrong", mutates_args=())
def half_wrong(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def backward(ctx, grad):
    result = grad * 2
    if grad.dtype != torch.float64:  # a low-precision kernel that drops the last column
        result[..., -1] = 0
    return result


half_wrong.register_autograd(backward)


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, 5, device=device, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(half_wrong, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck"])
def test_half_wrong(customop):
    customop.check()
"""


def test_a_low_precision_gradient_wrong_in_one_column_shows_it(pytester: pytest.Pytester, ns: str, run) -> None:
    pytester.makepyfile(test_half=LOW_PRECISION_SUITE.replace("{ns}", ns))
    result = run("--customop-report=json:report.json")
    result.assert_outcomes(passed=1, failed=1)
    rows = {r["dtype"]: r for r in json.loads((pytester.path / "report.json").read_text())["results"]}
    assert rows["float64"]["heatmap"] is None
    heatmap = rows["float32"]["heatmap"]
    assert heatmap["input"] == "x" and heatmap["shape"] == [3, 5]
    assert [[value > 0 for value in row] for row in heatmap["grid"]] == [[False] * 4 + [True]] * 3
