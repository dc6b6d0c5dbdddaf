"""Bias and spread of the sample KL estimators (every plain one registered:
`kltrust.kl.estimators(reward_term=True)`; a corrected one's values are its base's) against the
exact KL.

    python -m experiments.kl_table --config=configs/kl_table.py --workdir=runs/kl_table

Prints a table and writes ``kl_table.csv``, ``kl_table.md``, ``kl_table.png`` and ``config.json`` to
the workdir. For each pair (p, p_ref) it draws ``n_samples`` points from p and reports, per
estimator, bias/true KL and stdev/true KL of a single-sample estimate (the numbers of Schulman's
published table). A bad flag or config prints one line and exits with status 2 before anything is
compiled or written (`experiments.cli`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from tqdm import tqdm

from experiments import cli
from kltrust import kl
from kltrust.errors import check, is_finite, is_int
from kltrust.metrics import write_text_atomic

_CONFIG = cli.config_file_flag("config", "configs/kl_table.py", "Estimator-table config.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/kl_table", "Directory for the table and plot.")


@dataclasses.dataclass(frozen=True)
class Row:
    """One (p, p_ref) pair: its exact KL and, per estimator, normalised bias and stdev."""

    family: str
    description: str
    true_kl: float
    bias_over_kl: dict[str, float]
    std_over_kl: dict[str, float]


def _stats(logp: jax.Array, logp_ref: jax.Array, true_kl: jax.Array) -> dict[str, jax.Array]:
    stats = {}
    for name in kl.estimators(reward_term=True):
        values = kl.estimate(logp, logp_ref, name)
        stats[name] = jnp.stack([(values.mean() - true_kl) / true_kl, values.std() / true_kl])
    return stats


@jax.jit
def gaussian_stats(key: jax.Array, params: jax.Array, n_samples_like: jax.Array) -> tuple:
    """Exact KL and estimator stats for 1-D Gaussians ``params = (mean, std, mean_ref, std_ref)``.

    ``n_samples_like`` only carries the sample count as a shape, so one compilation serves all pairs.
    """
    mean, std, mean_ref, std_ref = params
    x = mean + std * jax.random.normal(key, n_samples_like.shape)
    logp = jax.scipy.stats.norm.logpdf(x, mean, std)
    logp_ref = jax.scipy.stats.norm.logpdf(x, mean_ref, std_ref)
    as_1d = lambda v: jnp.reshape(v, (1,))
    true_kl = kl.gaussian(as_1d(mean), as_1d(jnp.log(std)), as_1d(mean_ref), as_1d(jnp.log(std_ref)))
    return true_kl, _stats(logp, logp_ref, true_kl)


@jax.jit
def categorical_stats(
    key: jax.Array, logits: jax.Array, logits_ref: jax.Array, n_samples_like: jax.Array
) -> tuple:
    """Exact KL and estimator stats for one pair of categorical distributions given by logits."""
    x = jax.random.categorical(key, logits, shape=n_samples_like.shape)
    logp = jax.nn.log_softmax(logits)[x]
    logp_ref = jax.nn.log_softmax(logits_ref)[x]
    true_kl = kl.categorical(logits, logits_ref)
    return true_kl, _stats(logp, logp_ref, true_kl)


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects bad values before anything is compiled or written: a `kltrust.errors.ConfigError`
    naming the key, the value and what is allowed."""
    check(is_int(config.seed, 0), "seed", config.seed, "an integer >= 0")
    check(is_int(config.n_samples, 2), "n_samples", config.n_samples, "an integer >= 2")
    check(is_int(config.num_classes, 2), "num_classes", config.num_classes, "an integer >= 2")
    for i, pair in enumerate(config.gaussian_pairs):
        key = f"gaussian_pairs[{i}]"
        check(isinstance(pair, (tuple, list)) and len(pair) == 4 and all(map(is_finite, pair)),
              key, pair, "(mean, std, mean_ref, std_ref), four finite numbers")
        check(pair[1] > 0 and pair[3] > 0, key, pair, "a pair whose std and std_ref are > 0")
        check(tuple(pair[:2]) != tuple(pair[2:]), key, pair,
              "a pair with p != p_ref (at KL = 0 there is no relative bias)")
    for i, scale in enumerate(config.categorical_scales):
        check(is_finite(scale) and scale > 0, f"categorical_scales[{i}]", scale, "finite and > 0")


def compute_rows(config: ml_collections.ConfigDict, progress: bool = True) -> list[Row]:
    """Runs every pair in the config; deterministic for a given ``config.seed``."""
    validate(config)
    key = jax.random.key(config.seed)
    key_logits, key_shift, key_samples = jax.random.split(key, 3)
    base_logits = jax.random.normal(key_logits, (config.num_classes,))
    shift = jax.random.normal(key_shift, (config.num_classes,))
    shape_carrier = jnp.zeros((config.n_samples,), jnp.int8)

    jobs = [("gaussian", pair) for pair in config.gaussian_pairs]
    jobs += [("categorical", scale) for scale in config.categorical_scales]
    rows = []
    for i, (family, spec) in enumerate(tqdm(jobs, desc="kl table", disable=not progress)):
        pair_key = jax.random.fold_in(key_samples, i)
        if family == "gaussian":
            true_kl, stats = gaussian_stats(pair_key, jnp.asarray(spec, jnp.float32), shape_carrier)
            m, s, m_ref, s_ref = spec
            description = f"N({m:g},{s:g}²) vs N({m_ref:g},{s_ref:g}²)"
        else:
            true_kl, stats = categorical_stats(
                pair_key, base_logits, base_logits + spec * shift, shape_carrier
            )
            description = f"K={config.num_classes}, ref shift scale {spec:g}"
        stats = jax.device_get(stats)
        rows.append(
            Row(
                family=family,
                description=description,
                true_kl=float(true_kl.squeeze()),
                bias_over_kl={name: float(v[0]) for name, v in stats.items()},
                std_over_kl={name: float(v[1]) for name, v in stats.items()},
            )
        )
    return rows


def to_csv(rows: Sequence[Row]) -> str:
    names = kl.estimators(reward_term=True)
    header = ["family", "pair", "true_kl"]
    header += [f"{k}_bias_over_kl" for k in names]
    header += [f"{k}_std_over_kl" for k in names]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        writer.writerow(
            [r.family, r.description, f"{r.true_kl:.6g}"]
            + [f"{r.bias_over_kl[k]:.4f}" for k in names]
            + [f"{r.std_over_kl[k]:.4f}" for k in names]
        )
    return buffer.getvalue()


def to_markdown(rows: Sequence[Row]) -> str:
    names = kl.estimators(reward_term=True)
    header = "| pair | true KL | " + " | ".join(f"{k} bias/KL | {k} std/KL" for k in names)
    lines = [header + " |", "|" + "---|" * (2 + 2 * len(names))]
    for r in rows:
        cells = [r.description, f"{r.true_kl:.4g}"]
        for k in names:
            cells += [f"{r.bias_over_kl[k]:+.3f}", f"{r.std_over_kl[k]:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[Row], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    x = np.arange(len(rows))
    names = kl.estimators(reward_term=True)
    width = 0.8 / len(names)
    for j, name in enumerate(names):
        offset = (j - (len(names) - 1) / 2) * width  # the group of bars centred on the tick
        axes[0].bar(x + offset, [abs(r.bias_over_kl[name]) for r in rows], width, label=name)
        axes[1].bar(x + offset, [r.std_over_kl[name] for r in rows], width, label=name)
    for ax, title in zip(axes, ["|bias| / true KL", "stdev / true KL (one sample)"]):
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(title)
        ax.set_xticks(x, [f"{r.family[:3]}\nKL={r.true_kl:.3g}" for r in rows], fontsize=7)
    # One legend above both panels: inside an axis it hides bars once there are more estimators.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", ncol=len(names))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    del argv
    config = _CONFIG.value
    validate(config)
    workdir = pathlib.Path(_WORKDIR.value)
    rows = compute_rows(config)
    workdir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    write_text_atomic(workdir / "kl_table.csv", to_csv(rows))
    markdown = to_markdown(rows)
    write_text_atomic(workdir / "kl_table.md", markdown)
    plot(rows, workdir / "kl_table.png")
    print(markdown)
    print(f"table: {workdir / 'kl_table.csv'} and {workdir / 'kl_table.md'}")
    print(f"plot:  {workdir / 'kl_table.png'}")


if __name__ == "__main__":
    cli.run(main)
