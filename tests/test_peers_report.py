"""`benchmarks.peers_report`'s real-model, brax and vmapped-seeds sections: medians, per-rep
ratio ranges and the 'slower' list, from rows as `benchmarks.trl_real`, `benchmarks.control_steps`
and `benchmarks.control_peers` write them with ``--json_out`` (pure formatting; the expected cells
are worked out by hand beside them), and `bench_util.covered_ns`, the trace profiles' busy time."""

from __future__ import annotations

import statistics

import hypothesis
import hypothesis.strategies as st

from benchmarks import bench_util
from benchmarks.peers_report import (WARM_NAME, brax_section, control_section, real_section,
                                     seeds_section)


def _row(impl: str, rep: int, dpo_s: float, grpo_s: float) -> dict:
    first = "compile_s" if impl == "kltrust" else "first_step_s"
    methods = {
        "dpo": {"method": "dpo", "tokens_per_step": 1376, "step_s": dpo_s,
                "tokens_per_s": 1376 / dpo_s, first: 10.0 + rep},
        "grpo": {"method": "grpo", "tokens_per_step": 688, "step_s": grpo_s,
                 "tokens_per_s": 688 / grpo_s, first: 20.0 + rep}}
    return {"bench": "real_step", "impl": impl, "rep": rep, "peak_rss_mb": 1000.0 + rep,
            "methods": methods}


def test_the_section_gives_medians_and_the_ratio_of_tokens_per_second():
    results = [_row("kltrust", 0, 0.5, 4.0), _row("trl", 0, 1.0, 2.0),
               _row("kltrust", 1, 0.25, 5.0), _row("trl", 1, 1.0, 2.5),
               _row("kltrust", 2, 0.5, 4.0), _row("trl", 2, 0.5, 2.0)]
    slower: list[str] = []
    lines = real_section(results, slower)
    # cells after the method and implementation: tokens per step, ms, tokens/s, first, RSS, ratio
    table = {(cells[1].strip(), cells[2].strip()): [c.strip() for c in cells[3:-1]]
             for cells in (line.split("|") for line in lines if line.startswith("| DPO")
                           or line.startswith("| GRPO"))}
    dpo_k = table[("DPO", "kltrust (JAX, compiled chunk)")]
    # tokens/s per rep: 2752, 5504, 2752 → median 2752 (min 2752, max 5504)
    assert dpo_k[2] == "2,752 (2,752–5,504)"
    # ratio of medians: 2752 ÷ median(1376, 1376, 2752) = 2.00; per-rep ratios 2, 4, 1
    ratio = statistics.median([2752, 5504, 2752]) / statistics.median([1376, 1376, 2752])
    assert dpo_k[5] == f"**{ratio:.2f}×** (1.00–4.00)"
    grpo_k = table[("GRPO", "kltrust (JAX, compiled chunk)")]
    assert grpo_k[5].startswith(f"**{(688 / 4.0) / (688 / 2.0):.2f}×**")
    assert table[("GRPO", "TRL (PyTorch eager)")][3] == "21.0 (20.0–22.0)"  # first step, s
    assert slower == ["real-model GRPO step"]  # DPO faster, GRPO slower than TRL


def test_no_section_without_both_sides():
    assert real_section([_row("kltrust", 0, 0.5, 4.0)], []) == []


def test_the_brax_section_gives_each_preset_median_over_reps():
    def rep(rep: int, call: float) -> dict:
        return {"bench": "control_steps", "rep": rep, "peak_rss_mb": 2000.0,
                "rows": [{"preset": "inverted_pendulum_clip", "env": "brax:inverted_pendulum",
                          "batch": 2048, "compile": 60.0, "call": call, "updates": 2,
                          "steps_per_s": 2 * 2048 / call, "seeds": 1}]}
    lines = brax_section([rep(0, 2.0), rep(1, 4.0), rep(2, 1.0)])
    row = next(line for line in lines if line.startswith("| inverted_pendulum_clip"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4] == "1.00 (0.50–2.00)"  # s per update = call ÷ updates: 1.0, 2.0, 0.5
    assert cells[5] == "2,048 (1,024–4,096)"  # 4096 / call
    assert brax_section([]) == []


def test_the_seeds_section_splits_rows_by_host_devices_and_divides_by_one_seed():
    def row(seeds: int, rep: int, rate: float, devices: int | None = None) -> dict:
        r = {"bench": "control_throughput", "impl": "kltrust", "algo": "ppo", "rep": rep,
             "seeds": seeds, "env_steps": 1000 * seeds, "steps_per_s_run": rate,
             "compile_s": 10.0, "peak_rss_mb": 700.0}
        if devices is not None:  # rows written before --devices existed have no key: 1 device
            r["devices"] = devices
        return r
    results = [row(1, 0, 100.0), row(1, 1, 200.0),
               row(8, 0, 150.0, 1), row(8, 1, 300.0, 1),
               row(8, 0, 400.0, 2), row(8, 1, 500.0, 2)]
    lines = seeds_section(results)
    cells = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in
                                                             line.split("|")[3:-1]]
             for line in lines if line.startswith("| ") and not line.startswith("| seeds")}
    assert set(cells) == {("1", "1"), ("8", "1"), ("8", "2")}
    # all seeds ÷ one seed: median(400, 500) ÷ median(100, 200) = 450 / 150 = 3.00;
    # per rep 400/100 = 4.00, 500/200 = 2.50
    assert cells[("8", "2")][5] == "**3.00×** (2.50–4.00)"
    assert cells[("8", "1")][5] == "**1.50×** (1.50–1.50)"  # 225 / 150; 150/100, 300/200
    assert cells[("8", "2")][2] == "56 (50–62)"  # per seed: 400/8 = 50, 500/8 = 62.5
    assert cells[("8", "2")][6] == "–"  # no SB3 rows, no ratio to them
    assert seeds_section([]) == []


def test_the_warm_cache_rows_get_their_own_control_row_and_stay_out_of_the_seeds_table():
    def row(impl: str, rep: int, run: float, total: float, rss: float, **tags) -> dict:
        return {"bench": "control_throughput", "impl": impl, "algo": "ppo", "rep": rep,
                "seeds": 1, "env_steps": 1000, "steps_per_s_run": run,
                "steps_per_s_total": total, "compile_s": 1000 / total - 1000 / run,
                "peak_rss_mb": rss, **tags}
    results = [row("kltrust", 0, 100.0, 10.0, 700.0), row("sb3", 0, 5.0, 4.0, 350.0),
               row("kltrust", 0, 100.0, 50.0, 280.0, variant="cache_warm"),
               row("kltrust", 0, 100.0, 9.0, 720.0, variant="cache_cold"),
               row("kltrust", 1, 200.0, 20.0, 700.0), row("sb3", 1, 5.0, 5.0, 350.0),
               row("kltrust", 1, 100.0, 40.0, 245.0, variant="cache_warm"),
               row("kltrust", 1, 100.0, 8.0, 720.0, variant="cache_cold")]
    slower: list[str] = []
    table = {cells[1].strip(): [c.strip() for c in cells[2:-1]]
             for cells in (line.split("|") for line in control_section(results, slower))
             if len(cells) > 9 and not cells[1].strip().startswith(("implementation", "---"))}
    assert set(table) == {"kltrust PPO (cartpole_clip)", WARM_NAME, "SB3 PPO"}  # no cold row
    # incl. compile: median(50, 40) = 45 over median(4, 5) = 4.5 → 10.00; per rep 12.5, 8.0
    assert table[WARM_NAME][6] == "**10.00×** (8.00–12.50)"
    # peak RSS: median(280, 245) = 262.5 over 350 → 0.75; per rep 0.80, 0.70
    assert table[WARM_NAME][7] == "**0.75×** (0.70–0.80)"
    assert table["kltrust PPO (cartpole_clip)"][7] == "**2.00×** (2.00–2.00)"
    assert table["SB3 PPO"][5:] == ["", "", ""]
    # the seeds table divides by the plain one-seed rows only: median(100, 200) = 150
    seeds = [line for line in seeds_section(results) if line.startswith("| 1 ")]
    assert len(seeds) == 1 and "| 150 (100–200) |" in seeds[0]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20)), max_size=12))
def test_covered_ns_is_the_union_of_the_intervals(intervals):
    # The trace profiles' busy time (bench_util.worker_busy): against the count of unit cells
    # [k, k + 1) that some interval [start, start + duration) covers.
    cells = {k for start, duration in intervals for k in range(start, start + duration)}
    assert bench_util.covered_ns(intervals) == len(cells)
