"""Make docs/img/report.png, the screenshot of the HTML report in docs/report.md (part of the docs' build).

Runs a small suite (a correct op, and one whose backward is wrong only on the border of its input) with
``--customop-report=json:...``, merges it with the same report as a CUDA runner would have written it
(``pytest-customop merge``), opens the page in headless Chromium, clicks the failed cell and saves a PNG.

    python docs/screenshot_report.py            # needs chromium (apt-get install -y chromium)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from headless_chromium import Chromium, find_chromium  # noqa: E402 (tests/ put on the path above)

SUITE = """
import pytest
import torch
from torch.library import custom_op

from pytest_customop import SampleInput


def border_of(t):
    mask = torch.zeros_like(t)
    mask[..., 0, :] = mask[..., -1, :] = 1
    mask[..., :, 0] = mask[..., :, -1] = 1
    return mask


@custom_op("shot::pad_scale", mutates_args=())
def pad_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


# wrong on the border only
pad_scale.register_autograd(lambda ctx, grad: grad * 2 + grad * border_of(grad))


@custom_op("shot::scale", mutates_args=())
def scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


scale.register_autograd(lambda ctx, grad: grad * 2)


def samples(device, dtype, requires_grad):
    yield SampleInput(torch.randn(8, 12, device=device, dtype=dtype, requires_grad=requires_grad))


@pytest.mark.customop(pad_scale, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck", "gradgradcheck"])
def test_pad_scale(customop):
    customop.check()


@pytest.mark.customop(scale, samples=samples, dtypes=["float64", "float32"], checks=["gradcheck", "gradgradcheck"])
def test_scale(customop):
    customop.check()
"""


def main() -> int:
    chromium = find_chromium()
    if chromium is None:
        print("screenshot_report: no Chromium found (apt-get install -y chromium); docs/img/report.png left as is")
        return 0
    work = Path(tempfile.mkdtemp(prefix="customop-shot-"))
    (work / "test_shot.py").write_text(SUITE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--customop-seed=1234",
            "--customop-report=json:cpu.json",
            "test_shot.py",
        ],
        cwd=work,
        env=env,
        check=False,
        stdout=subprocess.DEVNULL,
    )
    document = json.loads((work / "cpu.json").read_text())
    document["environment"].update(torch="2.13.0+cu128", cuda="12.8", devices={"cpu": "Intel Xeon", "cuda:0": "NVIDIA H200"})
    for row in document["results"]:
        row.update(device="cuda", nodeid=row["nodeid"].replace("[cpu-", "[cuda-"), ran_on="cuda:0", device_name="NVIDIA H200")
        row["details"] = row["details"].replace("on cpu", "on cuda").replace("[cpu-", "[cuda-")
    (work / "gpu.json").write_text(json.dumps(document))
    subprocess.run(
        [sys.executable, "-m", "pytest_customop.report.cli", "merge", "cpu.json", "gpu.json", "-q", "--html", "merged.html"],
        cwd=work,
        check=False,
    )
    target = ROOT / "docs" / "img" / "report.png"
    target.parent.mkdir(exist_ok=True)
    with Chromium(chromium, width=1100, height=900) as browser:
        browser.open((work / "merged.html").as_uri())
        browser.click("td.cell.failed label")
        browser.screenshot(str(target))
    print(f"screenshot_report: wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
