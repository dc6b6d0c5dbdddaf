"""Where a DPO step's time goes, kltrust against PyTorch, at `benchmarks.dpo_peers`' sizes.

    python -m benchmarks.dpo_profile --impl=kltrust|torch [dpo_peers' size flags, e.g. the bench
        driver's large size: --layers=4 --width=256 --heads=4 --vocab=1024 --prompt_len=16
        --response_len=112 --pairs=16] [--repeats=3 --chunk=1]

The step is `benchmarks.dpo_peers`' (same model, data and optimiser); after its timed calls, one
more call is traced:

- kltrust: a ``jax.profiler`` trace of the compiled chunk (`bench_util.worker_busy`): the time
  each of XLA's CPU worker threads spent inside operations, as a share of the call's window, and
  the operations' thread time by kind (``ynn_fusion``: XLA's matrix products through YNNPACK,
  with what is fused into them; ``transpose_copy_fusion`` etc.: layout changes; ...).
- torch: ``torch.profiler`` over the step: each ATen operator's time on the calling thread (an
  operator's intra-op threads work inside that span, so on 2 cores a matrix product's span is
  its wall time with both cores on it).

Prints the step time (median) and the tables; ``--json_out`` keeps the row.
"""

from __future__ import annotations

import collections
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from benchmarks import bench_util, dpo_peers

_TOP = flags.DEFINE_integer("top", 12, "Rows of the by-kind table.")


def kltrust_profile(call: Callable[[], None]) -> dict[str, Any]:
    """`bench_util.worker_busy` of one ``call()``."""
    return bench_util.worker_busy(call)


def torch_profile(step: Callable[[], Any]) -> dict[str, Any]:
    """Each ATen operator's self time (ms) and calls over one ``step()`` (torch.profiler)."""
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    kinds = {e.key: [e.count, e.self_cpu_time_total / 1e3] for e in prof.key_averages()
             if e.key.startswith("aten::")}
    return {"kinds": kinds}


def report(row: dict[str, Any], top: int) -> str:
    """The row's profile as text: the step, the threads' busy share (kltrust), the top kinds."""
    step_ms = statistics.median(row["step_times_s"]) * 1e3
    profile = row["profile"]
    per_call = row.get("chunk", 1)  # kltrust traces one chunk of ``chunk`` steps
    lines = [f"{row['impl']}: {step_ms:.1f} ms per step (median of {len(row['step_times_s'])})"]
    if "busy_ms" in profile:
        window = profile["window_ms"]
        lines.append(f"traced call: {window:.1f} ms window ({per_call} steps)")
        for thread, busy in profile["busy_ms"].items():
            lines.append(f"  {thread}: inside operations {busy:.1f} ms, {100 * busy / window:.0f}%")
    kinds = collections.Counter({k: v[1] for k, v in profile["kinds"].items()})
    total = sum(kinds.values())
    lines.append(f"operation time by kind, ms per step (sum {total / per_call:.1f}):")
    for kind, ms in kinds.most_common(top):
        count = profile["kinds"][kind][0]
        lines.append(f"  {ms / per_call:8.1f}  {100 * ms / total:5.1f}%  {count:6d}  {kind}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    del argv
    torch = None
    if dpo_peers._IMPL.value == "torch":
        import torch
    threads = bench_util.apply_threads(torch)
    row: dict[str, Any] = {"bench": "dpo_profile", "impl": dpo_peers._IMPL.value,
                           "threads": threads}
    if dpo_peers._IMPL.value == "kltrust":
        dpo_peers.run_kltrust(row, profile=kltrust_profile)
    else:
        dpo_peers.run_torch(row, profile=torch_profile)
    print(report(row, _TOP.value), flush=True)
    bench_util.emit(row)


if __name__ == "__main__":
    flags.FLAGS.set_default("repeats", 3)
    flags.FLAGS.set_default("chunk", 1)
    app.run(main)
