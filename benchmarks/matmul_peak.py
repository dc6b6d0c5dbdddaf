"""The machine's measured float32 matmul rate: the peak the transformer rows are divided by.

    python -m benchmarks.matmul_peak --impl=jax|jax_kltrust|torch [--n=2048 --repeats=10]

C = A·B with A, B [n, n] float32; FLOP/s = 2n³ / median time of ``repeats`` products after a
warm-up. ``jax``: XLA with its default CPU threading; ``jax_kltrust``: XLA as kltrust configures it
(``import kltrust`` first sets ``--xla_cpu_multi_thread_eigen=false``, see kltrust/__init__.py);
``torch``: ``torch.matmul`` with ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from benchmarks import bench_util

_IMPL = flags.DEFINE_enum("impl", "jax", ["jax", "jax_kltrust", "torch"], "Library.")
_N = flags.DEFINE_integer("n", 2048, "Matrix size.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed products.")


def main(argv: Sequence[str]) -> None:
    del argv
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((_N.value, _N.value), np.float32) for _ in range(2))
    if _IMPL.value == "torch":
        import torch

        threads = bench_util.apply_threads(torch)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        times = bench_util.call_times(lambda: torch.matmul(ta, tb), _REPEATS.value, 2)
    else:
        if _IMPL.value == "jax_kltrust":
            import kltrust  # noqa: F401  (sets kltrust's XLA flags before JAX starts)
        threads = bench_util.apply_threads()
        import jax

        ja, jb = jax.device_put(a), jax.device_put(b)
        dot = jax.jit(lambda x, y: x @ y)
        times = bench_util.call_times(lambda: dot(ja, jb).block_until_ready(), _REPEATS.value, 2)
    median = float(np.median(times))
    bench_util.emit({"bench": "matmul_peak", "impl": _IMPL.value, "threads": threads, "n": _N.value,
                     "seconds": median, "flops_per_s": 2 * _N.value**3 / median,
                     "times_s": times, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                     "versions": bench_util.versions()})


if __name__ == "__main__":
    app.run(main)
