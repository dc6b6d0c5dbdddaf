"""Small helpers shared by the peer benchmarks (no JAX or torch import here: the driver uses it too).

Every benchmark row is a separate process (`benchmarks.peers` starts them), writes one JSON object
with ``--json_out`` and prints it. The thread budget is the set of cores the process may run on
(``os.sched_setaffinity``, which both XLA's and torch's thread pools size themselves by) plus
``torch.set_num_threads`` for torch; `apply_threads` sets both.
"""

from __future__ import annotations

import collections
import datetime
import glob
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

from absl import flags

JSON_OUT = flags.DEFINE_string("json_out", None, "Write this row's result (a JSON object) here.")
THREADS = flags.DEFINE_integer(
    "threads", None, "Cores this process may use (CPU affinity; torch.set_num_threads too). "
    "Default: every core the process may already use.")

PACKAGES = ("jax", "jaxlib", "flax", "optax", "gymnax", "torch", "stable_baselines3", "sb3_contrib",
            "gymnasium", "numpy")


def apply_threads(torch_module: Any = None) -> int:
    """Restricts this process to ``--threads`` cores (the first ones it may use); returns the count.

    Must run before JAX starts its backend (XLA sizes its thread pool from the affinity mask) and
    before torch runs anything; with ``torch_module`` its intra-op thread count is set to match.
    """
    allowed = sorted(os.sched_getaffinity(0))
    count = THREADS.value or len(allowed)
    if count < len(allowed):
        os.sched_setaffinity(0, allowed[:count])
    count = len(os.sched_getaffinity(0))
    if torch_module is not None:
        torch_module.set_num_threads(count)
    return count


def call_times(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones (``fn`` must block)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def machine() -> dict[str, Any]:
    """CPU model, cores this process may use, memory, load average and the date."""
    model = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    return {"cpu": model, "cores_allowed": len(os.sched_getaffinity(0)),
            "cores_online": os.cpu_count(), "mem_gib": mem_gib, "load_avg": os.getloadavg(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node()}


def emit(row: dict[str, Any]) -> None:
    """Adds the peak RSS and prints / writes ``row`` as JSON."""
    row = {**row, "peak_rss_mb_self": peak_rss_mb()}
    text = json.dumps(row, sort_keys=True, default=float)
    print(text)
    if JSON_OUT.value:
        path = pathlib.Path(JSON_OUT.value)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def executed_ops(run) -> collections.Counter:
    """(kind -> [events, ns]) of the operations XLA's CPU runtime executed during ``run()``: the
    leaf events of a ``jax.profiler`` trace on its worker threads, numbered names folded into
    their kind (``dot.140`` -> ``dot``); loops, calls and executor spans are containers, not ops."""
    import jax  # here, not at the top: the driver imports this module without JAX

    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            run()
        path = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
    kinds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA's CPU worker threads
                continue
            for event in line.events:
                name = event.name
                if name.startswith(("while", "call", "conditional", "ThunkExecutor", "end:")):
                    continue
                kind = re.sub(r"\.\d+$", "", name)
                kinds[kind] += event.duration_ns
                counts[kind] += 1
    return collections.Counter({k: (counts[k], kinds[k]) for k in kinds})
