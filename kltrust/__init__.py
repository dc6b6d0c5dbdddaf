"""kltrust: compare the ways a policy is kept close to a reference while it learns."""

import os as _os

__version__ = "0.1.0"

# XLA's CPU backend can deadlock in its multi-threaded Eigen pool while materialising the result of
# a vmapped program (seen here twice in ~60 PPO programs on 2 cores; same symptom and workaround as
# github.com/PyAutoLabs/PyAutoFit/issues/1528). Single-threaded Eigen avoids it; XLA still runs
# independent ops in parallel, and accelerators ignore the flag. The flag only takes effect if kltrust
# is imported before JAX starts its backend. Set KLTRUST_EIGEN_THREADS=1 to keep the default.
if _os.environ.get("KLTRUST_EIGEN_THREADS") != "1" and "xla_cpu_multi_thread_eigen" not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()

# With several CPU devices (forced host devices or CPU processes), XLA's concurrency-optimised CPU
# scheduler can start independent collectives in a different order on different devices, and the
# devices then wait for each other forever (seen with TRPO on 8 forced devices: 6 devices in one
# all-reduce, 2 in another). The default scheduler keeps one order. `kltrust.processes.initialize`
# sets the same flag for multi-process runs.
if ("xla_force_host_platform_device_count" in _os.environ.get("XLA_FLAGS", "")
        and "xla_cpu_enable_concurrency_optimized_scheduler" not in _os.environ["XLA_FLAGS"]):
    _os.environ["XLA_FLAGS"] += " --xla_cpu_enable_concurrency_optimized_scheduler=false"

# Threefry (jax.random) lowered on CPU as one fused kernel rather than a rolled loop of small ops:
# same bits, far fewer dispatched operations per rollout step (kltrust/threefry_cpu.py).
from kltrust import threefry_cpu as _threefry_cpu  # noqa: E402

_threefry_cpu.install()
