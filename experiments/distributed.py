"""Multi-host flags shared by every entry point (defined once, here, so the CLIs can coexist).

    python -m experiments.train ... --coordinator_address=HOST:PORT --num_processes=N --process_id=I \
        [--peer_timeout=300]

Each flag falls back to its environment variable (``KLTRUST_COORDINATOR_ADDRESS``,
``KLTRUST_NUM_PROCESSES``, ``KLTRUST_PROCESS_ID``, ``KLTRUST_PEER_TIMEOUT``); ``--coordinator_address=auto`` lets JAX detect a
TPU pod slice or a SLURM / Open MPI job. Without any of them a run is single-process.
"""

from __future__ import annotations

from absl import flags

from kltrust import processes

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0's coordinator (or 'auto' on a TPU pod / SLURM); enables multi-host.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "How many processes take part.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 ... N−1.")
_PEER_TIMEOUT = flags.DEFINE_float(
    "peer_timeout", None,
    "Seconds any wait for a peer process may take (start-up, heartbeats, barriers, agreements, "
    f"shut-down) before the run fails with an error; default {processes.DEFAULT_TIMEOUT_S}.")


def initialize() -> bool:
    """Starts `jax.distributed` from the flags (or environment); call before touching a device."""
    return processes.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                _PEER_TIMEOUT.value)
