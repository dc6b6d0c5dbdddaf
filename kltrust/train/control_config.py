"""The control programs' configuration layer: where PPO and TRPO on gymnax or brax environments
read a config, once.

A run's ml_collections config (a preset from configs/ppo.py or configs/trpo.py, with flags) is
turned into a typed, frozen `kltrust.train.loop.ControlSpec` at the boundary (`spec_from_config`:
validate first, then build). Library code below (`loop.train`, ``make_trainer``, the programs'
``Trainer``) takes that spec, a program's ``Static`` and ``HParams``, never the config.

Everything here reads the config: the defaults every preset starts from (`ppo_defaults`,
`trpo_defaults`; the hyperparameter groups derived from the programs' knob declarations,
`kltrust.components.config_defaults`), `validate` (one `ConfigError` naming the key, its value
and what is allowed, before anything is compiled) and the spec building.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from kltrust import components, controllers, envs, tracking
from kltrust.errors import check, check_choice, is_int
from kltrust.objectives import ppo as ppo_objective
from kltrust.objectives import trpo as trpo_objective
from kltrust.train import loop, ppo, trpo
from kltrust.train.config_checks import (check_finite, check_keys, check_knobs, check_range,
                                         inf_fields, mesh_batch_shards, variant_error)

ALGORITHMS = ("ppo", "trpo")


def control_defaults(algorithm: str, **fields: Any) -> ml_collections.ConfigDict:
    """The fields every control program's config has (run shape, model, checkpoints, mesh,
    guards), with ``fields`` overriding or adding; `ppo_defaults` and `trpo_defaults` build on
    it."""
    config = ml_collections.ConfigDict()
    config.algorithm = algorithm
    config.env_name = "CartPole-v1"
    config.seed = 0
    config.num_seeds = 1  # seeds seed, seed+1, … run vmapped in one program
    config.num_envs = 4
    config.num_steps = 128
    config.total_timesteps = 500_000
    config.updates_per_chunk = 50  # updates per compiled call; metrics/checkpoints between calls
    config.model = ml_collections.ConfigDict(dict(hidden=(64, 64), activation="tanh"))
    # Running mean/variance normalisation of the observations (kltrust.envs.normalize), clipped
    # to ±hparams.obs_clip: the PPO paper's MuJoCo setting.
    config.normalize_observations = False
    config.checkpoint_every_chunks = 1
    config.keep_checkpoints = 2
    # Devices: runs (a sweep's run axis) × data (the batch) × fsdp (parameters); -1 = the rest.
    # kltrust.sharding explains the axes; --config.mesh.runs=8 spreads 8 seeds over 8 devices.
    config.mesh = ml_collections.ConfigDict(dict(runs=1, data=-1, fsdp=1))
    # Guards: a non-finite update is skipped; this many in a row stop the run (kltrust.guards).
    config.guards = ml_collections.ConfigDict(dict(max_nonfinite_updates=10))
    # Where scalars go besides metrics.jsonl: TensorBoard always, W&B when
    # logging.wandb.enabled (kltrust.tracking; not part of the config a workdir is claimed with).
    config.logging = tracking.defaults()
    for key, value in fields.items():
        config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return config


def num_updates(config: ml_collections.ConfigDict) -> int:
    """How many updates a control config runs: total_timesteps // (num_envs * num_steps)."""
    return config.total_timesteps // (config.num_envs * config.num_steps)


def validate_run_shape(config: ml_collections.ConfigDict, batch_shards: int | None = None) -> None:
    """Checks the fields every control config has: env, batch shape, chunking, seeds, model, mesh,
    logging.

    ``batch_shards`` is how many pieces the mesh cuts the environment batch into (data × fsdp);
    by default it comes from ``config.mesh`` on this process's devices (checked too).
    """
    if batch_shards is None:
        batch_shards = mesh_batch_shards(config)
    envs.check_name(config.env_name, "env_name")  # a brax name: imports brax, loads its model
    for key in ("num_envs", "num_steps", "updates_per_chunk", "checkpoint_every_chunks",
                "keep_checkpoints"):
        check(is_int(config[key], 1), key, config[key], "an integer >= 1")
    batch = config.num_envs * config.num_steps
    check(config.num_envs % batch_shards == 0, "num_envs", config.num_envs,
          f"divisible by the mesh's batch shards, data × fsdp = {batch_shards} (or change "
          "config.mesh)")
    check(config.total_timesteps >= batch, "total_timesteps", config.total_timesteps,
          f">= num_envs * num_steps = {batch}")
    updates = num_updates(config)
    if updates % config.updates_per_chunk:
        divisors = [d for d in range(1, updates + 1) if updates % d == 0]
        near = sorted(sorted(divisors, key=lambda d: abs(d - config.updates_per_chunk))[:3])
        check(False, "updates_per_chunk", config.updates_per_chunk,
              f"a divisor of the number of updates, {updates} = total_timesteps // "
              f"(num_envs * num_steps); nearest divisors: {near}")
    check(config.num_seeds >= 1, "num_seeds", config.num_seeds, ">= 1")
    check(isinstance(config.normalize_observations, bool), "normalize_observations",
          config.normalize_observations, "True or False")
    limit = config.guards.max_nonfinite_updates
    check(isinstance(limit, int) and limit >= 1, "guards.max_nonfinite_updates", limit,
          "an integer >= 1")
    check_choice(config.model.activation, ("tanh", "relu"), "model.activation")
    tracking.validate(config)
    check(len(config.model.hidden) >= 1 and all(is_int(h, 1) for h in config.model.hidden),
          "model.hidden", config.model.hidden, "a non-empty tuple of integer widths >= 1")


# ---------------------------------------------------------------- PPO


def ppo_defaults() -> ml_collections.ConfigDict:
    """Every field a ppo config has, with its default. The presets (configs/ppo.py) start from
    these, and `validate` refuses a key that is not here or a value of another type. The
    ``hparams`` group is `ppo.HParams`'s declared knobs (every controller's group included)."""
    return control_defaults(
        "ppo",
        num_epochs=4,
        num_minibatches=4,
        anneal_lr=True,
        early_stop=False,  # stop the epoch loop once KL(π_old ‖ π_θ) > 1.5 · target_kl
        variant=dict(clip=True, kl_penalty="none", kl_anchor="old", kl_estimator="exact",
                     normalize_advantages=True, clip_value=False),
        hparams=components.config_defaults(ppo.HParams),
    )


def ppo_validate(config: ml_collections.ConfigDict, batch_shards: int | None = None) -> None:
    """Rejects a bad ppo config with one message naming the key, its value and the allowed range.

    Hyperparameters may be scalars or arrays (a sweep); their ranges are `ppo.HParams`'s knobs.
    """
    check_keys(config, ppo_defaults())
    validate_run_shape(config, batch_shards)
    for key in ("num_epochs", "num_minibatches"):
        check(isinstance(config[key], int) and config[key] >= 1, key, config[key],
              "an integer >= 1")
    batch = config.num_envs * config.num_steps
    check(batch % config.num_minibatches == 0, "num_minibatches", config.num_minibatches,
          f"a divisor of num_envs * num_steps = {batch}")
    variant = _variant(ppo_objective.Variant, config)
    penalised = variant.kl_penalty != "none"
    # Multiplicative rules cannot leave β = 0: β's interval is then open at 0.
    positive = penalised and controllers.get(variant.kl_penalty).beta_positive
    unread = ppo.unread_knobs(variant, config.early_stop, config.normalize_observations)
    check_knobs(ppo.HParams, config.hparams, unread=unread + (("beta",) if positive else ()))
    if positive:
        check_range(config.hparams, "beta", 0.0, low_open=True)
    # Every group's keys; the chosen controller's values against its knobs' ranges.
    components.validate_groups(controllers.REGISTRY, config.hparams.controller,
                               "hparams.controller",
                               chosen=variant.kl_penalty if penalised else None)
    check_finite(config.hparams, allow_inf=inf_fields(ppo.HParams))  # the unread ones too


def ppo_static(config: ml_collections.ConfigDict) -> ppo.Static:
    """The static part of a (validated) ppo config."""
    return ppo.Static(
        env_name=config.env_name,
        num_envs=config.num_envs,
        num_steps=config.num_steps,
        num_epochs=config.num_epochs,
        num_minibatches=config.num_minibatches,
        num_updates=num_updates(config),
        updates_per_chunk=config.updates_per_chunk,
        hidden=tuple(config.model.hidden),
        activation=config.model.activation,
        anneal_lr=config.anneal_lr,
        early_stop=config.early_stop,
        variant=_variant(ppo_objective.Variant, config),
        normalize_observations=config.normalize_observations,
    )


def ppo_hparams(config: ml_collections.ConfigDict) -> ppo.HParams:
    """``config.hparams`` of a (validated) ppo config as `ppo.HParams` (float32 arrays), with the
    knobs of the controller ``config.variant.kl_penalty`` chooses."""
    kind = _variant(ppo_objective.Variant, config).controller
    return components.from_config(ppo.HParams, config.hparams, chosen={"controller": kind})


# ---------------------------------------------------------------- TRPO


def trpo_defaults() -> ml_collections.ConfigDict:
    """Every field a trpo config has, with its default. The presets (configs/trpo.py) start from
    these, and `validate` refuses a key that is not here or a value of another type. The
    ``hparams`` group is `trpo.HParams`'s declared knobs."""
    return control_defaults(
        "trpo",
        num_steps=512,
        total_timesteps=499_712,
        updates_per_chunk=61,
        cg_iters=10,
        max_backtracks=10,
        fvp_subsample=1,  # Fisher-vector products on every k-th state of the batch
        vf_epochs=5,
        vf_minibatches=8,
        # recovery: with kl_anchor="reference", step back toward the reference when its budget is
        # exceeded (kltrust.objectives.trpo, Achiam et al. 2017).
        variant=dict(line_search=True, kl_anchor="old", normalize_advantages=True, recovery=False),
        hparams=components.config_defaults(trpo.HParams),
    )


def trpo_validate(config: ml_collections.ConfigDict, batch_shards: int | None = None) -> None:
    """Rejects a bad trpo config with one message naming the key, its value and the allowed range.

    Hyperparameters may be scalars or arrays (a sweep); their ranges are `trpo.HParams`'s knobs.
    """
    check_keys(config, trpo_defaults())
    validate_run_shape(config, batch_shards)
    for key in ("cg_iters", "vf_epochs", "vf_minibatches", "fvp_subsample"):
        check(isinstance(config[key], int) and config[key] >= 1, key, config[key],
              "an integer >= 1")
    check(isinstance(config.max_backtracks, int) and config.max_backtracks >= 1,
          "max_backtracks", config.max_backtracks, "an integer >= 1")
    batch = config.num_envs * config.num_steps
    check(batch % config.vf_minibatches == 0, "vf_minibatches", config.vf_minibatches,
          f"a divisor of num_envs * num_steps = {batch}")
    check(config.fvp_subsample <= batch, "fvp_subsample", config.fvp_subsample,
          f"<= num_envs * num_steps = {batch}")
    variant = _variant(trpo_objective.Variant, config)
    check_knobs(trpo.HParams, config.hparams,
                unread=trpo.unread_knobs(variant, config.normalize_observations))
    check_finite(config.hparams, allow_inf=inf_fields(trpo.HParams))  # the unread ones too


def trpo_static(config: ml_collections.ConfigDict) -> trpo.Static:
    """The static part of a (validated) trpo config."""
    return trpo.Static(
        env_name=config.env_name,
        num_envs=config.num_envs,
        num_steps=config.num_steps,
        num_updates=num_updates(config),
        updates_per_chunk=config.updates_per_chunk,
        hidden=tuple(config.model.hidden),
        activation=config.model.activation,
        cg_iters=config.cg_iters,
        max_backtracks=config.max_backtracks,
        fvp_subsample=config.fvp_subsample,
        vf_epochs=config.vf_epochs,
        vf_minibatches=config.vf_minibatches,
        variant=_variant(trpo_objective.Variant, config),
        normalize_observations=config.normalize_observations,
    )


def trpo_hparams(config: ml_collections.ConfigDict) -> trpo.HParams:
    """``config.hparams`` of a (validated) trpo config as `trpo.HParams` (float32 arrays)."""
    return components.from_config(trpo.HParams, config.hparams)


# ---------------------------------------------------------------- by algorithm; the spec


@dataclasses.dataclass(frozen=True)
class _Layer:
    defaults: Callable[[], ml_collections.ConfigDict]
    validate: Callable[[ml_collections.ConfigDict, int | None], None]
    static: Callable[[ml_collections.ConfigDict], Any]
    hparams: Callable[[ml_collections.ConfigDict], Any]


_LAYERS = {"ppo": _Layer(ppo_defaults, ppo_validate, ppo_static, ppo_hparams),
           "trpo": _Layer(trpo_defaults, trpo_validate, trpo_static, trpo_hparams)}


def algorithm(config: ml_collections.ConfigDict) -> str:
    """``config.algorithm`` (ppo if absent); a `ConfigError` for anything but ppo and trpo."""
    name = config.get("algorithm", "ppo")
    check_choice(name, ALGORITHMS, "algorithm")
    return name


def defaults(name: str) -> ml_collections.ConfigDict:
    """The defaults of algorithm ``name`` (`ppo_defaults` or `trpo_defaults`)."""
    check_choice(name, ALGORITHMS, "algorithm")
    return _LAYERS[name].defaults()


def validate(config: ml_collections.ConfigDict, batch_shards: int | None = None) -> None:
    """Rejects a bad control config (ppo or trpo, by ``config.algorithm``) with one message.

    ``batch_shards``: how many pieces the mesh cuts the batch into; by default from
    ``config.mesh`` on this process's devices (checked too).
    """
    _LAYERS[algorithm(config)].validate(config, batch_shards)


def hparams(config: ml_collections.ConfigDict) -> Any:
    """The program's ``HParams`` of a (validated) control config: what a sweep stacks per run."""
    return _LAYERS[algorithm(config)].hparams(config)


def spec_from_config(config: ml_collections.ConfigDict,
                     batch_shards: int | None = None) -> loop.ControlSpec:
    """Validates ``config`` (a `ConfigError` naming the key, before anything compiles) and reads
    it, once, into the typed spec `loop.train` runs."""
    validate(config, batch_shards)
    name = algorithm(config)
    layer = _LAYERS[name]
    static = layer.static(config)
    return loop.ControlSpec(
        algorithm=name,
        static=static,
        hparams=layer.hparams(config),
        seed=int(config.seed),
        num_seeds=int(config.num_seeds),
        mesh=tuple((config.mesh.to_dict() if "mesh" in config else {}).items()),
        max_nonfinite_updates=config.guards.max_nonfinite_updates,
        checkpoint_every_chunks=config.checkpoint_every_chunks,
        keep_checkpoints=config.keep_checkpoints,
        # What the workdir claim records and compares (config.json): unchanged by the spec, and
        # by the logging options (switching W&B on does not make a run another config).
        config_json=tracking.identity_json(config) + "\n",
        title=f"{static.env_name} {name} {_describe(static.variant)}",
        wandb=tracking.spec_from_config(config),
    )


def _variant(cls: type, config: ml_collections.ConfigDict) -> Any:
    """The program's ``Variant`` of ``config.variant``; its refusal as a `ConfigError`."""
    try:
        return cls(**config.variant.to_dict())
    except (TypeError, ValueError) as error:
        raise variant_error(error) from None


def _describe(variant: Any) -> str:
    # The optional extras (value clipping, TRPO's recovery) are named only when switched on.
    return " ".join(f"{f.name}={getattr(variant, f.name)}" for f in dataclasses.fields(variant)
                    if f.name != "normalize_advantages"
                    and not (f.name in ("clip_value", "recovery") and not getattr(variant, f.name)))
