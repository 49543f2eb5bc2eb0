"""The built-in checks, registered through the same hook a project's conftest uses for its own."""

from pluggy import HookimplMarker

hookimpl = HookimplMarker("pytest")


@hookimpl(tryfirst=True)
def pytest_customop_register_checks(registry):
    # Imported here, not at module level: this module is loaded by `pytest --help`, torch is not.
    from .batched_grad import BatchedGradCheck
    from .compile import CompileCheck
    from .edge_shapes import EdgeShapesCheck
    from .forward_ad import ForwardADCheck
    from .grad_keys import GradKeysCheck
    from .gradcheck import GradCheck, GradGradCheck
    from .noncontiguous import NoncontiguousCheck
    from .nondeterminism import NondeterminismCheck
    from .opcheck import OpCheck
    from .requires_grad_subsets import RequiresGradSubsetsCheck

    # Registration order is the order of each op's items and of the report's rows.
    for check in (
        GradCheck(),
        GradGradCheck(),
        GradKeysCheck(),
        ForwardADCheck(),
        BatchedGradCheck(),
        NoncontiguousCheck(),
        NondeterminismCheck(),
        RequiresGradSubsetsCheck(),
        EdgeShapesCheck(),
        OpCheck(),
        CompileCheck(),
    ):
        if check.options_accepted is None:  # a built-in check that reads no options= takes none
            check.options_accepted = ()
        registry.register(check)
