"""``--customop-list``: what would run, without running anything."""

from __future__ import annotations

import textwrap


def test_list_shows_ops_checks_devices_dtypes_and_runs_nothing(pytester, run, ns):
    pytester.makepyfile(
        test_ops=textwrap.dedent(
            f"""
            import pytest
            import torch
            from torch import Tensor
            from pytest_customop import SampleInput, Skip

            RAN = []

            @torch.library.custom_op("{ns}::triple", mutates_args=())
            def triple(x: Tensor) -> Tensor:
                RAN.append("triple")
                return x * 3

            triple.register_autograd(lambda ctx, g: g * 3)

            @torch.library.custom_op("{ns}::halve", mutates_args=())
            def halve(x: Tensor) -> Tensor:
                RAN.append("halve")
                return x / 2

            halve.register_autograd(lambda ctx, g: g / 2)

            def triple_samples(device, dtype, requires_grad):
                yield SampleInput(torch.randn(3, device=device, dtype=dtype, requires_grad=requires_grad))

            @pytest.mark.customop(
                "{ns}::triple",
                samples=triple_samples,
                devices=["cpu", "cuda"],
                skips=[Skip("too slow here", checks="gradgradcheck", dtypes="float32")],
            )
            def test_triple(customop):
                customop.check()

            def test_nothing_ran():
                assert RAN == []
            """
        )
    )
    result = run("--customop-list", f"--customop-namespace={ns}", "--customop-checks=gradcheck,gradgradcheck")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "customop: what would run (--customop-list: nothing is run)",
            f"{ns}::triple  from test_ops.py::test_triple  samples: triple_samples",
            "  devices: cpu  dtypes: float64, float32  checks: gradcheck, gradgradcheck  items: 3 to run, 5 skipped",
            "  skipped cpu-float32-gradgradcheck: too slow here",
            "  skipped cuda-float64-gradcheck: cuda is not available",
            f"{ns}::halve  from --customop-namespace={ns}  samples: derived from the schema",
            "  devices: cpu  dtypes: float64, float32  checks: gradcheck, gradgradcheck  items: 4 to run, 0 skipped",
            "2 op(s): 7 item(s) would run, 5 would be skipped",
        ]
    )
    result.assert_outcomes()  # nothing passed, failed or was skipped: nothing ran
    result.stdout.no_fnmatch_line("*PASSED*")


def test_list_follows_k_selection(pytester, run, ns):
    pytester.makepyfile(
        test_ops=textwrap.dedent(
            f"""
            import pytest
            import torch
            from torch import Tensor

            @torch.library.custom_op("{ns}::neg", mutates_args=())
            def neg(x: Tensor) -> Tensor:
                return -x

            neg.register_autograd(lambda ctx, g: -g)

            @pytest.mark.customop("{ns}::neg")
            def test_neg(customop):
                customop.check()
            """
        )
    )
    result = run("--customop-list", "-k", "float64 and gradcheck and not gradgrad")
    result.stdout.fnmatch_lines(
        [
            f"{ns}::neg  from test_ops.py::test_neg  samples: derived from the schema",
            "  devices: cpu  dtypes: float64  checks: gradcheck  items: 1 to run, 0 skipped",
            "1 op(s): 1 item(s) would run, 0 would be skipped",
        ]
    )
