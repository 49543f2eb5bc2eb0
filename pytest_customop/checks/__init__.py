"""Checks: one module per check; :mod:`.base` says what a check is, :mod:`.registry` holds them."""
