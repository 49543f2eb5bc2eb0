"""The built-in checks, registered through the same hook a project's conftest uses for its own."""

from pluggy import HookimplMarker

hookimpl = HookimplMarker("pytest")


@hookimpl(tryfirst=True)
def pytest_customop_register_checks(registry):
    # Imported here, not at module level: this module is loaded by `pytest --help`, torch is not.
    from .gradcheck import GradCheck, GradGradCheck

    registry.register(GradCheck())
    registry.register(GradGradCheck())
    from .opcheck import OpCheck

    registry.register(OpCheck())
    from .compile import CompileCheck

    registry.register(CompileCheck())
    from .requires_grad_subsets import RequiresGradSubsetsCheck

    registry.register(RequiresGradSubsetsCheck())
    from .edge_shapes import EdgeShapesCheck

    registry.register(EdgeShapesCheck())
