"""Imports kltrust before any test runs a computation, so its XLA CPU flag is in place (see kltrust/__init__.py)."""

import kltrust  # noqa: F401

import pytest  # noqa: E402

from subprocs import Children  # noqa: E402


@pytest.fixture
def children():
    """Child processes that end with the test: any still running are stack-dumped and killed."""
    with Children() as kids:
        yield kids
