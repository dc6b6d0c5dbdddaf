"""Imports kltrust before any test runs a computation, so its XLA CPU flag is in place (see kltrust/__init__.py)."""

import kltrust  # noqa: F401
