"""The bandit testbed's config: its schema (`defaults`, `run_spec`), checks (`validate`), the typed
`BanditSpec` made of a checked config (`spec_from_config`, the one place the config is read), and
the static `Setup` / array `HParams` of one run spec of a spec (`setup_for`, `hparams_for`).

A bandit config (configs/bandit.py) describes a whole comparison: the bandit, the policy class,
the run shape, ``betas`` (every run spec trains at every β, vmapped), and ``runs``, names of
``run_specs``. A run spec chooses a method (`kltrust.train.bandit.METHODS`), a preference loss
(`kltrust.objectives.preference.LOSSES`, for the methods that use one), the preference data and
its label noise, and holds the knobs of every registered preference loss under ``preference``
(only the chosen one's are read). Everything is checked on the host before anything is traced.

Programs below the config boundary (`kltrust.train.bandit_run`, the sweep family, the frontier
experiment once it has read its flags) take a `BanditSpec`, never the ml_collections config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from kltrust import components
from kltrust.errors import ConfigError, check, check_choice, is_int, unknown_key
from kltrust.objectives import preference
from kltrust.tasks import bandit as bandit_lib
from kltrust.tasks.bandit import Bandit, PolicySpec
from kltrust.train.bandit import (LR_SCHEDULES, METHODS, PREFERENCE_MODES, HParams, Knobs,
                                  Setup)


def run_spec(method: str, preference_loss: str = "sigmoid", preferences: str = "sampled",
             label_noise: float = 0.0, **knobs: dict) -> ml_collections.ConfigDict:
    """A run spec: ``knobs`` maps a preference loss's name to overrides of its knobs."""
    spec = ml_collections.ConfigDict(dict(
        method=method, preference_loss=preference_loss, preferences=preferences,
        label_noise=float(label_noise)))
    spec.preference = components.group_defaults(preference.LOSSES)
    for loss, values in knobs.items():
        spec.preference[loss].update(values)
    return spec


RUN_SPEC_KEYS = ("method", "preference_loss", "preferences", "label_noise", "preference")


def defaults() -> ml_collections.ConfigDict:
    """Every field of a bandit config with its default (one run spec, ``dpo_exact``)."""
    c = ml_collections.ConfigDict()
    c.algorithm = "bandit"
    c.seed = 0  # training seeds seed, seed+1, … (vmapped); the bandit has its own seed
    c.num_seeds = 2
    c.bandit = ml_collections.ConfigDict(dict(
        seed=0, num_contexts=4, num_actions=6, reward_scale=1.0, ref_scale=1.0,
        context_scale=0.5))
    c.policy = ml_collections.ConfigDict(dict(kind="tabular", hidden=(8,), activation="tanh"))
    c.num_steps = 2000
    c.steps_per_eval = 50
    c.lr_schedule = "cosine"
    c.batch_size = 64  # pairs per step (online DPO); contexts per step (REINFORCE, PPO)
    c.group_size = 4  # actions per context (REINFORCE, PPO)
    c.ppo_epochs = 4  # Adam steps per sampled batch (PPO)
    c.offline_batch_size = 0  # pairs per step for offline methods; 0 = all of them (full batch)
    c.betas = (0.1, 0.3, 1.0)
    c.num_pairs = (64, 1024, 16384)
    c.runs = ("dpo_exact",)
    c.run_specs = ml_collections.ConfigDict({"dpo_exact": run_spec("dpo", preferences="exact")})
    c.hparams = components.config_defaults(Knobs)
    return c


_TOP = tuple(defaults().keys())
_GROUPS = {"bandit": tuple(defaults().bandit.keys()), "policy": tuple(defaults().policy.keys())}


def _check_keys(config: ml_collections.ConfigDict) -> None:
    groups = {"": (config, _TOP), **{g: (config.get(g), keys) for g, keys in _GROUPS.items()}}
    for name, spec in (config.get("run_specs") or {}).items():
        groups[f"run_specs.{name}"] = (spec, RUN_SPEC_KEYS)
    for group, (node, allowed) in groups.items():
        prefix = f"{group}." if group else ""
        check(hasattr(node, "keys"), group, node, "a group of fields (a ConfigDict)")
        for key in node.keys():
            if key not in allowed:
                raise unknown_key(f"{prefix}{key}", allowed)
        missing = [key for key in allowed if key not in node]
        if missing:
            raise ConfigError(f"config.{prefix}{missing[0]}: missing; the keys here are "
                              f"{sorted(allowed)}.")


def _all_in(values: Any, low: float, high: float, high_open: bool = False,
            low_open: bool = False) -> bool:
    try:
        arr = np.asarray(values, np.float64)
    except (TypeError, ValueError):  # not numbers at all
        return False
    ok = np.isfinite(arr) & ((arr > low) if low_open else (arr >= low))
    ok &= (arr < high) if high_open else (arr <= high)
    return arr.size > 0 and bool(np.all(ok))


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects a bad bandit config with one message naming the key, its value and what it must
    be. Runs on the host before anything is traced or compiled."""
    _check_keys(config)
    b = config.bandit
    check(is_int(b.num_contexts, 1), "bandit.num_contexts", b.num_contexts, "an integer >= 1")
    check(is_int(b.num_actions, 2), "bandit.num_actions", b.num_actions, "an integer >= 2")
    for name in ("reward_scale", "ref_scale", "context_scale"):
        check(_all_in(b[name], 0.0, np.inf, high_open=True), f"bandit.{name}", b[name],
              "finite and >= 0")
    check(is_int(b.seed, 0), "bandit.seed", b.seed, "an integer >= 0")
    p = config.policy
    check_choice(p.kind, bandit_lib.POLICY_KINDS, "policy.kind")
    check_choice(p.activation, bandit_lib.ACTIVATIONS, "policy.activation")
    check(len(p.hidden) >= 1 and all(is_int(h, 1) for h in p.hidden), "policy.hidden", p.hidden,
          "a non-empty tuple of integers >= 1")
    check(is_int(config.seed, 0), "seed", config.seed, "an integer >= 0")
    check(is_int(config.num_seeds, 1), "num_seeds", config.num_seeds, "an integer >= 1")
    check(is_int(config.num_steps, 1), "num_steps", config.num_steps, "an integer >= 1")
    check(is_int(config.steps_per_eval, 1) and config.num_steps % config.steps_per_eval == 0,
          "steps_per_eval", config.steps_per_eval,
          f"an integer >= 1 dividing num_steps = {config.num_steps}")
    check_choice(config.lr_schedule, LR_SCHEDULES, "lr_schedule")
    check(is_int(config.batch_size, 1), "batch_size", config.batch_size, "an integer >= 1")
    check(is_int(config.offline_batch_size, 0), "offline_batch_size", config.offline_batch_size,
          "an integer >= 0 (0 = every pair each step)")
    check(is_int(config.group_size, 1), "group_size", config.group_size, "an integer >= 1")
    check(len(config.betas) >= 1 and _all_in(config.betas, 0.0, np.inf, low_open=True,
                                              high_open=True),
          "betas", config.betas, "a non-empty tuple of finite numbers > 0")
    check(len(config.num_pairs) >= 1 and all(is_int(n, 1) for n in config.num_pairs),
          "num_pairs", config.num_pairs, "a non-empty tuple of integers >= 1")
    components.validate(Knobs, config.hparams, "hparams")
    check(is_int(config.ppo_epochs, 1), "ppo_epochs", config.ppo_epochs, "an integer >= 1")
    check(len(config.runs) >= 1 and len(set(config.runs)) == len(config.runs), "runs",
          config.runs, "a non-empty tuple of distinct run names")
    for name in config.runs:
        check(name in config.run_specs, "runs", config.runs,
              f"names of config.run_specs ({', '.join(config.run_specs)}); {name!r} is not one")
        spec, key = config.run_specs[name], f"run_specs.{name}"
        METHODS.get(spec.method, f"{key}.method")
        preference.LOSSES.get(spec.preference_loss, f"{key}.preference_loss")
        check_choice(spec.preferences, PREFERENCE_MODES, f"{key}.preferences")
        check(_all_in(spec.label_noise, 0.0, 0.5, high_open=True), f"{key}.label_noise",
              spec.label_noise, "in [0, 0.5)")
        components.validate_groups(preference.LOSSES, spec.preference, f"{key}.preference",
                                   spec.preference_loss)


@dataclasses.dataclass(frozen=True)
class BanditShape:
    """The bandit of a spec (`kltrust.tasks.bandit.make`'s arguments)."""

    seed: int
    num_contexts: int
    num_actions: int
    reward_scale: float
    ref_scale: float
    context_scale: float


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run spec: the method, its preference loss and data, and that loss's knobs."""

    method: str
    preference_loss: str
    preferences: str
    label_noise: float
    preference_knobs: dict[str, float]  # of ``preference_loss`` only (the others are not read)


@dataclasses.dataclass(frozen=True)
class BanditSpec:
    """A checked bandit config as typed values (see `defaults` for each field's meaning).

    The dicts are read-only by convention: a spec is made once, by `spec_from_config`.
    """

    seed: int
    num_seeds: int
    bandit: BanditShape
    policy: PolicySpec
    num_steps: int
    steps_per_eval: int
    lr_schedule: str
    batch_size: int
    group_size: int
    ppo_epochs: int
    offline_batch_size: int
    betas: tuple[float, ...]
    num_pairs: tuple[int, ...]
    runs: tuple[str, ...]
    run_specs: dict[str, RunSpec]  # the runs of ``runs`` only
    hparams: dict[str, float]  # `Knobs`

    @property
    def seeds(self) -> np.ndarray:
        """The training seeds: seed, seed + 1, ... (num_seeds of them)."""
        return np.arange(self.seed, self.seed + self.num_seeds, dtype=np.int32)

    def to_json(self) -> dict:
        """The spec as JSON-able values (what a workdir's config.json records)."""
        return dataclasses.asdict(self)


def spec_from_config(config: ml_collections.ConfigDict) -> BanditSpec:
    """Validates ``config`` (a one-line `ConfigError` on bad input, before anything is traced)
    and returns it as a `BanditSpec`."""
    validate(config)
    b = config.bandit

    def run(name: str) -> RunSpec:
        spec = config.run_specs[name]
        return RunSpec(spec.method, spec.preference_loss, spec.preferences,
                       float(spec.label_noise), spec.preference[spec.preference_loss].to_dict())

    return BanditSpec(
        seed=int(config.seed), num_seeds=int(config.num_seeds),
        bandit=BanditShape(int(b.seed), int(b.num_contexts), int(b.num_actions),
                           float(b.reward_scale), float(b.ref_scale), float(b.context_scale)),
        policy=PolicySpec(kind=config.policy.kind, hidden=tuple(config.policy.hidden),
                          activation=config.policy.activation),
        num_steps=int(config.num_steps), steps_per_eval=int(config.steps_per_eval),
        lr_schedule=config.lr_schedule, batch_size=int(config.batch_size),
        group_size=int(config.group_size), ppo_epochs=int(config.ppo_epochs),
        offline_batch_size=int(config.offline_batch_size),
        betas=tuple(float(x) for x in config.betas),
        num_pairs=tuple(int(n) for n in config.num_pairs), runs=tuple(config.runs),
        run_specs={name: run(name) for name in config.runs},
        hparams=config.hparams.to_dict())


def setup_for(spec: BanditSpec, run: str, num_pairs: int | None = None) -> Setup:
    """The static ``Setup`` of run ``run`` of ``spec`` (``num_pairs`` for offline sampled
    pairs; the first of ``spec.num_pairs`` by default)."""
    run_spec = spec.run_specs[run]
    offline = METHODS.get(run_spec.method).offline_pairs
    return Setup(
        method=run_spec.method,
        preference_loss=run_spec.preference_loss,
        preferences=run_spec.preferences,
        num_pairs=int(num_pairs if num_pairs is not None else spec.num_pairs[0]),
        batch_size=spec.offline_batch_size if offline else spec.batch_size,
        group_size=spec.group_size,
        ppo_epochs=spec.ppo_epochs,
        num_steps=spec.num_steps,
        steps_per_eval=spec.steps_per_eval,
        lr_schedule=spec.lr_schedule,
        policy=spec.policy,
    )


def hparams_for(spec: BanditSpec, run: str) -> HParams:
    """The ``HParams`` of run ``run``, one entry per β of ``spec.betas`` (shape [len(betas)])."""
    run_spec = spec.run_specs[run]
    return HParams.create(
        beta=np.asarray(spec.betas, np.float32),
        label_noise=run_spec.label_noise,
        preference_loss=run_spec.preference_loss,
        preference_knobs=dict(run_spec.preference_knobs),
        **spec.hparams,
    )


def make_bandit(spec: BanditSpec) -> Bandit:
    """The bandit of ``spec.bandit``."""
    b = spec.bandit
    return bandit_lib.make(b.seed, b.num_contexts, b.num_actions, b.reward_scale, b.ref_scale,
                           b.context_scale)
