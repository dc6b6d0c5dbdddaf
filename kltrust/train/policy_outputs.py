"""What a token policy stage leaves in its directory, and how that directory is claimed.

    NAME/config.json         the stage's config (recorded when the directory is claimed)
    NAME/metrics.jsonl       per update and seed (written as the stage runs)
    NAME/eval.jsonl          per evaluation and seed, with decoded samples (as it runs)
    NAME/events.jsonl        the KL guard's rollbacks (as it runs; `kltrust.train.kl_guard`)
    NAME/checkpoints/        after every chunk: state, hyperparameters, the guard's state
    NAME/results.json        the final evaluation per seed, timings
    NAME/gold_proxy_vs_kl.png
    NAME/params.msgpack      per seed, stacked: written last, the stage's completion marker

Best-of-n trains nothing: its rows (per n and seed) go to eval.jsonl and results.json at the end.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import numpy as np

from kltrust import processes, sharding
from kltrust import workdir as workdirs
from kltrust.train import tokens as tok
from kltrust.train.methods import best_of_n
from kltrust.train.token_spec import TokenSpec


@dataclasses.dataclass
class PolicyResult:
    train_metrics: dict[str, np.ndarray]  # name -> [runs, updates]
    evals: list[dict]  # rows per evaluation and seed
    final: list[dict]  # last evaluation per seed
    params: Any
    compile_seconds: float
    run_seconds: float
    tokens_sampled: int
    guard_events: list[dict] = dataclasses.field(default_factory=list)  # KL-guard rollbacks
    preempted: bool = False  # stopped by SIGTERM after a checkpoint: not finished, no results


def is_finished(out: pathlib.Path) -> bool:
    """A policy stage (or best-of-n, which writes no parameters) that ran to its end."""
    return tok.is_done(out) or (out / "results.json").exists()


def claim_rules(resumable: bool) -> workdirs.Rules:
    """A policy stage's directory: an unfinished stage of the same config resumes from its
    checkpoint if ``resumable`` (best-of-n has no training state, so it starts again); a finished
    one, or one of another config, is refused unless ``--overwrite`` (which replaces the whole
    directory)."""
    return workdirs.Rules(
        different="{path} holds a policy stage of a different config; pass --overwrite to "
                  "replace it.",
        finished=is_finished,
        refuse_finished="{path} already holds results of this finished stage; pass --overwrite "
                        "to run it again.",
        resumable=resumable)


def write_policy(out: pathlib.Path, name: str, result: PolicyResult) -> None:
    """The stage's summary files (metrics.jsonl, eval.jsonl, events.jsonl were written as it went;
    ``name`` titles the plot); params.msgpack last, as the completion marker."""
    params = sharding.to_host(result.params)  # every process: gathering shards is collective
    if not processes.is_primary():
        return
    (out / "results.json").write_text(json.dumps({
        "final": result.final, "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds, "tokens_sampled": result.tokens_sampled}, indent=2))
    plot_gold_proxy_vs_kl(result.evals, out / "gold_proxy_vs_kl.png", name)
    if result.evals and "kl_d0" in result.evals[0]:
        plot_domains(result.evals, out / "domains_gold_proxy_vs_kl.png", name)
    tok.save_params(out, params)  # last: the stage's completion marker


def run_best_of_n(spec: TokenSpec, out: pathlib.Path, frozen: tok.Frozen,
                  write: bool) -> PolicyResult:
    """Best-of-n sampling from the reference against the proxy, for every n of
    ``spec.best_of_n`` and every seed; evaluation rows only."""
    reference = spec.static.reference
    reward = spec.static.reward_model
    task = frozen.task
    evals = []
    t0 = time.perf_counter()
    for n in spec.best_of_n:
        fn = jax.jit(lambda key, n=n: best_of_n.sample(reference, reward, frozen, key, n,
                                                     spec.static.stats_chunk))
        for r in range(spec.num_seeds):
            seed = spec.seed + r
            out_n = jax.device_get(fn(jax.random.fold_in(jax.random.PRNGKey(seed), n)))
            responses = np.asarray(out_n.pop("responses"))
            evals.append({"n": n, "seed": seed, **tok.scalars(out_n),
                          **tok.diversity(responses, task.pad_id),
                          "samples": [task.decode(responses[j]) for j in range(3)]})
    result = PolicyResult({}, evals, [e for e in evals if e["n"] == max(spec.best_of_n)],
                          None, 0.0, time.perf_counter() - t0, 0)
    if write:
        tok.append_jsonl(out / "eval.jsonl", evals)
        (out / "results.json").write_text(json.dumps({"final": result.final, "all": evals},
                                                     indent=2))
        plot_gold_proxy_vs_kl(evals, out / "gold_proxy_vs_kl.png", spec.name)
    return result


def plot_gold_proxy_vs_kl(evals: list[dict], path: pathlib.Path, title: str) -> None:
    """Gold and proxy reward against the exact sequence KL to the reference, one line per seed."""
    from matplotlib.figure import Figure  # no pyplot: a user's backend (a notebook's) is left alone

    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for seed in sorted({e["seed"] for e in evals}):
        rows = [e for e in evals if e["seed"] == seed and e.get("kl") is not None]
        kls = [e["kl"] for e in rows]
        ax.plot(kls, [e["gold"] for e in rows], "o-", color="tab:green", alpha=0.7,
                label="gold" if seed == evals[0]["seed"] else None)
        ax.plot(kls, [e["proxy"] for e in rows], "s--", color="tab:blue", alpha=0.7,
                label="proxy" if seed == evals[0]["seed"] else None)
    ax.set_xlabel("KL(π ‖ π_ref), nats per sequence")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_domains(evals: list[dict], path: pathlib.Path, title: str) -> None:
    """Per prompt domain: gold and proxy reward against that domain's exact sequence KL
    (``gold_dD``, ``proxy_dD``, ``kl_dD`` of the evaluation rows), one panel per domain, one
    line per seed: where a blind spot shows as a proxy that climbs while the gold falls."""
    from matplotlib.figure import Figure  # no pyplot: a user's backend (a notebook's) is left alone

    count = sum(1 for key in evals[0] if key.startswith("kl_d") and key[4:].isdigit())
    fig = Figure(figsize=(3.6 * count, 3.2))
    axes = fig.subplots(1, count, squeeze=False)
    for d, ax in enumerate(axes[0]):
        for seed in sorted({e["seed"] for e in evals}):
            rows = [e for e in evals if e["seed"] == seed and e.get(f"kl_d{d}") is not None]
            kls = [e[f"kl_d{d}"] for e in rows]
            first = seed == evals[0]["seed"]
            ax.plot(kls, [e[f"gold_d{d}"] for e in rows], "o-", color="tab:green", alpha=0.7,
                    label="gold" if first else None)
            ax.plot(kls, [e[f"proxy_d{d}"] for e in rows], "s--", color="tab:blue", alpha=0.7,
                    label="proxy" if first else None)
        ax.set_title(f"{title}: domain {d}")
        ax.set_xlabel("KL(π ‖ π_ref), nats per sequence")
    axes[0][0].set_ylabel("reward")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)

