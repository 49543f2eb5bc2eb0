"""Hooks that pytest-customop adds to pytest (registered with ``pytest_addhooks``).

Implement them in a ``conftest.py`` or a plugin. This module imports neither torch nor the checks.
"""

import pytest


@pytest.hookspec
def pytest_customop_register_checks(registry):
    """Register checks: call ``registry.register(check)`` for each.

    A check is an object with a ``name`` (a lower_case identifier, used in ``checks=``, test ids,
    ``-k`` and the report), a ``description``, an optional ``not_applicable(op, spec)`` returning the
    reason it cannot apply to an op (or None), and ``run(ctx)`` returning a
    :class:`pytest_customop.CheckResult` (build it with ``ctx.passed``, ``ctx.failed``,
    ``ctx.skipped``). Subclass :class:`pytest_customop.Check` for the defaults. The built-in checks
    are registered through this same hook.
    """
