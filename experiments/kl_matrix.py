"""Reproductions 1 and 2 of issue 23: the KL matrix on the exact bandit.

    python -m experiments.kl_matrix --workdir=runs/kl_matrix [--betas=0.1,0.3,1.0] [--num_seeds=3]
        [--num_steps=8000] [--learning_rate=0.3] [--mode=exact|sampled]

1. Fixed points. Trains ``pg_kl`` (exact expectations; ``--mode=sampled``: ``pg_kl_sampled``) for
   every registered estimator × placement (`kltrust.train.bandit_kl`; combinations that
   `kltrust.train.bandit.Setup` refuses are listed as refused), β × seeds vmapped in one compile per
   cell, Adam with a cosine-decayed learning rate, on `kltrust.tasks.bandit.make` (4 contexts × 6
   actions). For each final policy: E_x KL(final‖π*_β), E_x KL(final‖forward-KL optimum at β),
   the E[r] gap to E_x max r, E_x KL(final‖the predicted fixed point) of the estimator's
   (a, b) metadata (`kltrust.tasks.fixed_points.stationary_policy`), and convergence: the norm of
   the exact expected gradient of the loss with respect to the logits at the end, and the change of
   E_x KL(π‖π*_β) over the last evaluation interval.
2. Liu et al.'s gradient coefficient c(δ) of ∇log π_θ for each estimator × placement, δ ∈ [−3, 3],
   by autodiff of kltrust's estimators (`kltrust.train.bandit_kl.gradient_coefficient`).

Writes into ``--workdir``: ``fixed_points.json`` (one record per cell × β × seed × context:
estimator, placement, correction, beta, seed, context, context_prob, logp_ref, reward, final_logp),
``kl_matrix.csv``/``.md`` (per cell and β, means over seeds), ``coefficients.csv``/``.md``,
``refused.json``, ``kl_matrix.png`` and ``coefficients.png``. A bad flag prints one line and exits
with status 2 before anything is compiled or written (`experiments.cli`).
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from kltrust import kl
from kltrust.errors import ConfigError
from kltrust.metrics import rows_to_csv, write_text_atomic
from kltrust.tasks import bandit as bandit_lib
from kltrust.tasks import fixed_points
from kltrust.train import bandit as bandit_train
from kltrust.train import bandit_kl, bandit_methods

_WORKDIR = flags.DEFINE_string("workdir", "runs/kl_matrix", "Output directory.")
_BETAS = flags.DEFINE_string("betas", "0.1,0.3,1.0", "Comma-separated KL coefficients β > 0.")
_SEEDS = flags.DEFINE_integer("num_seeds", 3, "Training seeds per cell (vmapped).")
_STEPS = flags.DEFINE_integer("num_steps", 8000, "Adam steps (cosine-decayed learning rate).")
_LR = flags.DEFINE_float("learning_rate", 0.3, "Adam's initial learning rate.")
_MODE = flags.DEFINE_enum("mode", "exact", ["exact", "sampled"],
                          "exact: pg_kl (expectations over every action); sampled: pg_kl_sampled.")
_BANDIT_SEED = flags.DEFINE_integer("bandit_seed", 0, "Seed of kltrust.tasks.bandit.make.")

PLACEMENTS = bandit_train.KL_PLACEMENTS
DELTAS = np.linspace(-3.0, 3.0, 121)
TABLE_DELTAS = (-3.0, -1.0, 0.0, 1.0, 3.0)
_EVALS = 100  # evaluations per run: the step a run went non-finite, and the convergence check
# (the range of E_x KL(π‖π*_β) over the last eighth of the run)
# A final policy "reached" a target when E_x KL(final‖target) is below this (nats) — two orders
# above the slowest converged cell measured (k2/k1 at β = 0.1, ~2e-5 after 8000 steps) and far
# below the KLs between the targets (≥ 0.04 here).
REACHED = 1e-3


def parse_betas(text: str) -> list[float]:
    """``"0.1,0.3"`` -> [0.1, 0.3]; anything but finite numbers > 0 is a `ConfigError`."""
    try:
        betas = [float(part) for part in text.split(",")]
    except ValueError:
        betas = []
    if not betas or not all(np.isfinite(b) and b > 0 for b in betas):
        raise ConfigError(f"--betas = {text!r}: must be comma-separated finite numbers > 0 "
                          "(e.g. 0.1,0.3,1.0).")
    return betas


def cells(method: str, num_steps: int) -> tuple[list[bandit_train.Setup], list[dict]]:
    """The Setups of every estimator × placement, and the refused ones with Setup's reason."""
    setups, refused = [], []
    for estimator in kl.estimators():
        for placement in PLACEMENTS:
            try:
                setups.append(bandit_train.Setup(
                    method=method, kl_estimator=estimator, kl_placement=placement,
                    num_steps=num_steps, steps_per_eval=num_steps // _EVALS))
            except ValueError as error:
                refused.append(dict(estimator=estimator, placement=placement, reason=str(error)))
    return setups, refused


def predicted_gradient(estimator: str, placement: str) -> tuple[float, float] | None:
    """(a, b) of the KL term's expected gradient, from the registry (None: not of that form)."""
    info = kl.estimator_info(estimator)
    return info.loss_gradient if placement == "loss" else info.reward_gradient


def _mean_kl(task, logits, target) -> float:
    return float(jnp.sum(task.context_probs * kl.categorical(logits, target)))


def _reached(task, logits, beta: float, predicted, predicted_name: str) -> tuple[str, dict]:
    """Which target the final policy reached (E_x KL below `REACHED`; a vertex: every context's
    top action above 0.99) and the distances to each."""
    logp_ref = jax.nn.log_softmax(task.ref_logits, axis=-1)
    numbers = dict(
        kl_to_gibbs=float(bandit_lib.kl_to_optimum(task, logits, beta)),
        kl_to_forward=_mean_kl(task, logits, fixed_points.forward_kl_optimum(
            logp_ref, task.rewards, beta)),
        reward_gap=float(_max_reward(task) - bandit_lib.expected_reward(task, logits)),
        kl_to_predicted=np.nan if predicted is None else _mean_kl(task, logits, predicted))
    probs = np.asarray(jax.nn.softmax(logits, axis=-1))
    at_vertex = probs.max(-1) > 0.99
    off_argmax = at_vertex & (probs.argmax(-1) != np.asarray(task.rewards.argmax(-1)))
    if numbers["kl_to_gibbs"] < REACHED:
        where = "π*_β"
    elif numbers["kl_to_forward"] < REACHED:
        where = "forward-KL optimum"
    elif numbers["kl_to_predicted"] < REACHED:
        where = predicted_name
    elif at_vertex.all() and not off_argmax.any():
        where = "argmax vertex"
    elif at_vertex.any():
        where = (f"a vertex in {at_vertex.sum()}/{at_vertex.size} contexts, "
                 f"{off_argmax.sum()} of them not the argmax")
    else:
        where = "none of them"
    return where, numbers


def _max_reward(task) -> float:
    return float(jnp.sum(task.context_probs * task.rewards.max(-1)))


def run_cell(setup, task, betas, seeds, learning_rate) -> tuple[np.ndarray, dict, float]:
    """Trains one cell: final logits [H, S, C, A], per-evaluation metrics [H, S, E], seconds."""
    hp = bandit_train.HParams.create(beta=np.asarray(betas, np.float32),
                                     learning_rate=learning_rate)
    keys = jax.vmap(jax.random.key)(jnp.asarray(seeds))
    start = time.perf_counter()
    run = bandit_train.make_sweep(setup)(keys, task, hp)
    logits = np.asarray(jax.block_until_ready(run.logits))
    return logits, {k: np.asarray(v) for k, v in run.metrics.items()}, time.perf_counter() - start


def _grad_norm(task, logits, beta, estimator, placement) -> float:
    grad = jax.grad(lambda z: bandit_kl.exact_loss(z, task, beta, estimator, placement)[0])(logits)
    return float(jnp.linalg.norm(grad))


def last_finite_policy(setup, task, beta: float, learning_rate: float) -> tuple[int, jax.Array]:
    """(s, logits): ``pg_kl``'s run from π_ref (it uses no randomness) replayed step by step, with
    the method's own optimiser, up to its last finite logits, after step s (0: the start)."""
    if setup.method != "pg_kl":
        raise ValueError("last_finite_policy replays the exact method pg_kl only.")
    hp = bandit_train.HParams.create(beta=beta, learning_rate=learning_rate)
    optimizer = bandit_methods._optimizer(setup, hp)

    @jax.jit
    def step(logits, opt_state):
        grad = jax.grad(lambda z: bandit_kl.exact_loss(z, task, hp.beta, setup.kl_estimator,
                                                       setup.kl_placement)[0])(logits)
        updates, opt_state = optimizer.update(grad, opt_state, logits)
        return logits + updates, opt_state

    logits = jnp.asarray(task.ref_logits)
    opt_state = optimizer.init(logits)
    for s in range(setup.num_steps):
        new_logits, opt_state = step(logits, opt_state)
        if not bool(jnp.all(jnp.isfinite(new_logits))):
            return s, logits
        logits = new_logits
    return setup.num_steps, logits


def fixed_point_rows(setup, task, betas, seeds, logits, metrics, seconds, learning_rate):
    """(table rows per β, fixed_points.json records) of one trained cell."""
    est, place = setup.kl_estimator, setup.kl_placement
    correction = kl.estimator_info(est).correction or "none"
    gradient = predicted_gradient(est, place)
    logp_ref = np.asarray(jax.nn.log_softmax(task.ref_logits, axis=-1))
    rows, records = [], []
    for h, beta in enumerate(betas):
        predicted = None
        if gradient is not None and gradient != (0.0, 0.0):  # the argmax: KL to it is infinite
            predicted = fixed_points.stationary_policy(task, beta, gradient)
        per_seed, replayed = [], None  # pg_kl is seed-independent: one replay per β
        for s, seed in enumerate(seeds):
            final = jnp.asarray(logits[h, s])
            curve = metrics["kl_to_optimum"][h, s]
            finite = bool(np.all(np.isfinite(logits[h, s])))
            if finite:
                where, numbers = _reached(task, final, beta, predicted, _predicted_name(gradient))
                numbers["grad_norm"] = _grad_norm(task, final, beta, est, place)
                tail = curve[-(len(curve) // 8 + 1):]  # the last eighth of the run
                numbers["last_change"] = float(np.max(tail) - np.min(tail))
                numbers["diverged_at_step"] = np.nan
            elif setup.method != "pg_kl":  # sampled: no replay
                where = "diverged (non-finite)"
                numbers = dict.fromkeys(("kl_to_gibbs", "kl_to_forward", "reward_gap",
                                         "kl_to_predicted", "grad_norm", "last_change",
                                         "diverged_at_step"), np.nan)
            else:  # replay the run to its last finite policy and report that
                replayed = replayed or last_finite_policy(setup, task, beta, learning_rate)
                step, last_logits = replayed
                where, numbers = _reached(task, last_logits, beta, predicted,
                                          _predicted_name(gradient))
                where = f"diverged at step {step + 1}; before it: {where}"
                numbers.update(grad_norm=np.nan, last_change=np.nan,
                               diverged_at_step=float(step + 1))
            per_seed.append((where, numbers))
            final_logp = np.asarray(jax.nn.log_softmax(final, axis=-1))
            for c in range(task.num_contexts):
                records.append(dict(
                    estimator=est, placement=place, correction=correction, beta=float(beta),
                    seed=int(seed), context=c, context_prob=float(task.context_probs[c]),
                    logp_ref=logp_ref[c].tolist(), reward=np.asarray(task.rewards[c]).tolist(),
                    final_logp=final_logp[c].tolist() if finite else None))
        mean = {k: float(np.mean([n[k] for _, n in per_seed])) for k in per_seed[0][1]}
        reached = sorted({w for w, _ in per_seed})
        rows.append(dict(
            estimator=est, placement=place, correction=correction,
            gradient=_gradient_name(gradient), predicted=_predicted_name(gradient),
            beta=float(beta), **mean, reached=" / ".join(reached), seconds=seconds))
    return rows, records


def _gradient_name(gradient) -> str:
    return "—" if gradient is None else f"({gradient[0]:g}, {gradient[1]:g})"


def _predicted_name(gradient) -> str:
    if gradient is None:
        return "none of the three (E[r] − β(E[½δ²] − KL))"
    a, b = gradient
    if b < 0:
        return "no interior optimum (b < 0)"
    if a == 0 and b == 0:
        return "argmax (no regularisation)"
    if b == 0:
        return "π*_β" if a == 1 else f"π*_{{{a:g}β}}"
    if a == 0:
        return "forward-KL optimum" + ("" if b == 1 else f" at {b:g}β")
    return "mixed"


def coefficient_rows(setups) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Liu et al.'s c(δ) per cell: table rows at TABLE_DELTAS and the curves over DELTAS."""
    rows, curves = [], {}
    for setup in setups:
        name = f"{setup.kl_estimator} / {setup.kl_placement}"
        curve = np.asarray(bandit_kl.gradient_coefficient(setup.kl_estimator, setup.kl_placement,
                                                          DELTAS))
        curves[name] = curve
        at = np.asarray(bandit_kl.gradient_coefficient(setup.kl_estimator, setup.kl_placement,
                                                       np.asarray(TABLE_DELTAS)))
        rows.append(dict(cell=name, gradient=_gradient_name(predicted_gradient(
                             setup.kl_estimator, setup.kl_placement)),
                         **{f"c({d:g})": float(v) for d, v in zip(TABLE_DELTAS, at)}))
    return rows, curves


def _markdown(rows: Sequence[dict], columns: Sequence[str], fmt=lambda v: f"{v:.3g}") -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r[c]) if isinstance(r[c], float) else str(r[c])
                                       for c in columns) + " |")
    return "\n".join(lines) + "\n"


TABLE_COLUMNS = ("estimator", "placement", "gradient", "predicted", "beta", "kl_to_gibbs",
                 "kl_to_forward", "reward_gap", "kl_to_predicted", "grad_norm", "last_change",
                 "reached")


def plot(rows, curves, out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells_ = list(dict.fromkeys(f"{r['estimator']}/{r['placement']}" for r in rows))
    betas = sorted({r["beta"] for r in rows})
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    floor = 1e-9
    for ax, key, title in zip(axes, ("kl_to_gibbs", "kl_to_forward", "reward_gap"),
                              ("E_x KL(final ‖ π*_β)", "E_x KL(final ‖ forward-KL optimum)",
                               "E_x max r − E[r]")):
        for j, beta in enumerate(betas):
            values = [np.fmax(next(r[key] for r in rows if f"{r['estimator']}/{r['placement']}" == c
                               and r["beta"] == beta), floor) for c in cells_]
            ax.barh(np.arange(len(cells_)) + (j - 1) * 0.27, values, height=0.27,
                    label=f"β = {beta:g}")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.axvline(REACHED, color="k", lw=0.6, ls="--")
    axes[0].set_yticks(np.arange(len(cells_)), cells_, fontsize=8)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=7)
    fig.suptitle("KL matrix on the exact bandit: where each estimator/placement converges "
                 f"(dashed: {REACHED:g})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "kl_matrix.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, placement in zip(axes, PLACEMENTS):
        for name, curve in curves.items():
            if name.endswith(f"/ {placement}"):
                ax.plot(DELTAS, curve, label=name.split(" /")[0])
        ax.set_ylim(-4, 4)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("δ = log π − log π_ref")
        ax.set_title(f"placement {placement}: c(δ) = " + ("k(δ)" if placement == "reward"
                                                         else "dk/dlog π"), fontsize=9)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("coefficient of ∇log π (per unit β)")
    fig.tight_layout()
    fig.savefig(out / "coefficients.png", dpi=90)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {argv[1:]!r}; every option is a --flag.")
    betas = parse_betas(_BETAS.value)
    if _SEEDS.value < 1:
        raise ConfigError(f"--num_seeds = {_SEEDS.value}: must be an integer >= 1.")
    if _STEPS.value < _EVALS or _STEPS.value % _EVALS:
        raise ConfigError(f"--num_steps = {_STEPS.value}: must be a positive multiple of "
                          f"{_EVALS}.")
    if not (np.isfinite(_LR.value) and _LR.value > 0):
        raise ConfigError(f"--learning_rate = {_LR.value}: must be a finite number > 0.")
    with cli.config_errors():
        task = bandit_lib.make(_BANDIT_SEED.value)
    method = "pg_kl" if _MODE.value == "exact" else "pg_kl_sampled"
    setups, refused = cells(method, _STEPS.value)
    seeds = list(range(_SEEDS.value))
    start = time.perf_counter()
    rows, records = [], []
    for setup in setups:
        logits, metrics, seconds = run_cell(setup, task, betas, seeds, _LR.value)
        cell_rows, cell_records = fixed_point_rows(setup, task, betas, seeds, logits, metrics,
                                                   seconds, _LR.value)
        rows += cell_rows
        records += cell_records
        print(f"{setup.kl_estimator:>6} / {setup.kl_placement:<6} {seconds:5.1f} s: "
              + ", ".join(f"β={r['beta']:g} → {r['reached']}" for r in cell_rows), flush=True)
    coefficients, curves = coefficient_rows(setups)
    out = pathlib.Path(_WORKDIR.value)
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(mode=_MODE.value, method=method, betas=betas, seeds=seeds,
                    num_steps=_STEPS.value, learning_rate=_LR.value, lr_schedule="cosine",
                    bandit=dict(seed=_BANDIT_SEED.value, num_contexts=task.num_contexts,
                                num_actions=task.num_actions),
                    reached_threshold=REACHED, seconds=time.perf_counter() - start)
    write_text_atomic(out / "fixed_points.json", json.dumps(records) + "\n")
    write_text_atomic(out / "settings.json", json.dumps(settings, indent=1) + "\n")
    write_text_atomic(out / "refused.json", json.dumps(refused, indent=1) + "\n")
    write_text_atomic(out / "kl_matrix.csv", rows_to_csv(rows))
    table = _markdown(rows, TABLE_COLUMNS)
    write_text_atomic(out / "kl_matrix.md", table)
    write_text_atomic(out / "coefficients.csv", rows_to_csv(coefficients))
    coefficient_table = _markdown(coefficients, list(coefficients[0]))
    write_text_atomic(out / "coefficients.md", coefficient_table)
    plot(rows, curves, out)
    print(table)
    print(coefficient_table)
    for r in refused:
        print(f"refused: {r['estimator']} / {r['placement']}: {r['reason']}")
    print(f"wrote {out}/: fixed_points.json, kl_matrix.csv/.md, coefficients.csv/.md, "
          f"refused.json, settings.json, kl_matrix.png, coefficients.png "
          f"({settings['seconds']:.0f} s)")


if __name__ == "__main__":
    cli.run(main)
