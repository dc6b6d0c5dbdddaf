"""Sweep families: how `kltrust.sweep` checks and runs a config of each kind of program.

A family is registered in ``FAMILIES`` and says which configs are its own (``matches``), where the
arrays a group of runs may vary live (``dynamic``: everything outside it, bar ``ignored``, must be
equal for runs to share one compiled program), whether the config's ``seed`` is shared by all runs
(``shared_seed``: token sweeps share data, reference and proxy), how to ``validate`` a config, how
many progress ``units`` a run has, and ``run_group``: run a group, return each run's rows.
"""

from __future__ import annotations

import copy
import hashlib
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kltrust import components
from kltrust.errors import ConfigError, check

FAMILIES: components.Registry[Any] = components.Registry("sweep family")


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None




@FAMILIES.register("control")
class ControlFamily:
    """PPO / TRPO on gymnax environments (`kltrust.train.loop`)."""

    name = "control"
    dynamic = "hparams"
    ignored = ("seed", "num_seeds")
    shared_seed = False

    @staticmethod
    def matches(config: ml_collections.ConfigDict) -> bool:
        return config.get("algorithm") in ("ppo", "trpo")

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """A control run's config, checked by `control_config.validate` (raises `ConfigError`)."""
        from kltrust.train import control_config

        control_config.validate(config)

    def units(self, config: ml_collections.ConfigDict) -> int:
        """Progress units of one run: its number of updates."""
        from kltrust.train import control_config

        return control_config.num_updates(config)

    def run_group(self, runs: Sequence[Any], root: pathlib.Path, record_every: int,
                  advance: Callable[[int], None]) -> tuple[list[list[dict]], dict]:
        """Trains a group of runs sharing a static config as one program (seeds and hyperparameters
        stacked) and returns each run's recorded rows and the group's timing.
        """
        from kltrust.train import control_config, loop

        # The boundary: each run's config is read into a spec here; the group shares the static
        # part (the sweep groups by it) and stacks the hyperparameters.
        specs = [control_config.spec_from_config(r.config) for r in runs]
        seeds = np.array([r.seed for r in runs], np.int32)
        hparams = _stack([spec.hparams for spec in specs])
        result = loop.train(specs[0], None, progress=False, runs=(seeds, hparams),
                            on_chunk=lambda n: advance(n * len(runs)))
        num_updates = next(iter(result.metrics.values())).shape[1]
        recorded = sorted(set(range(record_every, num_updates + 1, record_every)) | {num_updates})
        rows = [[{"update": u, "env_steps": u * result.env_steps_per_update,
                  **{k: _finite(v[i, u - 1]) for k, v in result.metrics.items()}}
                 for u in recorded] for i in range(len(runs))]
        return rows, {"compile_seconds": result.compile_seconds,
                      "run_seconds": result.run_seconds}


@FAMILIES.register("rlhf")
class TokenFamily:
    """Token RLHF policy stages (`kltrust.train.pipeline`), best-of-n included.

    The config's ``seed`` seeds what runs share (data, reference, proxy), so every run of a sweep
    meets the same reference and proxy; the run's own seed seeds its policy stage.
    """

    name = "rlhf"
    dynamic = "rl.hparams"
    ignored = ("num_seeds", "name", "preset")
    shared_seed = True  # the config's seed seeds the shared data, reference and proxy

    @staticmethod
    def matches(config: ml_collections.ConfigDict) -> bool:
        return "rl" in config

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """A token run's config: a sweep runs policy stages only, then `pipeline.validate`."""
        from kltrust.train import pipeline

        if config.stage != "policy":
            raise ValueError(f"config.stage = {config.stage!r}: a sweep runs policy stages only "
                             "(their prerequisites run on demand).")
        pipeline.validate(config)

    def units(self, config: ml_collections.ConfigDict) -> int:
        """Progress units of one run: its updates, or its best-of-n sizes for best-of-n."""
        from kltrust.train.methods import METHODS

        if not METHODS.get(config.rl.method).trains:  # best-of-n
            return len(config.rl.best_of_n)
        return config.rl.num_updates

    def run_group(self, runs: Sequence[Any], root: pathlib.Path, record_every: int,
                  advance: Callable[[int], None]) -> tuple[list[list[dict]], dict]:
        """Runs (or reuses) the shared SFT and reward-model stages, then the group's policy stages
        as one program; returns each run's evaluation rows and the group's timing.
        """
        del record_every  # token runs record every evaluation (rl.updates_per_eval)
        from kltrust.train import pipeline
        from kltrust.train.methods import METHODS

        spec = pipeline.spec_from_config(runs[0].config)  # the config read once, into a spec
        prerequisites = spec.stage_json["sft"] + spec.stage_json["reward_model"]
        proot = root / "pipelines" / hashlib.sha256(prerequisites.encode()).hexdigest()[:12]
        proot.mkdir(parents=True, exist_ok=True)
        ref_params = pipeline.run_sft(spec, proot)
        rm_params = pipeline.run_reward_model(spec, proot)
        if not METHODS.get(spec.method).trains:  # best-of-n
            rows, seconds = [], 0.0
            for run in runs:
                one = copy.deepcopy(run.config)
                one.seed, one.num_seeds = run.seed, 1
                result = pipeline.run_policy(pipeline.spec_from_config(one), proot, ref_params,
                                             rm_params, write=False)
                rows.append(result.evals)
                seconds += result.run_seconds
                advance(self.units(one))
            return rows, {"compile_seconds": 0.0, "run_seconds": seconds}
        seeds = np.array([r.seed for r in runs], np.int32)
        hparams = _stack([jax.tree.map(lambda x: x[0],
                                       pipeline.spec_from_config(r.config).hparams(1))
                          for r in runs])
        result = pipeline.run_policy(spec, proot, ref_params, rm_params, write=False,
                                     runs=(seeds, hparams),
                                     on_chunk=lambda n: advance(n * len(runs)))
        rows = [[e for e in result.evals if e["index"] == i] for i in range(len(runs))]
        return rows, {"compile_seconds": result.compile_seconds,
                      "run_seconds": result.run_seconds}


@FAMILIES.register("bandit")
class BanditFamily:
    """The exact bandit testbed (`kltrust.train.bandit`). A sweep run trains one run spec
    (``runs`` names exactly one) at every β of ``betas``; its rows carry a ``beta`` column."""

    name = "bandit"
    dynamic = "hparams"
    ignored = ("seed", "num_seeds")
    shared_seed = False

    @staticmethod
    def matches(config: ml_collections.ConfigDict) -> bool:
        return config.get("algorithm") == "bandit"

    def validate(self, config: ml_collections.ConfigDict) -> None:
        """A bandit run's config: one run spec, and one data-set size for sampled preferences."""
        from kltrust.train import bandit

        bandit.validate(config)
        check(len(config.runs) == 1, "runs", config.runs,
              "one run spec name in a sweep (an arm sets e.g. runs=('dpo_exact',))")
        spec = config.run_specs[config.runs[0]]
        if bandit.METHODS.get(spec.method).offline_pairs and spec.preferences == "sampled":
            check(len(config.num_pairs) == 1, "num_pairs", config.num_pairs,
                  "one data-set size in a sweep (grid over num_pairs=(N,) to vary it)")

    def units(self, config: ml_collections.ConfigDict) -> int:
        """Progress units of one run: its number of steps."""
        return config.num_steps

    @staticmethod
    def static_key(config: ml_collections.ConfigDict) -> str:
        """The config without what travels as arrays: ``hparams``, the seed, and the run spec's
        label noise and preference-loss knobs (so a grid over SimPO's γ is one program)."""
        import json

        tree = config.to_dict()
        for key in ("hparams", "seed", "num_seeds"):
            tree.pop(key)
        for spec in tree["run_specs"].values():
            spec.pop("label_noise")
            spec.pop("preference")
        return json.dumps(tree, sort_keys=True, default=str)

    def run_group(self, runs: Sequence[Any], root: pathlib.Path, record_every: int,
                  advance: Callable[[int], None]) -> tuple[list[list[dict]], dict]:
        """Trains a group of bandit runs as one program and returns each run's recorded rows (the
        exact KL and reward against π*_β) and the group's timing.
        """
        del root
        from kltrust.train import bandit_config, bandit_run

        # The boundary: each run's config is read once, into a typed spec.
        specs = [bandit_config.spec_from_config(r.config) for r in runs]
        name = specs[0].runs[0]
        hparams = _stack([bandit_config.hparams_for(s, name) for s in specs])  # [R, betas]
        seeds = np.array([r.seed for r in runs], np.int32)
        trained = bandit_run.train(specs[0], name, runs=(seeds, hparams),
                                   on_chunk=lambda n: advance(n * len(runs)))
        compile_seconds, run_seconds = trained.compile_seconds, trained.run_seconds
        result = trained.run
        steps = np.asarray(result.metrics["step"])  # [R, betas, evals]
        rows = []
        for r, run in enumerate(runs):
            run_rows = []
            for b, beta in enumerate(np.asarray(run.config.betas, np.float64)):
                for e in range(steps.shape[-1]):
                    step = int(steps[r, b, e])
                    if step % record_every and e + 1 < steps.shape[-1]:
                        continue
                    run_rows.append({"update": step, "beta": float(beta), **{
                        k: _finite(v[r, b, e]) for k, v in result.metrics.items() if k != "step"}})
            rows.append(run_rows)
        return rows, {"compile_seconds": compile_seconds, "run_seconds": run_seconds}


def of(config: ml_collections.ConfigDict) -> Any:
    """The family a base config belongs to (the first registered family that claims it)."""
    for _, family in FAMILIES.items():
        if family.matches(config):
            return family()
    raise ConfigError(f"config: no sweep family runs it (algorithm {config.get('algorithm')!r}); "
                      f"the families are {FAMILIES.names()}.")
