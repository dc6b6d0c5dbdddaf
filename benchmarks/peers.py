"""kltrust against what users would pick instead, in one run on one machine: a Markdown table.

    python -m benchmarks.peers [--quick] [--reps=3] [--out=benchmarks/results.md]   (make bench)

Rows (each a separate process, so its peak memory is its own; see benchmarks/README.md):

* control: CartPole-v1 env steps/s for a fixed budget and the wall time to a mean return of 475,
  kltrust PPO (cartpole_clip) and TRPO (cartpole_trpo) vs Stable-Baselines3 PPO and sb3-contrib
  TRPO with matched hyperparameters (`benchmarks.control_peers`); kltrust with N vmapped seeds.
* DPO: one training step of a decoder of the dpo preset's size and of a larger one, kltrust vs a
  PyTorch implementation of the same model (`benchmarks.dpo_peers`), its FLOP/s against the
  measured matmul peak (`benchmarks.matmul_peak`).
* real model: one DPO and one GRPO step on SmolLM2-135M with LoRA, kltrust vs TRL on the same
  weights and tokens (`benchmarks.trl_real`; needs TRL and peft: the ``[bench]`` extra and
  ``[dev]``, as `make bench-trl`). Its own repetition count (``--real_reps``): a rep takes about
  3 minutes on 2 idle cores.
* brax: kltrust PPO's env steps/s on a MuJoCo task through brax (MJX physics), the PPO paper's
  Table 3 update (`benchmarks.control_steps`). No peer is run: brax's own PPO trainer collects
  and minibatches differently (segments of ``unroll_length``), so its settings cannot be
  matched one for one; the row is there so the table covers every family kltrust trains.
* compile time of the default presets (`benchmarks.compile_times`).

Repetitions are interleaved: rep 1 of every row (kltrust, then its peer), then rep 2, and so on, so
a machine that gets slower over the run hurts both sides alike. Cells are "median (min–max)" over
reps; ratios are kltrust ÷ peer of the medians (> 1: kltrust faster), with the range of the
per-rep ratios. Peak memory is the child's ``ru_maxrss`` from ``os.wait4``. Raw JSON per row and
each row's log go to ``--json_dir``.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from benchmarks import bench_util
from benchmarks.peers_report import (brax_section, compile_section, control_section,
                                      dpo_section, peak_of, real_section, seeds_section)

_QUICK = flags.DEFINE_bool("quick", False, "Smoke run (about 2 minutes on 2 idle cores): 1 rep, "
                           "tiny budgets, a low threshold, the default DPO size only.")
_REPS = flags.DEFINE_integer("reps", 3, "Repetitions of every row (interleaved).")
_PARTS = flags.DEFINE_list("parts", ["peak", "control", "seeds", "dpo", "real", "brax",
                                        "compile"],
                           "Which parts to run.")
_STEPS = flags.DEFINE_integer("steps", 100_000, "Control throughput: env steps per run.")
_THRESHOLD = flags.DEFINE_float("threshold", 475.0, "Control: return to reach.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Control: give up on the threshold after this "
                                  "many env steps (default: the presets' 500k).")
_SEEDS = flags.DEFINE_list("seeds", ["1", "8", "32"], "kltrust PPO vmapped-seed counts.")
_SEED_DEVICES = flags.DEFINE_list(
    "seed_devices", ["1", "2"], "Host CPU devices the vmapped seeds are split over "
    "(control_peers --devices; one program either way); counts of seeds they do not divide are "
    "skipped.")
_DPO_SIZES = flags.DEFINE_list("dpo_sizes", ["default", "large"], "DPO model sizes to run.")
_DPO_REPEATS = flags.DEFINE_integer("dpo_repeats", 20, "Timed steps (kltrust: chunks) per DPO row.")
_LARGE = flags.DEFINE_string(
    "large", "layers=4,width=256,heads=4,vocab=1024,prompt_len=16,response_len=112,pairs=16",
    "The larger DPO size (dpo_peers flags).")
_LARGE_REPEATS = flags.DEFINE_integer("large_repeats", 5, "Timed steps per large DPO row.")
_EIGEN = flags.DEFINE_bool("eigen_variant", True, "Also run kltrust's DPO rows with XLA's default "
                           "multi-threaded Eigen (KLTRUST_EIGEN_THREADS=1).")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False,
                                   "Also run the PyTorch DPO rows under torch.compile.")
_REAL_REPS = flags.DEFINE_integer("real_reps", 1, "Repetitions of the real-model rows (each runs "
                                  "--real_repeats timed steps per method and side).")
_REAL_REPEATS = flags.DEFINE_integer("real_repeats", 3, "benchmarks.trl_real --repeats.")
_BRAX_PRESETS = flags.DEFINE_list("brax_presets", ["inverted_pendulum_clip"],
                                  "PPO presets of the brax part (configs/ppo.py).")
_BRAX_REPS = flags.DEFINE_integer("brax_reps", 1, "Repetitions of the brax rows.")
_COMPILE_PRESETS = flags.DEFINE_list("compile_presets", None, "benchmarks.compile_times --presets "
                                     "(default: its default list; 'all' for every preset).")
_CACHE = flags.DEFINE_bool("cache_variant", True, "Also time the presets' compilation (and the "
                            "kltrust control throughput rows) with JAX's "
                           "persistent compilation cache (written by one run, read by the next).")
_PEAK_N = flags.DEFINE_integer("peak_n", 2048, "Matmul size of the peak measurement.")
_OUT = flags.DEFINE_string("out", "benchmarks/results.md", "Markdown output.")
_JSON_DIR = flags.DEFINE_string("json_dir", None, "Raw rows and logs (default runs/bench/DATE).")
_RENDER = flags.DEFINE_string("render_from", None, "Run nothing: rebuild the table from the "
                              "rows.jsonl of an earlier run's --json_dir.")

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Runner:
    """Starts rows as child processes and keeps their JSON results."""

    def __init__(self, json_dir: pathlib.Path, threads: int | None):
        self.json_dir = json_dir
        self.threads = threads
        self.results: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.count = 0

    def run(self, label: str, module: str, args: Sequence[str], env: dict[str, str] | None = None,
            **tags: Any) -> dict[str, Any] | None:
        self.count += 1
        stem = f"{self.count:03d}_{label}"
        out = self.json_dir / f"{stem}.json"
        cmd = [sys.executable, "-m", module, *args, f"--json_out={out}"]
        if self.threads:
            cmd.append(f"--threads={self.threads}")
        child_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        shown = " ".join(f"{k}={v}" for k, v in (env or {}).items())
        print(f"[{time.strftime('%H:%M:%S')}] {label}: {shown} {shlex.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        with open(self.json_dir / f"{stem}.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=log,
                                    stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0 or not out.exists():
            tail = (self.json_dir / f"{stem}.log").read_text().splitlines()[-15:]
            message = f"{label} failed (exit {proc.returncode}); log {self.json_dir}/{stem}.log"
            print(message + "\n    " + "\n    ".join(tail), flush=True)
            self.failures.append(message)
            return None
        row = json.loads(out.read_text())
        row.update(tags, label=label, peak_rss_mb=usage.ru_maxrss / 1024, process_wall_s=wall)
        self.results.append(row)
        with open(self.json_dir / "rows.jsonl", "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        return row


def _cache_env(directory: pathlib.Path) -> dict[str, str]:
    """A child's environment for JAX's persistent cache in ``directory``, every program kept (as
    `kltrust.compile_cache.enable` sets it; the program cache inside it follows)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(directory),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def render(runner: Runner, started: datetime.datetime, wall: float, argv: Sequence[str],
           machine: dict, end_load) -> str:
    results = runner.results
    versions = next((r["versions"] for r in results if "versions" in r), bench_util.versions())
    threads = next((r["threads"] for r in results), machine["cores_allowed"])
    slower: list[str] = []
    peak, peak_lines = peak_of(results)
    body = (control_section(results, slower) + seeds_section(results) + peak_lines
            + dpo_section(results, peak, slower) + real_section(results, slower)
            + brax_section(results) + compile_section(results))
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    head = [
        "## kltrust vs peers: benchmark results", "",
        f"- date: {started.isoformat(timespec='seconds')}; total wall time {wall / 60:.1f} min",
        f"- machine: {machine['cpu']}, {machine['cores_online']} cores online, "
        f"{machine['cores_allowed']} usable, {machine['mem_gib']:.0f} GiB; host {machine['host']}",
        f"- thread budget: {threads} cores for every row (CPU affinity; torch.set_num_threads"
        f"({threads}); XLA sizes its pool from the affinity)",
        f"- load average before / after: {', '.join(f'{x:.2f}' for x in machine['load_avg'])} / "
        f"{', '.join(f'{x:.2f}' for x in end_load)}",
        f"- versions: {vers}",
        f"- command: `python -m benchmarks.peers {' '.join(argv[1:])}`".rstrip(),
        f"- reps: {max((r.get('rep', 0) for r in results), default=0) + 1}, interleaved "
        "(kltrust, peer, kltrust, peer, …); cells are median (min–max); ratios > 1 favour kltrust",
        ""]
    tail = []
    if slower:
        tail += ["Rows where kltrust is slower than its peer: " + "; ".join(slower) + " "
                 "(see benchmarks/README.md, 'Where kltrust is slower').", ""]
    if runner.failures:
        tail += ["Failed rows: " + "; ".join(runner.failures), ""]
    return "\n".join(head + body + tail)


def _large_args() -> list[str]:
    return [f"--{kv.strip()}" for kv in _LARGE.value.split(",") if kv.strip()]


def render_from(json_dir: pathlib.Path) -> None:
    runner = Runner(json_dir, None)
    runner.results = [json.loads(line) for line in (json_dir / "rows.jsonl").read_text().splitlines()]
    meta = json.loads((json_dir / "run.json").read_text())
    markdown = render(runner, datetime.datetime.fromisoformat(meta["started"]), meta["wall_s"],
                      meta["argv"], meta["machine"], meta["end_load"])
    print(markdown)


def main(argv: Sequence[str]) -> None:
    if _RENDER.value:
        render_from(pathlib.Path(_RENDER.value))
        return
    quick = _QUICK.value
    reps = 1 if quick else _REPS.value
    steps = 4096 if quick else _STEPS.value
    threshold = 60.0 if quick else _THRESHOLD.value
    max_steps = 16_384 if quick else _MAX_STEPS.value
    seeds = ["4"] if quick else _SEEDS.value
    sizes = ["default"] if quick else _DPO_SIZES.value
    dpo_repeats = 3 if quick else _DPO_REPEATS.value
    compile_presets = (["ppo:cartpole_clip"] if quick else _COMPILE_PRESETS.value)
    started = datetime.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d_%H%M%S")
    json_dir = pathlib.Path(_JSON_DIR.value or ROOT / "runs" / "bench" / stamp)
    json_dir.mkdir(parents=True, exist_ok=True)
    machine = bench_util.machine()
    runner = Runner(json_dir, bench_util.THREADS.value)
    parts = set(_PARTS.value)
    t0 = time.perf_counter()

    for rep in range(reps):
        if "peak" in parts:
            for impl in ("jax", "jax_kltrust", "torch"):
                runner.run(f"peak_{impl}_r{rep}", "benchmarks.matmul_peak",
                           [f"--impl={impl}", f"--n={1024 if quick else _PEAK_N.value}",
                            f"--repeats={3 if quick else 10}"], rep=rep)
        if "control" in parts:
            for algo in ("ppo", "trpo"):
                for impl in ("kltrust", "sb3"):
                    runner.run(f"tput_{algo}_{impl}_r{rep}", "benchmarks.control_peers",
                               [f"--impl={impl}", f"--algo={algo}", "--mode=throughput",
                                f"--steps={steps}", f"--seed={rep}"], rep=rep)
                if _CACHE.value:
                    # The same kltrust row with --compilation_cache's effect (JAX's cache and the
                    # program cache inside it): a first run fills an empty directory, a second
                    # loads its chunk and initial state. Only the second is shown.
                    env = _cache_env(json_dir / f"cache_{algo}_r{rep}")
                    for variant in ("cache_cold", "cache_warm"):
                        runner.run(f"tput_{algo}_kltrust_{variant}_r{rep}",
                                   "benchmarks.control_peers",
                                   ["--impl=kltrust", f"--algo={algo}", "--mode=throughput",
                                    f"--steps={steps}", f"--seed={rep}"], env=env, rep=rep,
                                   variant=variant)
            for algo in ("ppo", "trpo") if not quick else ("ppo",):
                for impl in ("kltrust", "sb3"):
                    args = [f"--impl={impl}", f"--algo={algo}", "--mode=threshold",
                            f"--threshold={threshold}", f"--seed={rep}"]
                    if max_steps:
                        args.append(f"--max_steps={max_steps}")
                    runner.run(f"thr_{algo}_{impl}_r{rep}", "benchmarks.control_peers", args,
                               rep=rep)
        if "seeds" in parts:
            for n in seeds:
                if n == "1" and "control" in parts:
                    continue  # the throughput row above is the 1-seed row
                for devices in ([1] if n == "1" or quick else map(int, _SEED_DEVICES.value)):
                    if int(n) % devices:
                        continue
                    suffix = "" if devices == 1 else f"_dev{devices}"
                    runner.run(f"seeds{n}{suffix}_r{rep}", "benchmarks.control_peers",
                               ["--impl=kltrust", "--algo=ppo", "--mode=throughput",
                                f"--steps={steps}", f"--seeds={n}", f"--devices={devices}",
                                f"--seed={rep}"], rep=rep)
        if "dpo" in parts:
            for size in sizes:
                base = _large_args() if size == "large" else []
                repeats = _LARGE_REPEATS.value if size == "large" else dpo_repeats
                # kltrust runs DPO in compiled chunks of updates_per_eval = 10 updates (the
                # default size times those); at the large size a step takes long enough that
                # one update per call costs nothing measurable, and keeps the row short.
                chunk = 10 if size == "default" else 1
                variants = [("kltrust", ["--impl=kltrust", f"--chunk={chunk}",
                                         f"--repeats={repeats}"], None)]
                if _EIGEN.value and not quick:
                    variants.append(("kltrust_eigen", variants[0][1],
                                     {"KLTRUST_EIGEN_THREADS": "1"}))
                variants.append(("torch", ["--impl=torch", f"--repeats={repeats}"], None))
                if _TORCH_COMPILE.value:
                    variants.append(("torch_compile", ["--impl=torch", "--torch_compile",
                                                       f"--repeats={repeats}"], None))
                for variant, args, env in variants:
                    runner.run(f"dpo_{size}_{variant}_r{rep}", "benchmarks.dpo_peers",
                               base + args, env=env, rep=rep, size=size, variant=variant)
        if "real" in parts and rep < (1 if quick else _REAL_REPS.value):
            # kltrust first: it writes the inputs (tokens, probe logits, proxy head) that the TRL
            # process reads and checks against its own load of the same GGUF.
            real_dir = json_dir / f"real_r{rep}"
            methods = "dpo" if quick else "dpo,grpo"
            for impl in ("kltrust", "trl"):
                runner.run(f"real_{impl}_r{rep}", "benchmarks.trl_real",
                           [f"--impl={impl}", f"--workdir={real_dir}", f"--methods={methods}",
                            f"--repeats={1 if quick else _REAL_REPEATS.value}"], rep=rep)
        if "brax" in parts and rep < (1 if quick else _BRAX_REPS.value):
            runner.run(f"brax_r{rep}", "benchmarks.control_steps",
                       [f"--presets={','.join(_BRAX_PRESETS.value)}", "--seeds=1",
                        f"--updates={1 if quick else 2}", f"--repeats={1 if quick else 3}"],
                       rep=rep)
    if "compile" in parts:
        args = [f"--presets={','.join(compile_presets)}"] if compile_presets else []
        runner.run("compile_times", "benchmarks.compile_times", args, rep=0, variant="plain")
        if _CACHE.value:
            # JAX's persistent compilation cache (off in kltrust), every program cached (JAX's
            # default skips those compiled in under 1 s: the eager init's many small ones): a
            # first run writes it, a second run of the same programs reads it.
            env = _cache_env(json_dir / "jax_cache")
            for variant in ("cache_cold", "cache_warm"):
                runner.run(f"compile_times_{variant}", "benchmarks.compile_times", args, env=env,
                           rep=0, variant=variant)

    wall = time.perf_counter() - t0
    del argv  # absl has taken the flags out; the command is shown as typed (sys.argv)
    end_load = os.getloadavg()
    (json_dir / "run.json").write_text(json.dumps(
        {"started": started.isoformat(), "wall_s": wall, "argv": sys.argv, "machine": machine,
         "end_load": end_load}))
    markdown = render(runner, started, wall, sys.argv, machine, end_load)
    (json_dir / "results.md").write_text(markdown + "\n")
    out = pathlib.Path(_OUT.value)
    if not out.is_absolute():
        out = ROOT / out
    out.write_text(markdown + "\n")
    print("\n" + markdown)
    print(f"written: {out} (raw rows and logs: {json_dir})")
    if runner.failures:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
