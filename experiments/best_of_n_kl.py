"""Reproduction: the exact best-of-n KL against the bound log n − (n−1)/n (Beirami et al. 2024).

    python -m experiments.best_of_n_kl --out=runs/best_of_n_kl [--ns=1,2,4,...] [--seed=0]

For n = 1, 2, 4, …, 1024 computes KL(π_bon‖π_ref) exactly (`kltrust.tasks.best_of_n`, ties
included) on a random contextual bandit (`kltrust.tasks.bandit.make`, averaged over its context
distribution) and on hand-made reward tables: a pass/fail reward (a three-way tie per level), a
graded reward with ties, a concentrated reference with distinct rewards, all rewards equal, and a
large support of distinct rewards (the continuous limit, where the bound is reached).

Writes ``best_of_n_kl.csv``, ``best_of_n_kl.json``, ``best_of_n_kl.md`` and ``best_of_n_kl.png`` to
``--out`` and prints the table. A bad flag prints one line and exits with status 2 before anything
is compiled or written (`experiments.cli`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from kltrust.errors import ConfigError
from kltrust.metrics import rows_to_csv, write_text_atomic
from kltrust.objectives import grpo
from kltrust.tasks import bandit

_OUT = flags.DEFINE_string("out", "runs/best_of_n_kl", "Output directory.")
_NS = flags.DEFINE_string("ns", ",".join(str(2**k) for k in range(11)),
                          "Comma-separated sample counts n >= 1.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random bandit and the large support.")
_CONTEXTS = flags.DEFINE_integer("num_contexts", 4, "Contexts of the random bandit.")
_ACTIONS = flags.DEFINE_integer("num_actions", 6, "Actions of the random bandit.")
_LARGE = 10_000  # outcomes of the "large support" table: no outcome above ~1e-3 of the mass

NAME = "best_of_n_kl"
_exact = jax.jit(bandit.best_of_n_kl)


def parse_ns(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; anything else is a `ConfigError`."""
    try:
        ns = [int(part) for part in text.split(",")]
    except ValueError:
        ns = []
    if not ns or min(ns) < 1:
        raise ConfigError(f"--ns = {text!r}: must be comma-separated integers >= 1 (e.g. 1,2,4).")
    return ns


def tables(seed: int, num_contexts: int, num_actions: int) -> dict[str, tuple]:
    """name -> (log π_ref [C, A], reward [C, A], context weights [C]); the bandit first."""
    with cli.config_errors():  # bandit.make's ValueError on a bad size is bad input
        task = bandit.make(seed, num_contexts=num_contexts, num_actions=num_actions)
    rng = np.random.default_rng(seed)
    one = lambda p, r: (np.log(np.asarray([p], np.float64)), np.asarray([r], np.float64), [1.0])
    large = rng.gamma(2.0, size=_LARGE)
    return {
        f"bandit seed {seed} ({num_contexts}×{num_actions}, ρ-average)":
            (np.asarray(task.ref_logits), np.asarray(task.rewards), np.asarray(task.context_probs)),
        "pass/fail, uniform π_ref over 6 (3 pass)": one([1 / 6] * 6, [0, 0, 0, 1, 1, 1]),
        "graded 0/1/2 with ties, 8 outcomes": one([0.3, 0.2, 0.15, 0.1, 0.1, 0.07, 0.05, 0.03],
                                                  [0, 1, 0, 2, 1, 0, 2, 1]),
        "concentrated π_ref (0.9, …), distinct rewards": one([0.9, 0.05, 0.03, 0.02],
                                                            [0, 1, 2, 3]),
        "all rewards equal": one([0.4, 0.3, 0.2, 0.1], [1, 1, 1, 1]),
        f"large support ({_LARGE:,}), distinct rewards": one(large / large.sum(),
                                                             rng.normal(size=_LARGE)),
    }


def compute(ns: Sequence[int], seed: int, num_contexts: int, num_actions: int) -> list[dict]:
    """One row per (table, n): the exact KL (ρ-weighted over contexts) and the bound.

    In float64, so that exact ≤ bound holds to round-off even where the two agree to 1e-7 (the large
    support); float32 agrees to ~1e-6 relative (tests/test_best_of_n.py)."""
    rows = []
    for name, (logp, reward, weights) in tables(seed, num_contexts, num_actions).items():
        # One compiled call per table: every n at once, on a leading axis.
        shape = (len(ns), *np.shape(logp))
        with jax.enable_x64(True):
            per_n = np.asarray(_exact(jnp.broadcast_to(jnp.asarray(logp, jnp.float64), shape),
                                      jnp.broadcast_to(jnp.asarray(reward, jnp.float64), shape),
                                      jnp.asarray(ns)[:, None]))
        for n, per_context in zip(ns, per_n):
            exact = float(np.dot(weights, per_context))
            bound = grpo.best_of_n_kl_bound(n)
            rows.append(dict(table=name, n=n, exact_kl=exact, bound=bound, gap=bound - exact,
                             exact_over_bound=exact / bound if bound > 0 else None))
    return rows


def to_markdown(rows: Sequence[dict]) -> str:
    lines = ["| table | n | exact KL | bound log n − (n−1)/n | bound − exact | exact / bound |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "–" if r["exact_over_bound"] is None else f"{r['exact_over_bound']:.3f}"
        lines.append(f"| {r['table']} | {r['n']} | {r['exact_kl']:.4f} | {r['bound']:.4f} | "
                     f"{r['gap']:.2g} | {ratio} |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ns = sorted({r["n"] for r in rows})
    ax.plot(ns, [grpo.best_of_n_kl_bound(n) for n in ns], "k--", lw=2, zorder=5,
            label="log n − (n−1)/n (upper bound)")
    for table in dict.fromkeys(r["table"] for r in rows):
        sel = [r for r in rows if r["table"] == table]
        ax.plot([r["n"] for r in sel], [r["exact_kl"] for r in sel], "o-", ms=3,
                label=f"exact: {table}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (samples from π_ref)")
    ax.set_ylabel("KL(π_bon ‖ π_ref) (nats)")
    ax.set_title("best-of-n: exact KL vs the bound (Beirami et al. 2024)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]!r}; every option is a --flag.")
    ns = parse_ns(_NS.value)
    rows = compute(ns, _SEED.value, _CONTEXTS.value, _ACTIONS.value)
    out = pathlib.Path(_OUT.value)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{NAME}.csv", rows_to_csv(rows))
    settings = dict(ns=ns, seed=_SEED.value, num_contexts=_CONTEXTS.value,
                    num_actions=_ACTIONS.value, large_support=_LARGE)
    write_text_atomic(out / f"{NAME}.json", json.dumps(dict(settings=settings, rows=rows),
                                                       indent=1) + "\n")
    markdown = to_markdown(rows)
    write_text_atomic(out / f"{NAME}.md", markdown)
    plot(rows, out / f"{NAME}.png")
    print(markdown)
    print(f"table: {out / (NAME + '.csv')}, {out / (NAME + '.json')} and {out / (NAME + '.md')}")
    print(f"plot:  {out / (NAME + '.png')}")


if __name__ == "__main__":
    cli.run(main)
