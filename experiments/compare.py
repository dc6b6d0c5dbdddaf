"""Run several presets (each with its seeds vmapped in one program) and tabulate them side by side.

    python -m experiments.compare --config_file=configs/ppo.py \
        --presets=cartpole_none,cartpole_clip,cartpole_kl_adaptive --num_seeds=3 --workdir=runs/cmp

Each preset gets its own run directory under ``workdir`` (the outputs of `experiments.train`), and
the comparison writes ``summary.md``, ``summary.csv`` and ``returns.png`` there. ``score`` is the
mean return of the last 100 episodes at the end of training (the PPO paper's measure), per seed.
Every preset's config is built and checked first: a bad flag or config prints one line and exits
with status 2 before anything is compiled or written (`experiments.cli`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from absl import flags, logging

from experiments import cli
from kltrust.metrics import rows_to_csv, write_text_atomic
from kltrust.sweep import load_preset
from kltrust.train import control_config, loop

_CONFIG_FILE = flags.DEFINE_string("config_file", "configs/ppo.py", "Config file with get_config(preset).")
_PRESETS = flags.DEFINE_list(
    "presets", ["cartpole_none", "cartpole_clip", "cartpole_kl_adaptive"],
    "Presets to compare: names in --config_file, or FILE:PRESET to mix families (e.g. "
    "configs/trpo.py:cartpole_trpo).")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per preset (vmapped).", lower_bound=1)
_TOTAL = flags.DEFINE_integer("total_timesteps", None, "Override every preset's total_timesteps.",
                              lower_bound=1)
_THRESHOLD = flags.DEFINE_float("threshold", None, "Report the first step at which the score reaches this.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/compare", "Output directory.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace run directories of different configs.")


def summarise(preset: str, result: loop.RunResult, threshold: float | None) -> dict[str, object]:
    """One table row: final score per seed, its mean ± std, time to threshold, KL and timings."""
    score = result.metrics["episode_return"]  # [seeds, updates], last-100-episode mean
    final = score[:, -1]
    steps = (np.arange(score.shape[1]) + 1) * result.env_steps_per_update
    row = {
        "preset": preset,
        "seeds": len(result.seeds),
        "final_score_mean": float(np.mean(final)),
        "final_score_std": float(np.std(final)),
        "final_scores": " ".join(f"{x:.1f}" for x in final),
        "kl_old_mean": float(np.mean(result.metrics["kl_old"])),
        "kl_old_max": float(np.max(result.metrics["kl_old"])),
    }
    if "beta" in result.metrics:
        row["beta_final"] = float(np.mean(result.metrics["beta"][:, -1]))
    if "accepted" in result.metrics:  # TRPO: the trust region as measured on accepted updates only
        accepted = result.metrics["accepted"] > 0
        row["accepted_frac"] = float(np.mean(accepted))
        row["kl_old_max_accepted"] = float(np.max(result.metrics["kl_old"], where=accepted,
                                                  initial=0.0))
        row["delta"] = float(np.max(result.metrics["delta"]))
    row |= {
        "compile_s": result.compile_seconds,
        "run_s": result.run_seconds,
        "env_steps_per_s": score.shape[1] * result.env_steps_per_update * len(result.seeds)
        / result.run_seconds,
    }
    if threshold is not None:
        reached = [steps[np.argmax(s >= threshold)] if np.any(s >= threshold) else None for s in score]
        row["first_step_at_threshold"] = " ".join("never" if r is None else str(r) for r in reached)
        row["seeds_reaching_threshold"] = sum(r is not None for r in reached)
    return row


def _columns(rows: Sequence[dict[str, object]]) -> list[str]:
    """Every key of every row, in first-seen order (PPO and TRPO rows have different extras)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def to_markdown(rows: Sequence[dict[str, object]]) -> str:
    headers = _columns(rows)
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(row.get(h, "")) for h in headers) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, loop.RunResult], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ret, ax_kl) = plt.subplots(1, 2, figsize=(12, 4))
    for preset, result in results.items():
        steps = (np.arange(result.metrics["kl_old"].shape[1]) + 1) * result.env_steps_per_update
        score = result.metrics["episode_return"]
        mean = np.nanmean(score, axis=0)
        (line,) = ax_ret.plot(steps, mean, label=preset)
        ax_ret.fill_between(steps, np.nanmin(score, axis=0), np.nanmax(score, axis=0),
                            color=line.get_color(), alpha=0.15)
        ax_kl.plot(steps, np.mean(result.metrics["kl_old"], axis=0), label=preset, lw=0.8)
    ax_ret.set_title("last-100-episode return (seed mean, band = min..max)")
    ax_kl.set_title("KL(π_old ‖ π_θ) after each update (seed mean)")
    ax_kl.set_yscale("log")
    for ax in (ax_ret, ax_kl):
        ax.set_xlabel("environment steps")
    ax_ret.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    specs = {}
    for entry in _PRESETS.value:  # read (and so validate) every config before running any
        config_file, _, preset = entry.rpartition(":")
        source = f"{config_file or _CONFIG_FILE.value}:{preset}"
        if preset in specs:
            raise cli.ConfigError(f"--presets = {','.join(_PRESETS.value)!r}: names {preset!r} "
                                  "twice; each preset's run goes to WORKDIR/PRESET.")
        try:
            config = load_preset(source)
        except ValueError as error:  # a missing file or preset: one line, exit status 2
            raise cli.ConfigError(f"--presets: {entry!r}: {error}") from None
        config.num_seeds = _NUM_SEEDS.value
        if _TOTAL.value is not None:
            config.total_timesteps = _TOTAL.value
        with cli.config_errors():  # a bad config (or mesh): one line, exit status 2
            specs[preset] = control_config.spec_from_config(config)  # read here, once
    workdir = pathlib.Path(_WORKDIR.value)
    results, rows = {}, []
    for preset, spec in specs.items():
        results[preset] = loop.train(spec, workdir / preset, overwrite=_OVERWRITE.value)
        if results[preset].preempted:
            cli.exit_preempted(f"part of {preset}")  # no summary from a partial run
        rows.append(summarise(preset, results[preset], _THRESHOLD.value))
    markdown = to_markdown(rows)
    write_text_atomic(workdir / "summary.md", markdown)
    write_text_atomic(workdir / "summary.csv", rows_to_csv(rows))
    plot(results, workdir / "returns.png")
    print(markdown)
    print(f"summary: {workdir / 'summary.md'} (and .csv)   plot: {workdir / 'returns.png'}")
    print(f"per-run metrics, checkpoints and curves: {workdir}/<preset>/")


if __name__ == "__main__":
    cli.run(main)
