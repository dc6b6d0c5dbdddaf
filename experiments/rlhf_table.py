"""Every token-RLHF method on one pipeline (one reference, one proxy), 3 seeds: table and plots.

    python -m experiments.rlhf_table --workdir=runs/rlhf [--presets=ppo,grpo,...] [--num_seeds=3]

Writes ``WORKDIR/rlhf_table.md`` (final gold, proxy, exact KL, diversity per method, mean ± std over
seeds; best-of-n per n) and ``WORKDIR/gold_vs_kl.png`` (gold and proxy against the exact KL along
training for PPO without a KL penalty and PPO with β > 0, with best-of-n and every method's final
point), and prints both paths. Every preset's config is built and checked first: a bad flag or
config prints one line and exits with status 2 before any stage runs (`experiments.cli`).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from absl import flags, logging

from configs import rlhf as rlhf_configs
from experiments import cli
from kltrust.objectives import preference
from kltrust.train import pipeline


# The built-in presets, then every preset a registered preference loss brings (SimPO's ``simpo``).
DEFAULT_PRESETS = ("ppo_nokl", "ppo", "ppo_adaptive", "ppo_kl_loss", "grpo", "grpo_kl_reward",
                   "rloo", "trpo", "dpo", "ipo", "dpo_online") + tuple(
    name for _, loss in preference.LOSSES.items() for name in loss.token_presets) + ("best_of_n",)
_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline root.", required=True)
_PRESETS = flags.DEFINE_list("presets", list(DEFAULT_PRESETS), "Presets of configs/rlhf.py.")
_NUM_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Seeds per method (vmapped).", lower_bound=1)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Re-run methods whose stage exists.")

COLUMNS = ("gold", "proxy", "kl", "distinct_2", "grammatical")


def _mean_std(rows: list[dict], key: str) -> str:
    values = np.array([r[key] for r in rows if r.get(key) is not None], np.float64)
    if values.size == 0:
        return "–"
    return f"{values.mean():.2f} ± {values.std():.2f}"


def _trajectory(evals: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Seed-mean of (kl, key) at each evaluation."""
    updates = sorted({e["update"] for e in evals})
    kl = [np.mean([e["kl"] for e in evals if e["update"] == u]) for u in updates]
    value = [np.mean([e[key] for e in evals if e["update"] == u]) for u in updates]
    return np.array(kl), np.array(value)


def write_plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    for name, color in (("ppo_nokl", "tab:red"), ("ppo", "tab:green")):
        if name not in results:
            continue
        for key, style in (("gold", "o-"), ("proxy", "s:")):
            kl, value = _trajectory(results[name].evals, key)
            ax.plot(kl, value, style, color=color, ms=3, label=f"{name} {key}")
    if "best_of_n" in results:
        rows = results["best_of_n"].evals
        ns = sorted({r["n"] for r in rows})
        kl = [np.mean([r["kl"] for r in rows if r["n"] == n]) for n in ns]
        for key, style in (("gold", "^-"), ("proxy", "^:")):
            ax.plot(kl, [np.mean([r[key] for r in rows if r["n"] == n]) for n in ns], style,
                    color="tab:purple", ms=4, label=f"best-of-n {key} (KL: upper bound)")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("exact KL(π ‖ π_ref) per sequence (nats, symlog)")
    ax.set_ylabel("reward")
    ax.set_title("along training: no KL penalty vs β = 0.1 (mean of seeds)")
    ax.legend(fontsize=7)
    ax = axes[1]
    methods = [name for name in results if name != "best_of_n"]
    for i, name in enumerate(methods):
        kl = [r["kl"] for r in results[name].final]
        ax.scatter(kl, [r["gold"] for r in results[name].final], s=16, label=name,
                   color=plt.cm.tab20(i / max(len(methods) - 1, 1)), marker="os^vD<>"[i % 7])
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("exact KL per sequence at the end (nats, symlog)")
    ax.set_ylabel("gold reward at the end")
    ax.set_title("final gold vs KL, one point per seed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    root = pathlib.Path(_WORKDIR.value)
    specs = {}
    for preset in _PRESETS.value:  # build and check every config before running any
        if preset in specs:
            raise cli.ConfigError(f"--presets = {','.join(_PRESETS.value)!r}: names {preset!r} "
                                  "twice.")
        try:
            config = rlhf_configs.get_config(preset)
        except cli.ConfigError as error:
            raise cli.ConfigError(f"--presets: {error}") from None
        config.num_seeds = _NUM_SEEDS.value
        specs[preset] = pipeline.spec_from_config(config)
    results = {}
    for preset, spec in specs.items():
        print(f"== {preset}", flush=True)
        results[preset] = pipeline.run(spec, root, overwrite=_OVERWRITE.value)
        if isinstance(results[preset], pipeline.PolicyResult) and results[preset].preempted:
            cli.exit_preempted(f"part of the {preset} stage")  # no table from a partial stage

    lines = ["| method | gold | proxy | exact KL | distinct-2 | grammatical | run s | "
             "sampled tokens/s |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        if name == "best_of_n":
            continue
        cells = [_mean_std(result.final, c) for c in COLUMNS]
        rate = (f"{result.tokens_sampled / result.run_seconds:,.0f}"
                if result.tokens_sampled else "–")
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {result.run_seconds:.1f} | {rate} |")
    reference = next((r for r in results.values() if r.evals and "update" in r.evals[0]), None)
    if reference is not None:
        start = [e for e in reference.evals if e["update"] == 0]
        lines.append("| reference (SFT) | " + " | ".join(_mean_std(start, c) for c in COLUMNS)
                     + " | – | – |")
    if "best_of_n" in results:
        rows = results["best_of_n"].evals
        lines += ["", "| best-of-n | gold | proxy | KL ≤ log n − (n−1)/n (upper bound) | distinct-2 |",
                  "|---|---|---|---|---|"]
        for n in sorted({r["n"] for r in rows}):
            sel = [r for r in rows if r["n"] == n]
            lines.append(f"| n = {n} | {_mean_std(sel, 'gold')} | {_mean_std(sel, 'proxy')} | "
                         f"{sel[0]['kl']:.3f} | {_mean_std(sel, 'distinct_2')} |")
    table = "\n".join(lines) + "\n"
    (root / "rlhf_table.md").write_text(table)
    write_plot(results, root / "gold_vs_kl.png")
    print(table)
    print(f"table: {root / 'rlhf_table.md'}  plot: {root / 'gold_vs_kl.png'}")


if __name__ == "__main__":
    cli.run(main)
