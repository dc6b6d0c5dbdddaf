"""Every method on the exact reward–KL frontier of a contextual bandit.

    python -m experiments.bandit_frontier --config=configs/bandit.py --workdir=runs/bandit_frontier \
        [--config.betas='(0.1,1.0)' --config.num_seeds=3 ...] [--overwrite]

For each run of ``config.runs`` (a method with its loss and data; see ``configs/bandit.py``) and
each number of preference pairs (offline DPO with sampled pairs only), trains all β × seeds in one
compiled program and reports, per (run, β, pairs), the seed mean ± std of KL(π_θ‖π*_β), E[r],
KL(π_θ‖π_ref) and the gap to the exact frontier at the policy's own KL. The final numbers are
recomputed in float64 from the final logits (training metrics are float32, whose rounding makes
KLs below ~1e-7 meaningless and sometimes negative).

Writes ``config.json``, ``summary.md``, ``summary.csv`` and ``frontier.png`` to the workdir. A bad
flag or config, or a used workdir without ``--overwrite``, prints one line and exits with status 2
before anything is compiled or written (`experiments.cli`).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from tqdm import tqdm

from experiments import cli
from kltrust.errors import ConfigError
from kltrust.metrics import rows_to_csv, write_text_atomic
from kltrust.tasks import bandit as bandit_lib
from kltrust.train import bandit as bandit_train
from kltrust.train import bandit_config, bandit_run
from kltrust.train.bandit_config import BanditSpec

_CONFIG = cli.config_file_flag("config", "configs/bandit.py", "Bandit config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the outputs of an existing workdir.")

OUTPUTS = ("config.json", "summary.md", "summary.csv", "frontier.png")
METRICS = ("kl_to_optimum", "expected_reward", "kl_to_reference", "frontier_gap")
HEADERS = ("KL(π_θ‖π*_β)", "E[r]", "KL(π_θ‖π_ref)", "frontier gap")


def prepare_workdir(workdir: pathlib.Path, overwrite: bool) -> None:
    """Refuses a non-empty workdir unless ``overwrite`` (a `ConfigError`), which removes this
    experiment's outputs."""
    if workdir.exists() and any(workdir.iterdir()):
        if not overwrite:
            raise ConfigError(f"workdir {workdir} is not empty; choose another --workdir or pass "
                             "--overwrite to replace its results.")
        for name in OUTPUTS:
            (workdir / name).unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)


def jobs(spec: BanditSpec) -> list[tuple[str, int | None]]:
    """(run, num_pairs) for every program to run; num_pairs is None unless the run samples offline pairs."""
    out = []
    for run in spec.runs:
        run_spec = spec.run_specs[run]
        offline = bandit_train.METHODS.get(run_spec.method).offline_pairs
        sampled_offline = offline and run_spec.preferences == "sampled"
        out += [(run, int(n)) for n in spec.num_pairs] if sampled_offline else [(run, None)]
    return out


def pairs_label(spec: BanditSpec, run: str, num_pairs: int | None) -> str:
    """The table's ``pairs`` cell of a job."""
    run_spec = spec.run_specs[run]
    method = bandit_train.METHODS.get(run_spec.method)
    if method.offline_pairs:
        return "exact" if run_spec.preferences == "exact" else str(num_pairs)
    if method.preference_loss:  # pairs drawn online, batch_size per step
        return f"{spec.batch_size}/step"
    return "—"


# exact_metrics over [H, S] policies (β per H); compiled once, then reused by every job.
_exact_metrics_sweep = jax.jit(jax.vmap(jax.vmap(bandit_lib.exact_metrics, in_axes=(None, 0, None)),
                                        in_axes=(None, 0, 0)))


def _float64(bandit: bandit_lib.Bandit) -> bandit_lib.Bandit:
    """The bandit in float64; call inside ``jax.enable_x64(True)``."""
    return jax.tree.map(lambda v: jnp.asarray(np.asarray(v, np.float64)), bandit)


def final_metrics(bandit: bandit_lib.Bandit, logits: np.ndarray, betas: np.ndarray) -> dict[str, np.ndarray]:
    """Exact metrics of final logits [H, S, C, A] for β [H], in float64: name -> [H, S]."""
    with jax.enable_x64(True):
        out = _exact_metrics_sweep(_float64(bandit), jnp.asarray(np.asarray(logits, np.float64)),
                                   jnp.asarray(betas, jnp.float64))
        return {k: np.asarray(v) for k, v in out.items()}


def run_all(spec: BanditSpec, progress: bool = True) -> tuple[list[dict], dict]:
    """Trains every job; returns table rows and, per job, (training curves, final metrics)."""
    bandit = bandit_config.make_bandit(spec)
    betas = np.asarray(spec.betas, np.float64)
    rows, results = [], {}
    for run, num_pairs in tqdm(jobs(spec), desc="bandit runs", disable=not progress):
        start = time.perf_counter()
        result = jax.block_until_ready(bandit_run.train(spec, run, num_pairs).run)
        seconds = time.perf_counter() - start
        final = final_metrics(bandit, np.asarray(result.logits), betas)
        label = pairs_label(spec, run, num_pairs)
        results[(run, label)] = (jax.device_get(result.metrics), final)
        for i, beta in enumerate(betas):
            row = {"method": run, "beta": float(beta), "pairs": label}
            for name in METRICS:
                row[f"{name}_mean"] = float(np.mean(final[name][i]))
                row[f"{name}_std"] = float(np.std(final[name][i]))
            row["seconds"] = seconds  # compile + run, all β and seeds of this job together
            rows.append(row)
    return rows, results


def targets(spec: BanditSpec) -> list[dict]:
    """Per β: KL(π*_β‖π_ref), E_{π*_β}[r] and the optimal value J_β(π*_β), in float64."""
    bandit = bandit_config.make_bandit(spec)
    with jax.enable_x64(True):
        bandit64 = _float64(bandit)
        betas = jnp.asarray(spec.betas, jnp.float64)
        kls, rewards = bandit_lib.frontier(bandit64, betas)
        values = jax.vmap(lambda b: bandit_lib.optimal_value(bandit64, b))(betas)
        return [{"beta": float(b), "kl": float(k), "reward": float(r), "value": float(v)}
                for b, k, r, v in zip(np.asarray(betas), np.asarray(kls), np.asarray(rewards),
                                      np.asarray(values))]


def _cell(mean: float, std: float) -> str:
    return f"{mean:.3g} ± {std:.1g}" if std > 0 else f"{mean:.3g}"


def to_markdown(rows: Sequence[dict], goal: Sequence[dict], num_seeds: int) -> str:
    lines = [f"Seed mean ± std over {num_seeds} seed(s); float64 metrics of the final policy.", "",
             "| method | β | pairs | " + " | ".join(HEADERS) + " |", "|" + "---|" * (3 + len(HEADERS))]
    for r in rows:
        cells = [r["method"], f"{r['beta']:g}", r["pairs"]]
        cells += [_cell(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The optimum π*_β ∝ π_ref·exp(r/β) (closed form):", "",
              "| β | KL(π*_β‖π_ref) | E_{π*_β}[r] | J_β(π*_β) |", "|---|---|---|---|"]
    lines += [f"| {g['beta']:g} | {g['kl']:.4g} | {g['reward']:.4g} | {g['value']:.4g} |" for g in goal]
    return "\n".join(lines) + "\n"


def plot(spec: BanditSpec, rows: Sequence[dict], results: dict, goal: Sequence[dict],
         path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bandit = bandit_config.make_bandit(spec)
    grid = np.logspace(-2.5, 2.5, 300)
    with jax.enable_x64(True):
        bandit64 = _float64(bandit)
        curve_kl, curve_reward = (np.asarray(v) for v in bandit_lib.frontier(bandit64, grid))

    fig, (ax_front, ax_curve) = plt.subplots(1, 2, figsize=(14, 5.5))
    ax_front.plot(curve_kl, curve_reward, color="black", lw=1.2, label="exact frontier (π*_β, all β)")
    ax_front.scatter([g["kl"] for g in goal], [g["reward"] for g in goal], marker="*", s=180,
                     color="black", zorder=3, label="π*_β at the swept β")
    markers = "os^Dvp<>h"
    betas = list(spec.betas)
    # tab20's saturated colours first, then its light ones: neighbouring jobs stay distinguishable.
    colors = plt.get_cmap("tab20")([(2 * i) % 20 + (2 * i) // 20 for i in range(len(results))])
    for color, (job, (curves, final)) in zip(colors, results.items()):
        run, label = job
        name = run if label in ("—", "exact") or label.endswith("/step") else f"{run} n={label}"
        for i, beta in enumerate(betas):
            ax_front.scatter(np.mean(final["kl_to_reference"][i]), np.mean(final["expected_reward"][i]),
                             marker=markers[i % len(markers)], color=color, s=45, alpha=0.85,
                             edgecolors="none", label=name if i == 0 else None)
        middle = len(betas) // 2
        steps = np.asarray(curves["step"][middle, 0])
        kl_opt = np.mean(curves["kl_to_optimum"][middle], axis=0)
        ax_curve.plot(steps, np.maximum(kl_opt, 1e-9), color=color, label=name)
    ax_front.set_xscale("log")
    ax_front.set_xlim(left=max(1e-3, 0.5 * min(np.min(r["kl_to_reference_mean"]) for r in rows)))
    ax_front.set_xlabel("E_x KL(π_θ ‖ π_ref)")
    ax_front.set_ylabel("E[r]")
    shapes = ", ".join(f"{markers[i % len(markers)]} β={b:g}" for i, b in enumerate(betas))
    ax_front.set_title(f"final policies on the exact reward–KL frontier ({shapes})", fontsize=9)

    ax_curve.set_yscale("log")
    ax_curve.set_xlabel("step")
    ax_curve.set_ylabel("E_x KL(π_θ ‖ π*_β)")
    ax_curve.set_title(f"distance to π*_β during training, β = {betas[len(betas) // 2]:g} "
                       "(seed mean, float32; floor 1e-9)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.legend(*ax_front.get_legend_handles_labels(), loc="center left", bbox_to_anchor=(0.855, 0.5),
               fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    # The config is read here, once: checked (before anything is written or compiled) and made a
    # typed spec, which is all the code below takes.
    spec = bandit_config.spec_from_config(config)
    workdir = pathlib.Path(_WORKDIR.value)
    prepare_workdir(workdir, _OVERWRITE.value)
    write_text_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    start = time.perf_counter()
    rows, results = run_all(spec)
    goal = targets(spec)
    markdown = to_markdown(rows, goal, spec.num_seeds)
    write_text_atomic(workdir / "summary.md", markdown)
    write_text_atomic(workdir / "summary.csv", rows_to_csv(rows))
    plot(spec, rows, results, goal, workdir / "frontier.png")
    print(markdown)
    print(f"{time.perf_counter() - start:.0f} s for {len(results)} compiled programs")
    print(f"summary: {workdir / 'summary.md'} (and .csv)   plot: {workdir / 'frontier.png'}")


if __name__ == "__main__":
    cli.run(main)
