"""Multi-host flags shared by every entry point (defined once, here, so the CLIs can coexist).

    python -m experiments.train ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I

Each flag falls back to its environment variable (``KLTRUST_COORDINATOR_ADDRESS``,
``KLTRUST_NUM_PROCESSES``, ``KLTRUST_PROCESS_ID``); ``--coordinator_address=auto`` lets JAX detect a
TPU pod slice or a SLURM / Open MPI job. Without any of them a run is single-process.
"""

from __future__ import annotations

from absl import flags

from kltrust import sharding

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator (or 'auto' on a TPU pod / SLURM); enables multi-host.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 ... N−1.")


def initialize() -> bool:
    """Starts `jax.distributed` from the flags (or environment); call before touching a device."""
    return sharding.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
