"""Sets up the suite's shared XLA cache, then imports kltrust before any test runs a computation, so
its XLA CPU flag is in place (see kltrust/__init__.py).

One persistent compilation cache serves the whole run: the pytest process that starts first makes
a temporary directory and names it in the environment, so the xdist workers and every child
process (CLI runs, notebook kernels, the two-process run) inherit it. Many tests compile the same
program (a preset's chunk in a run, its resume and its SIGTERM copy); the second compile is a load
of XLA's output. The executable loaded is the one compiled, so no number changes. What the tests
exercise stays the default path: ``KLTRUST_PROGRAM_CACHE=off`` keeps kltrust's own program cache
out (tests/test_program_cache.py turns it on for its children), so every run still traces and
initialises. Set ``KLTRUST_TEST_XLA_CACHE=DIR`` to keep the cache across runs, or ``=off`` to
compile everything afresh.
"""

import atexit
import os
import shutil
import tempfile

_CACHE_VARIABLE = "KLTRUST_TEST_XLA_CACHE"


def _shared_xla_cache() -> None:
    """Names the run's cache directory in the environment (JAX reads it when it is imported)."""
    directory = os.environ.get(_CACHE_VARIABLE)
    if directory == "off":
        return
    if directory is None:  # the first pytest process of this run: it owns the directory
        directory = tempfile.mkdtemp(prefix="kltrust-test-xla-")
        os.environ[_CACHE_VARIABLE] = directory
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=directory,
        # Keep every program: most of a small test's compile time is in programs below JAX's
        # default 1 s threshold.
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        # No size bound: a bound would make JAX scan the whole directory at every write. So no
        # file lock either: a process that reads an entry while another is still writing it gets
        # a truncated stream, which JAX reports in a warning before compiling the program itself.
        KLTRUST_PROGRAM_CACHE="off",
    )


_shared_xla_cache()

import kltrust  # noqa: E402, F401

import pytest  # noqa: E402

from subprocs import Children  # noqa: E402


@pytest.fixture
def children():
    """Child processes that end with the test: any still running are stack-dumped and killed."""
    with Children() as kids:
        yield kids
