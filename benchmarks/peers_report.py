"""The sections of `benchmarks.peers`' Markdown table, from the rows its runs wrote (pure
formatting: medians, ranges and kltrust ÷ peer ratios)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any



def _cell(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def _ratio(a_rows: Sequence[dict], b_rows: Sequence[dict], key: str, b_key: str | None = None,
           invert: bool = False) -> str:
    """median(a) ÷ median(b) of ``key`` (``invert``: b ÷ a), and the range of the per-rep ratios
    (rows paired by their ``rep``; a rep missing or None on either side is left out of the range)."""
    b_key = b_key or key
    a = {r.get("rep"): r.get(key) for r in a_rows}
    b = {r.get("rep"): r.get(b_key) for r in b_rows}
    a_vals = [v for v in a.values() if v is not None]
    b_vals = [v for v in b.values() if v is not None]
    if not a_vals or not b_vals:
        return "–"
    if invert:
        a, b, a_vals, b_vals = b, a, b_vals, a_vals
    ratio = statistics.median(a_vals) / statistics.median(b_vals)
    pairs = [a[r] / b[r] for r in a if r in b and a[r] is not None and b[r] is not None]
    if len(pairs) > 1:
        return f"**{ratio:.2f}×** ({min(pairs):.2f}–{max(pairs):.2f})"
    return f"**{ratio:.2f}×**"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows]


def _select(results, **match) -> list[dict[str, Any]]:
    return [r for r in results if all(r.get(k) == v for k, v in match.items())]


def _values(rows, key) -> list[float]:
    return [r.get(key) for r in rows]


IMPL_NAMES = {("ppo", "kltrust"): "kltrust PPO (cartpole_clip)", ("ppo", "sb3"): "SB3 PPO",
              ("trpo", "kltrust"): "kltrust TRPO (cartpole_trpo)",
              ("trpo", "sb3"): "sb3-contrib TRPO"}
WARM_NAME = "↳ warm program cache"


def control_section(results, slower: list[str]) -> list[str]:
    lines = []
    rows = []
    for algo in ("ppo", "trpo"):
        every = _select(results, bench="control_throughput", impl="kltrust", algo=algo, seeds=1)
        k = [r for r in every if "variant" not in r]  # as shipped, no cache
        warm = [r for r in every if r.get("variant") == "cache_warm"]
        s = _select(results, bench="control_throughput", impl="sb3", algo=algo)
        for name, rs in ((IMPL_NAMES[algo, "kltrust"], k), (WARM_NAME, warm),
                         (IMPL_NAMES[algo, "sb3"], s)):
            if not rs:
                continue
            run, total = _values(rs, "steps_per_s_run"), _values(rs, "steps_per_s_total")
            ours = rs is not s and bool(s)
            rows.append([name, f"{rs[0]['env_steps']:,}", _cell(run),
                         _cell(total), _cell(_values(rs, "compile_s"), "{:.1f}"),
                         _cell(_values(rs, "peak_rss_mb")),
                         _ratio(rs, s, "steps_per_s_run") if ours else "",
                         _ratio(rs, s, "steps_per_s_total") if ours else "",
                         _ratio(rs, s, "peak_rss_mb") if ours else ""])
        if k and s:
            for key, what in (("steps_per_s_run", "throughput (run)"),
                              ("steps_per_s_total", "throughput (incl. compile)")):
                if statistics.median(_values(k, key)) < statistics.median(_values(s, key)):
                    slower.append(f"{algo.upper()} {what}")
    if rows:
        lines += ["### Throughput: a fixed budget of environment steps, 1 seed", ""]
        lines += _table(["implementation", "env steps", "env steps/s (run)",
                         "env steps/s (incl. compile / setup)", "compile / setup s",
                         "peak RSS MiB", "kltrust ÷ peer (run)", "kltrust ÷ peer (incl.)",
                         "kltrust ÷ peer (peak RSS)"], rows)
        lines += [""]
        if any(r[0] == WARM_NAME for r in rows):
            lines += [f"\"{WARM_NAME}\": the row above it run a second time on the directory a "
                      "first run filled (JAX_COMPILATION_CACHE_DIR, as --compilation_cache sets "
                      "it): its compiled chunk and initial state are loaded "
                      "(kltrust.program_cache). For peak RSS, below 1 favours kltrust.", ""]

    rows = []
    for algo in ("ppo", "trpo"):
        k = _select(results, bench="control_threshold", impl="kltrust", algo=algo)
        s = _select(results, bench="control_threshold", impl="sb3", algo=algo)
        for impl, rs in (("kltrust", k), ("sb3", s)):
            if not rs:
                continue
            hit = [r for r in rs if r.get("reached")]
            rows.append([
                IMPL_NAMES[algo, impl], f"{len(hit)}/{len(rs)}",
                _cell(_values(hit, "steps_to_threshold")),
                _cell(_values(hit, "time_to_threshold_run_s"), "{:.1f}"),
                _cell(_values(hit, "time_to_threshold_total_s"), "{:.1f}"),
                f"{rs[0]['resolution_steps']:,}", _cell(_values(rs, "peak_rss_mb")),
                _ratio(k, s, "time_to_threshold_total_s", invert=True)
                if impl == "kltrust" and s else ""])
        if k and s:
            kt = [r["time_to_threshold_total_s"] for r in k if r.get("reached")]
            st = [r["time_to_threshold_total_s"] for r in s if r.get("reached")]
            if kt and st and statistics.median(kt) > statistics.median(st):
                slower.append(f"{algo.upper()} time to threshold")
    if rows:
        thr = _select(results, bench="control_threshold")[0]["threshold"]
        lines += [f"### Time to a mean return of {thr:g} (last 100 episodes), one seed per rep "
                  "(rep i uses seed i on both sides)", ""]
        lines += _table(["implementation", "reached", "env steps to reach",
                         "wall s (excl. compile / setup)", "wall s (incl.)", "resolution (steps)",
                         "peak RSS MiB", "peer ÷ kltrust wall (incl.)"], rows)
        lines += ["", "Medians over the reps that reached it. kltrust's time is the end of the "
                  "compiled chunk in which the return first reached it (an upper bound at the "
                  "stated resolution); SB3 stops at the vector step. The steps show sample "
                  "efficiency: they differ by seed and implementation detail, not by speed.", ""]
    return lines


def seeds_section(results) -> list[str]:
    k = [r for r in _select(results, bench="control_throughput", impl="kltrust", algo="ppo")
         if "variant" not in r]  # the warm-cache rows are the control section's
    s = _select(results, bench="control_throughput", impl="sb3", algo="ppo")
    if not k:
        return []
    rows = []
    # Rows written before control_peers had --devices ran on one device.
    for n, devices in sorted({(r["seeds"], r.get("devices", 1)) for r in k}):
        rs = [{**r, "per_seed": r["steps_per_s_run"] / n} for r in k
              if r["seeds"] == n and r.get("devices", 1) == devices]
        total = _values(rs, "steps_per_s_run")
        rows.append([str(n), str(devices), f"{rs[0]['env_steps'] // n:,}", _cell(total),
                     _cell(_values(rs, "per_seed")), _cell(_values(rs, "compile_s"), "{:.1f}"),
                     _cell(_values(rs, "peak_rss_mb")),
                     _ratio(rs, [r for r in k if r["seeds"] == 1], "steps_per_s_run"),
                     _ratio(rs, s, "per_seed", "steps_per_s_run"),
                     _ratio(rs, s, "steps_per_s_run")])
    return ["### kltrust PPO with N seeds vmapped in one program", ""] + _table(
        ["seeds", "host devices", "env steps per seed", "env steps/s (all seeds)",
         "env steps/s per seed", "compile s", "peak RSS MiB", "all seeds ÷ one seed",
         "per seed ÷ SB3 PPO", "all seeds ÷ SB3 PPO"], rows) + [
        "", "Host devices: the seeds' axis split over that many CPU devices "
        "(`--config.mesh.runs`), each run by its own thread; still one compiled program. "
        "SB3 runs one seed per process; N seeds cost it N runs (or N processes sharing the "
        "same cores).", ""]


def peak_of(results) -> tuple[float | None, list[str]]:
    rows, best = [], None
    names = {"jax": "XLA, default threading", "jax_kltrust":
             "XLA as kltrust sets it (--xla_cpu_multi_thread_eigen=false)", "torch": "torch.matmul"}
    for impl in ("jax", "jax_kltrust", "torch"):
        rs = _select(results, bench="matmul_peak", impl=impl)
        if rs:
            values = [v / 1e9 for v in _values(rs, "flops_per_s")]
            rows.append([names[impl], _cell(values, "{:.1f}")])
            best = max(best or 0.0, statistics.median(values))
    if not rows:
        return None, []
    n = _select(results, bench="matmul_peak")[0]["n"]
    return best * 1e9, [f"### Measured float32 matmul peak ({n}×{n} · {n}×{n})", ""] + _table(
        ["library", "GFLOP/s"], rows) + ["", f"Peak used below: the best median, {best:.1f} GFLOP/s.",
                                         ""]


def dpo_section(results, peak: float | None, slower: list[str]) -> list[str]:
    lines = []
    for size in ("default", "large"):
        by_impl = {impl: _select(results, bench="dpo_step", size=size, variant=impl)
                   for impl in ("kltrust", "kltrust_eigen", "torch", "torch_compile")}
        if not any(by_impl.values()):
            continue
        torch_tps = _values(by_impl["torch"], "tokens_per_s")
        names = {"kltrust": "kltrust (JAX, as shipped)",
                 "kltrust_eigen": "kltrust, KLTRUST_EIGEN_THREADS=1",
                 "torch": "PyTorch eager", "torch_compile": "PyTorch torch.compile"}
        rows = []
        for impl, rs in by_impl.items():
            if not rs:
                continue
            tps = _values(rs, "tokens_per_s")
            achieved = [r["analytic_flops"] / r["step_s"] / 1e9 for r in rs]
            util = [a * 1e9 / peak * 100 for a in achieved] if peak else None
            rows.append([names[impl], f"{rs[0]['params']:,}",
                         _cell([v * 1e3 for v in _values(rs, "step_s")], "{:.1f}"), _cell(tps),
                         _cell(achieved, "{:.2f}"), _cell(util, "{:.1f}") if util else "–",
                         _cell(_values(rs, "compile_s"), "{:.1f}"),
                         _cell(_values(rs, "peak_rss_mb")),
                         _ratio(rs, by_impl["torch"], "tokens_per_s")
                         if torch_tps and impl != "torch" else ""])
            if impl.startswith("kltrust") and torch_tps and (
                    statistics.median(tps) < statistics.median(torch_tps)):
                slower.append(f"DPO {size} ({names[impl]})")
        r0 = next(r for rs in by_impl.values() for r in rs)
        shape = (f"{r0['layers']} layers × {r0['width']} wide, {r0['heads']} heads, vocab "
                 f"{r0['vocab']}, {r0['pairs']} pairs × 2 sequences of {r0['seq_len']} tokens")
        xla = [r.get("xla_flops") for r in by_impl["kltrust"] if r.get("xla_flops")]
        lines += [f"### DPO training step, {size} size: {shape}", ""]
        lines += _table(["implementation", "parameters", "ms per step", "tokens/s",
                         "GFLOP/s achieved", "% of matmul peak", "compile s", "peak RSS MiB",
                         "tokens/s ÷ PyTorch eager"], rows)
        flops = r0["analytic_flops"]
        note = f"FLOPs per step: {flops / 1e9:.2f} G analytic"
        if xla:
            note += f", {xla[0] / 1e9:.2f} G by XLA's cost analysis of the kltrust update"
        lines += ["", note + " (the analytic count is used for both sides).", ""]
    return lines


def real_section(results, slower: list[str]) -> list[str]:
    """SmolLM2-135M + LoRA, one DPO and one GRPO step: kltrust vs TRL (`benchmarks.trl_real`).
    Per method and side, the rows' median step times (each row's own median of its timed
    steps); tokens/s = tokens per step ÷ that; the ratio kltrust ÷ TRL of tokens/s."""
    by_impl = {impl: _select(results, bench="real_step", impl=impl) for impl in ("kltrust", "trl")}
    if not by_impl["kltrust"] or not by_impl["trl"]:
        return []
    names = {"kltrust": "kltrust (JAX, compiled chunk)", "trl": "TRL (PyTorch eager)"}
    rows = []
    for method in ("dpo", "grpo"):
        per = {impl: [dict(r["methods"][method], rep=r.get("rep"), peak_rss_mb=r["peak_rss_mb"])
                      for r in rs if method in r["methods"]] for impl, rs in by_impl.items()}
        if not per["kltrust"] or not per["trl"]:
            continue
        for impl, rs in per.items():
            first = "compile_s" if impl == "kltrust" else "first_step_s"
            rows.append([method.upper(), names[impl], f"{rs[0]['tokens_per_step']:,}",
                         _cell([r["step_s"] * 1e3 for r in rs], "{:,.0f}"),
                         _cell(_values(rs, "tokens_per_s")), _cell(_values(rs, first), "{:.1f}"),
                         _cell(_values(rs, "peak_rss_mb")),
                         _ratio(rs, per["trl"], "tokens_per_s") if impl == "kltrust" else ""])
        if statistics.median(_values(per["kltrust"], "tokens_per_s")) < statistics.median(
                _values(per["trl"], "tokens_per_s")):
            slower.append(f"real-model {method.upper()} step")
    return ["### SmolLM2-135M with LoRA (rank 8 on q, k, v, o): one training step, the same "
            "weights and tokens", ""] + _table(
        ["method", "implementation", "tokens per step", "ms per step", "tokens/s",
         "compile s (kltrust) / first step s (TRL)", "peak RSS MiB", "tokens/s ÷ TRL"], rows) + [
        "", "configs/real.py's dpo and grpo presets; what one step holds on each side, and what "
        "differs, is in benchmarks/trl_real.py's docstring.", ""]


def brax_section(results) -> list[str]:
    """kltrust PPO on brax tasks (`benchmarks.control_steps`): env steps/s per preset over reps."""
    reps = _select(results, bench="control_steps")
    presets: dict[str, list[dict]] = {}
    for r in reps:
        for m in r["rows"]:
            presets.setdefault(m["preset"], []).append(dict(m, peak_rss_mb=r["peak_rss_mb"]))
    if not presets:
        return []
    rows = [[name, ms[0]["env"], f"{ms[0]['batch']:,}",
             _cell(_values(ms, "compile"), "{:.1f}"),
             _cell([m["call"] / m["updates"] for m in ms], "{:.2f}"),
             _cell(_values(ms, "steps_per_s")), _cell(_values(ms, "peak_rss_mb"))]
            for name, ms in presets.items()]
    return ["### kltrust PPO on brax (MuJoCo dynamics through MJX): one seed, the PPO paper's "
            "Table 3 update", ""] + _table(
        ["preset", "env", "env steps per update", "compile + init s", "s per update",
         "env steps/s", "peak RSS MiB"], rows) + [
        "", "No peer row: brax's own PPO trainer minibatches segments of unroll_length steps, so "
        "its settings cannot be matched one for one (benchmarks/peers.py).", ""]


def compile_section(results) -> list[str]:
    variants = {v: _select(results, bench="compile_times", variant=v)
                for v in ("plain", "cache_cold", "cache_warm")}
    if not variants["plain"]:
        return []
    names = {"plain": "compile s (as shipped)", "cache_cold": "with a persistent cache: 1st run",
             "cache_warm": "2nd run (cache read)"}
    per_preset: dict[str, dict[str, float]] = {}
    info: dict[str, dict] = {}
    for variant, rs in variants.items():
        for r in rs:
            for p in r["presets"]:
                per_preset.setdefault(p["preset"], {})[variant] = p["compile_s"]
                info[p["preset"]] = p
    shown = [v for v in variants if variants[v]]
    def split(p: dict) -> str:
        if "init_s" not in p:
            return "–"
        return f"{p['init_s']:.1f} / {p['trace_lower_s']:.1f} / {p['xla_compile_s']:.1f}"

    plain = {p["preset"]: p for r in variants["plain"] for p in r["presets"]}
    rows = [[name] + [f"{per_preset[name][v]:.1f}" if v in per_preset[name] else "–"
                      for v in shown] + [split(plain.get(name, {})), str(info[name]["seeds"]),
                                         str(info[name]["updates_per_chunk"])]
            for name in per_preset]
    short = {"plain": "as shipped", "cache_cold": "cache written", "cache_warm": "cache read"}
    rss = ", ".join(f"{short[v]} {variants[v][0]['peak_rss_mb']:,.0f}" for v in shown)
    return ["### Compile time of the default presets (init + chunk, as the training loops report "
            "it)", ""] + _table(["preset"] + [names[v] for v in shown] + [
                "as shipped: init / trace+lower / XLA s", "seeds vmapped", "updates per chunk"],
                rows) + [
        "", f"One process compiles them all, one after the other; its peak RSS (MiB): {rss}. The "
        "persistent cache is JAX's (JAX_COMPILATION_CACHE_DIR, with "
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0) and, for the control presets, kltrust's "
        "program cache inside it (kltrust.program_cache: a warm run loads its compiled chunk and "
        "initial state, nothing traced); kltrust turns both on only when asked (the programs' "
        "--compilation_cache switch).",
        ""]
