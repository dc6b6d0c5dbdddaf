"""The bandit program on the one host loop (`kltrust.train.host`).

A run of one static `Setup` is three compiled functions, vmapped over its runs:

    init(keys, bandit, hparams)           -> TrainState
    advance: chunk(state, bandit, hparams) -> state, per-step metrics   (``steps_per_eval`` steps)
    between: evaluate(state, bandit, hparams) -> logits, exact metrics  (every evaluation)

and `host.run` threads the state through ``num_evals`` chunks, with, given a workdir, per-step
metric rows (``metrics.jsonl``), exact-evaluation rows (``eval.jsonl``), orbax checkpoints, resume
after an interruption (the same numbers, bit for bit, as a run never stopped) and a clean stop on
SIGTERM. Without a workdir nothing is written (the sweep's groups, notebooks, tests).

Runs are laid out as one of (``Layout``):

    "single"  one key, hparams scalars                      -> results []
    "sweep"   keys [S], hparams [H] (β × seeds)             -> results [H, S]
    "runs"    keys [R], hparams [R, H] (a sweep's group)     -> results [R, H]

The host loop sees them flattened to one run axis (row-major). The evaluation after chunk i reports
the exact metrics of the policy, the last step's training metrics (which win a name clash, as they
always have) and ``step``; as before, nothing is reported before the first chunk.

There is no non-finite guard (``max_nonfinite_updates`` None): the testbed's metrics are exact
expectations, and a run whose numbers went non-finite is itself the result to report.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, Literal

import jax
import numpy as np

from kltrust import checkpoint as ckpt
from kltrust import processes
from kltrust import workdir as workdirs
from kltrust.tasks import bandit as bandit_lib
from kltrust.tasks.bandit import Bandit
from kltrust.train import bandit_config, host
from kltrust.train.bandit import METHODS, HParams, Run, Setup, TrainState
from kltrust.train.bandit_config import BanditSpec

Layout = Literal["single", "sweep", "runs"]

RUN_OUTPUTS = ("metrics.jsonl", "eval.jsonl", "checkpoints", ckpt.UNREADABLE)
WORKDIR_RULES = workdirs.Rules(
    different="workdir {path} holds a bandit run of a different spec; choose another --workdir "
              "or pass --overwrite to replace it.",
    outputs=RUN_OUTPUTS)


@dataclasses.dataclass
class Trained:
    """What `train` and `run_keys` end with."""

    run: Run  # final state, final logits and per-evaluation metrics, laid out as the layout says
    compile_seconds: float
    run_seconds: float  # the host loop, evaluations and rows included
    resumed_from: int = 0  # steps restored from a checkpoint (0: a fresh run)
    preempted: bool = False  # stopped by SIGTERM after writing a checkpoint


def _vmapped(fn: Callable, layout: Layout, batched_first: bool) -> Callable:
    """``fn(x, bandit, hparams)`` vmapped for ``layout``; ``x`` is a state (``batched_first``) or
    a key. The axes are those of the one-program scan this replaces, so the numbers are too."""
    if layout == "single":
        return fn
    if layout == "sweep":  # x [S] (state [H, S]), hparams [H]
        inner = jax.vmap(fn, in_axes=(0, None, None))
        return jax.vmap(inner, in_axes=(0 if batched_first else None, None, 0))
    inner = jax.vmap(fn, in_axes=(0 if batched_first else None, None, 0))  # "runs": hparams [R, H]
    return jax.vmap(inner, in_axes=(0, None, 0))


def _functions(setup: Setup, layout: Layout) -> tuple[Callable, Callable, Callable]:
    method = METHODS.get(setup.method).build(setup)
    policy = bandit_lib.make_policy(setup.policy)

    def chunk(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        step = lambda s, _: method.update(s, bandit, hp)  # noqa: E731
        return jax.lax.scan(step, state, None, length=setup.steps_per_eval)

    def evaluate(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[jax.Array, dict]:
        logits = policy.apply(state.params, bandit)
        return logits, {**bandit_lib.exact_metrics(bandit, logits, hp.beta), "step": state.step}

    return (jax.jit(_vmapped(method.init, layout, False)),
            jax.jit(_vmapped(chunk, layout, True)), jax.jit(_vmapped(evaluate, layout, True)))


_COMPILED: dict[tuple, tuple[Any, Any, Any, dict]] = {}


def _compiled(setup: Setup, layout: Layout, keys: jax.Array, bandit: Bandit, hp: HParams
              ) -> tuple[Any, Any, Any, dict]:
    """The three executables, compiled once per (setup, layout, argument shapes), and the dtypes
    of the training metrics."""
    shapes = jax.tree.map(lambda x: (x.shape, str(x.dtype)), (keys, bandit, hp))
    cache_key = (setup, layout, str(shapes))
    if cache_key not in _COMPILED:
        init, chunk, evaluate = _functions(setup, layout)
        state = jax.eval_shape(init, keys, bandit, hp)
        _COMPILED[cache_key] = (init.lower(keys, bandit, hp).compile(),
                                chunk.lower(state, bandit, hp).compile(),
                                evaluate.lower(state, bandit, hp).compile(),
                                {k: v.dtype for k, v in
                                 jax.eval_shape(chunk, state, bandit, hp)[1].items()})
    return _COMPILED[cache_key]


def _flat(x: Any, batch: tuple[int, ...]) -> np.ndarray:
    """[*batch, ...] -> [runs, ...] on the host (outside the compiled program: no numerical
    effect)."""
    return np.asarray(x).reshape((-1,) + np.shape(x)[len(batch):])


def _json_value(x: Any) -> Any:
    if isinstance(x, (int, np.integer)):
        return int(x)
    x = float(x)  # a float32 as a float64 and back is exact: resuming reads the same numbers
    return x if np.isfinite(x) else None


def run_keys(setup: Setup, layout: Layout, keys: jax.Array, bandit: Bandit, hp: HParams, *,
             seeds: np.ndarray | None = None,
             workdir: pathlib.Path | None = None, resume: bool = False, progress: bool = False,
             title: str = "bandit", on_chunk: Callable[[int], None] | None = None,
             checkpoint_every: int = 1) -> Trained:
    """Trains the runs of ``layout`` from ``keys`` and ``hp`` on the host loop.

    ``seeds``, one per key, name the runs in the rows beside their β (default: the key's index).
    With a ``workdir`` (already claimed) rows and checkpoints are written there, and ``resume``
    restores the newest checkpoint.
    """
    start = time.perf_counter()
    init_c, chunk_c, eval_c, step_dtypes = _compiled(setup, layout, keys, bandit, hp)
    state = init_c(keys, bandit, hp)
    compile_seconds = time.perf_counter() - start
    batch = tuple(np.shape(state.step))
    num_runs, spe = int(np.prod(batch, dtype=int)), setup.steps_per_eval
    seeds = np.arange(np.size(keys)).reshape(np.shape(keys)) if seeds is None else seeds
    beta = np.asarray(hp.beta, np.float32)
    if layout == "sweep":  # [H, S]
        seeds, beta = np.asarray(seeds)[None, :], beta[:, None]
    elif layout == "runs":  # [R, H]
        seeds = np.asarray(seeds)[:, None]
    seeds = _flat(np.broadcast_to(seeds, batch), batch).astype(np.int64)
    # The shortest decimal of each float32 β: the β the spec asked for (0.3, not 0.30000001).
    betas = [float(np.format_float_positional(b, unique=True))
             for b in _flat(np.broadcast_to(beta, batch), batch)]
    evals: dict[int, dict[str, np.ndarray]] = {}  # evaluation (chunks done) -> name -> [runs]
    last_logits: list[Any] = []

    def between(i: int, state: TrainState) -> TrainState:
        if i == 0:  # nothing is reported before the first chunk
            return state
        logits, metrics = eval_c(state, bandit, hp)
        evals[i] = {k: _flat(v, batch) for k, v in jax.device_get(metrics).items()}
        if i == setup.num_evals:
            last_logits.append(logits)
        if workdir is not None and processes.is_primary():  # as the host loop's own rows
            _append(workdir / "eval.jsonl", [
                {"update": i * spe, "index": r, "seed": int(seeds[r]), "beta": float(betas[r]),
                 **{k: _json_value(v[r]) for k, v in evals[i].items()}} for r in range(num_runs)])
        return state

    def resumed(rows: list[dict]) -> None:
        for i in sorted({row["update"] // spe for row in rows}):
            mine = sorted((row for row in rows if row["update"] == i * spe),
                          key=lambda row: row["index"])
            names = [k for k in mine[0] if k not in ("update", "index", "seed", "beta")]
            evals[i] = {k: np.array([np.nan if row[k] is None else row[k] for row in mine],
                                    np.int32 if k == "step" else np.float32) for k in names}

    def advance(state: TrainState) -> tuple[TrainState, dict]:
        state, metrics = chunk_c(state, bandit, hp)
        return state, {k: _flat(v, batch) for k, v in jax.device_get(metrics).items()}

    def write_rows(metrics: dict[str, np.ndarray], before: int) -> None:
        _append(workdir / "metrics.jsonl", [
            {"update": before + u + 1, "seed": int(seeds[r]),
             **{k: _json_value(v[r, u]) for k, v in metrics.items()}}
            for u in range(spe) for r in range(num_runs)])

    chunks = host.Chunks(
        name="bandit", advance=advance, num_chunks=setup.num_evals, updates_per_chunk=spe,
        seeds=seeds, max_nonfinite_updates=None, write_rows=write_rows,
        # The evaluation at the checkpoint is redone on resume (it is exact: the same numbers).
        rows_files=(host.RowsFile("eval.jsonl", "update", lambda done: done - 1, resumed),),
        # Orbax stores arrays, not typed PRNG keys: a checkpoint holds the key's raw data.
        saved=lambda s: s.replace(key=jax.random.key_data(s.key)),
        restored=lambda s: s.replace(key=jax.random.wrap_key_data(s.key)),
        between=between, checkpoint_every=checkpoint_every, title=title)
    ran = host.run(chunks, state, workdir=workdir, resume=resume, progress=progress,
                   on_chunk=on_chunk)
    logits = last_logits[-1] if last_logits else eval_c(ran.carry, bandit, hp)[0]
    return Trained(Run(ran.carry, logits, _per_evaluation(evals, ran.metrics, step_dtypes, spe,
                                                          batch)),
                   compile_seconds, ran.loop_seconds, ran.resumed_from, ran.preempted)


def _per_evaluation(evals: dict[int, dict[str, np.ndarray]], steps: dict[str, np.ndarray],
                    dtypes: dict[str, Any], spe: int, batch: tuple[int, ...]
                    ) -> dict[str, np.ndarray]:
    """name -> [*batch, evaluations]: each evaluation's exact metrics, then the training metrics
    of the step before it, then ``step``, in the order the one-program scan reported them."""
    rows = []
    for i in sorted(evals):
        row = dict(evals[i])
        # A resumed run reads its training metrics back as float32: give each its traced dtype.
        row.update({k: v[:, i * spe - 1].astype(dtypes[k]) for k, v in steps.items()})
        row["step"] = evals[i]["step"]
        rows.append(row)
    if not rows:
        return {}
    return {k: np.stack([row[k] for row in rows], axis=-1).reshape(batch + (len(rows),))
            for k in sorted(rows[0])}


def _append(path: pathlib.Path, rows: list[dict]) -> None:
    with open(path, "a") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))


def train(spec: BanditSpec, run: str, num_pairs: int | None = None, *,
          workdir: str | pathlib.Path | None = None, overwrite: bool = False,
          runs: tuple[np.ndarray, HParams] | None = None, progress: bool = False,
          on_chunk: Callable[[int], None] | None = None, checkpoint_every: int = 1) -> Trained:
    """Trains run spec ``run`` of ``spec`` at every β × seed (layout "sweep": results [H, S]).

    ``runs = (seeds [R], HParams [R, H])`` trains R (seed, hyperparameter) runs of the same static
    setup instead (layout "runs": results [R, H]; how a sweep runs a group). With a ``workdir``
    the spec is recorded in ``config.json`` (`kltrust.workdir`: another spec's outputs are refused
    unless ``overwrite``; this spec's unfinished outputs resume) and rows and checkpoints (every
    ``checkpoint_every`` evaluations) are written there; SIGTERM then stops after the current
    chunk with a checkpoint. ``on_chunk(steps)`` is called after every chunk.
    """
    setup = bandit_config.setup_for(spec, run, num_pairs)
    if runs is None:
        seeds, hp, layout = spec.seeds, bandit_config.hparams_for(spec, run), "sweep"
    else:
        seeds, hp, layout = np.asarray(runs[0], np.int32), runs[1], "runs"
    resume = False
    if workdir is not None:
        workdir = pathlib.Path(workdir)
        text = json.dumps({"spec": spec.to_json(), "run": run, "num_pairs": setup.num_pairs,
                           "seeds": seeds.tolist(),
                           "hparams": None if runs is None else {
                               jax.tree_util.keystr(k): np.asarray(v).tolist()
                               for k, v in jax.tree_util.tree_leaves_with_path(hp)}},
                          indent=2, sort_keys=True, default=str) + "\n"
        resume = workdirs.claim_workdir("bandit.workdir", workdir, text, WORKDIR_RULES,
                                        overwrite=overwrite) is workdirs.Claim.RESUME
    keys = jax.vmap(jax.random.key)(np.asarray(seeds, np.uint32))
    return run_keys(setup, layout, keys, bandit_config.make_bandit(spec), hp, seeds=seeds,
                    workdir=workdir, resume=resume, progress=progress, title=f"bandit {run}",
                    on_chunk=on_chunk, checkpoint_every=checkpoint_every)
