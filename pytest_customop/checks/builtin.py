"""The built-in checks, registered through the same hook a project's conftest uses for its own."""

from pluggy import HookimplMarker

hookimpl = HookimplMarker("pytest")


@hookimpl(tryfirst=True)
def pytest_customop_register_checks(registry):
    # Imported here, not at module level: this module is loaded by `pytest --help`, torch is not.
    from .gradcheck import GradCheck, GradGradCheck

    registry.register(GradCheck())
    registry.register(GradGradCheck())
    from .forward_ad import ForwardADCheck

    registry.register(ForwardADCheck())
    from .batched_grad import BatchedGradCheck

    registry.register(BatchedGradCheck())
    from .noncontiguous import NoncontiguousCheck

    registry.register(NoncontiguousCheck())
    from .nondeterminism import NondeterminismCheck

    registry.register(NondeterminismCheck())
