"""Under pytest-xdist, worker i runs its accelerator items on device i mod N (``--customop-worker-devices``),
and the report names the device each result ran on. No GPU here: the device count is faked."""

from __future__ import annotations

import json

import pytest

from pytest_customop.worker_devices import parse_worker_devices, worker_device_index


@pytest.mark.parametrize(
    "worker, count, mapping, expected",
    [
        ("gw0", 4, [], 0),
        ("gw5", 4, [], 1),
        ("gw3", 4, [], 3),
        ("gw7", 1, [], 0),
        ("gw2", 4, [2, 3], 2),
        ("gw3", 4, [2, 3], 3),
        ("gw4", 4, [2, 3], 2),
        ("gw1", 4, None, None),  # off
        ("gw1", 0, [], None),  # no accelerator
        (None, 4, [], None),  # not a worker
        ("master", 4, [], None),
    ],
)
def test_worker_device_index(worker, count, mapping, expected) -> None:
    assert worker_device_index(worker, count, mapping) == expected


def test_parse_worker_devices() -> None:
    assert parse_worker_devices("auto") == [] and parse_worker_devices(" ") == []
    assert parse_worker_devices("off") is None and parse_worker_devices("OFF") is None
    assert parse_worker_devices("0, 2,3") == [0, 2, 3]
    for bad in ("cuda:1", "-1", ",", "1.5"):
        with pytest.raises(ValueError, match="expected auto, off or comma-separated device indexes"):
            parse_worker_devices(bad)


# Four fake CUDA devices: torch.cuda answers as on a 4-GPU machine, set_device/current_device keep the
# index in this process, no tensor is ever made on them.
FAKE_CUDA = """
import torch

_current = [0]
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 4
torch.cuda.set_device = lambda index: _current.__setitem__(0, int(getattr(index, "index", index)))
torch.cuda.current_device = lambda: _current[0]
torch.cuda.get_device_name = lambda index=None: f"Fake GPU {_current[0] if index is None else index}"
"""

SUITE = """
import os

import pytest
import torch

from pytest_customop import SampleInput


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(3, dtype=dtype))


@pytest.mark.customop("aten::sin", samples=samples, devices=["cuda", "cpu"], dtypes=["float64"],
                      checks=["gradcheck", "gradgradcheck", "grad_keys", "forward_ad"])
def test_where(customop_device):  # where it runs is all this test looks at
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    with open("ran.txt", "a") as stream:  # workers' stdout does not reach the controller
        stream.write(f"{worker} {customop_device} cuda:{torch.cuda.current_device()}\\n")
"""


def _rows(pytester: pytest.Pytester) -> list[dict]:
    return json.loads((pytester.path / "report.json").read_text())["results"]


@pytest.mark.parametrize(
    "option, expected",
    [
        (None, {"gw0": "cuda:0", "gw1": "cuda:1"}),
        ("2,3", {"gw0": "cuda:2", "gw1": "cuda:3"}),
        ("off", {"gw0": "cuda:0", "gw1": "cuda:0"}),
    ],
)
def test_xdist_workers_use_their_device_and_the_report_names_it(pytester: pytest.Pytester, monkeypatch, option, expected) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makeconftest(FAKE_CUDA)
    pytester.makepyfile(test_where=SUITE)
    args = ["-p", "no:cacheprovider", "-n", "2", "--customop-seed=1", "--customop-report=json:report.json"]
    if option is not None:
        args.append(f"--customop-worker-devices={option}")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=8)
    ran = [line.split() for line in (pytester.path / "ran.txt").read_text().splitlines()]
    workers = {worker for worker, _, _ in ran}
    if workers != {"gw0", "gw1"}:
        pytest.skip(f"pytest-xdist gave every item to {workers}: nothing to compare")  # never seen with 8 items
    for worker, device, current in ran:
        if device == "cuda":
            assert current == expected[worker], (worker, device, current)
    rows = _rows(pytester)
    cuda_rows = [row for row in rows if row["device"] == "cuda"]
    assert len(cuda_rows) == 4
    assert {row["ran_on"] for row in cuda_rows} <= set(expected.values())
    for row in cuda_rows:
        assert row["device_name"] == f"Fake GPU {row['ran_on'][-1]}"
    assert {row["ran_on"] for row in rows if row["device"] == "cpu"} == {"cpu"}


def test_a_mapping_beyond_the_devices_present_fails_the_items_with_the_reason(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makeconftest(FAKE_CUDA)
    pytester.makepyfile(test_where=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "1", "--customop-worker-devices=6")
    result.assert_outcomes(passed=4, errors=4)
    result.stdout.fnmatch_lines(
        ["*pytest-customop: --customop-worker-devices gives worker gw0 cuda:6, but 4 cuda device(s) are present*"]
    )


def test_a_bad_value_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest("-p", "no:cacheprovider", "--customop-worker-devices=cuda:1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--customop-worker-devices='cuda:1': expected auto, off or comma-separated device indexes*"])
