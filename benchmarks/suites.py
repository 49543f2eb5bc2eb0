"""Generated test suites for the benchmark: a customop suite and a plain parametrize suite of the
same size, written as files that pytest runs in a subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

OPS_MODULE = '''
"""Ops shared by the generated suites (imported by every generated test module)."""
import torch
from pytest_customop import SampleInput


@torch.library.custom_op("{ns}::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 2


def _tanh_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _tanh_backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * 2 * (1 - torch.tanh(x) ** 2)


scaled_tanh.register_autograd(_tanh_backward, setup_context=_tanh_setup)
scaled_tanh.register_fake(lambda x: torch.empty_like(x))  # so that compile and opcheck apply in full


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn({rows}, {cols}, device=device, dtype=dtype, requires_grad=requires_grad))
'''

CUSTOMOP_TEST = """
@pytest.mark.customop("{ns}::scaled_tanh", samples=samples, dtypes={dtypes!r}{checks})
def test_op_{index}(customop):
    customop.check()
"""

PLAIN_TEST = """
@pytest.mark.parametrize("case", {cases!r})
def test_op_{index}(case):
    assert case
"""


def write_customop_suite(
    directory: Path,
    ns: str,
    functions: int,
    dtypes: list[str],
    checks: Sequence[str],
    rows: int = 3,
    cols: int = 4,
    name_checks: bool = True,
) -> int:
    """``functions`` marked tests over one op; returns the number of items (functions x dtypes x checks).

    ``name_checks=False`` leaves ``checks=`` out of the markers (the default configuration: every check
    that applies); ``checks`` must then be the default check names, to count the items."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{ns}_ops.py").write_text(OPS_MODULE.format(ns=ns, rows=rows, cols=cols))
    body = ["import pytest", f"from {ns}_ops import samples", ""]
    marker_checks = f", checks={list(checks)!r}" if name_checks else ""
    body += [CUSTOMOP_TEST.format(ns=ns, dtypes=dtypes, checks=marker_checks, index=i) for i in range(functions)]
    (directory / f"test_{ns}.py").write_text("\n".join(body))
    return functions * len(dtypes) * len(checks)


def write_plain_suite(directory: Path, name: str, functions: int, per_function: int) -> int:
    """The same shape with plain ``@pytest.mark.parametrize`` and no plugin work; returns the item count."""
    directory.mkdir(parents=True, exist_ok=True)
    cases = [f"cpu-float64-check{k}" for k in range(per_function)]
    body = ["import pytest", "import torch  # as the customop suite's op module does", ""]
    body += [PLAIN_TEST.format(cases=cases, index=i) for i in range(functions)]
    (directory / f"test_{name}.py").write_text("\n".join(body))
    return functions * per_function
