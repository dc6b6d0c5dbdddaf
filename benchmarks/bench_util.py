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


def _worker_events(run) -> list[tuple[str, str, int, int]]:
    """(thread, kind, start ns, duration ns) of the leaf events of a ``jax.profiler`` trace of
    ``run()`` on XLA's CPU worker threads, numbered names folded into their kind (``dot.140`` ->
    ``dot``); loops, calls and executor spans are containers, not ops."""
    import jax  # here, not at the top: the driver imports this module without JAX

    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory):
            run()
        path = glob.glob(f"{directory}/**/*.xplane.pb", recursive=True)[0]
        data = jax.profiler.ProfileData.from_file(path)
    events = []
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA's CPU worker threads
                continue
            for event in line.events:
                name = event.name
                if name.startswith(("while", "call", "conditional", "ThunkExecutor", "end:")):
                    continue
                events.append((line.name, re.sub(r"\.\d+$", "", name), event.start_ns,
                               event.duration_ns))
    return events


def executed_ops(run) -> collections.Counter:
    """(kind -> [events, ns]) of the operations XLA's CPU runtime executed during ``run()`` (the
    leaf events of a ``jax.profiler`` trace on its worker threads, by kind of operation)."""
    kinds: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for _, kind, _, duration in _worker_events(run):
        kinds[kind] += duration
        counts[kind] += 1
    return collections.Counter({k: (counts[k], kinds[k]) for k in kinds})


def covered_ns(intervals: list[tuple[int, int]]) -> int:
    """Length of the union of ``(start, duration)`` intervals (nested or overlapping events of
    one thread count once)."""
    total, open_start, open_end = 0, None, None
    for start, duration in sorted(intervals):
        if open_end is None or start > open_end:
            total += 0 if open_end is None else open_end - open_start
            open_start, open_end = start, start + duration
        else:
            open_end = max(open_end, start + duration)
    return total if open_end is None else total + open_end - open_start


def worker_busy(run) -> dict[str, Any]:
    """How busy XLA's CPU worker threads were during ``run()``: the window from the first
    operation's start to the last one's end, and per thread the time inside operations (the union
    of its events' intervals), in ms, with the operations' time by kind (ms and event count)."""
    # the thread pool's region markers take no time and run no operation
    events = [e for e in _worker_events(run) if not e[1].startswith("ThreadpoolListener")]
    first = min(start for _, _, start, _ in events)
    last = max(start + duration for _, _, start, duration in events)
    busy = {thread: covered_ns([(s, d) for t, _, s, d in events if t == thread]) / 1e6
            for thread in sorted({t for t, _, _, _ in events})}
    kinds: dict[str, list] = {}
    for _, kind, _, duration in events:
        entry = kinds.setdefault(kind, [0, 0.0])
        entry[0] += 1
        entry[1] += duration / 1e6
    return {"window_ms": (last - first) / 1e6, "busy_ms": busy, "kinds": kinds}
