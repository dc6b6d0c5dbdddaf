"""What every control training program shares: environments, the actor-critic, config checks.

Kept here so that PPO and TRPO build the same model on the same environment and reject bad configs
with the same words (``config.KEY = VALUE: must be ...``, a `ConfigError`), before anything is
compiled. The message format and the error type live in `kltrust.errors`.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kltrust import components, sharding
from kltrust.errors import ConfigError, check, check_choice, did_you_mean, is_int, unknown_key
from kltrust.models import ActorCritic

ENV_NAMES = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0")


def model_and_env(env_name: str, hidden: tuple[int, ...], activation: str):
    """(ActorCritic, gymnax env, env params) with a categorical or Gaussian head to match the env."""
    env, env_params = gymnax.make(env_name)
    space = env.action_space(env_params)
    discrete = isinstance(space, gymnax.environments.spaces.Discrete)
    action_dim = space.n if discrete else int(np.prod(space.shape))
    return ActorCritic(action_dim, discrete, hidden, activation), env, env_params


def random_policy_score(env_name: str, num_episodes: int = 100, seed: int = 0) -> float:
    """Mean return of ``num_episodes`` episodes of uniformly random actions.

    The zero of the PPO paper's normalised score. Each episode runs in its own environment for
    the time limit; rewards after its first ``done`` are masked out (gymnax auto-resets).
    """
    env, env_params = gymnax.make(env_name)
    space = env.action_space(env_params)

    def episode(key: jax.Array) -> jax.Array:
        key, reset_key = jax.random.split(key)
        _, state = env.reset(reset_key, env_params)

        def step(carry, step_key):
            state, total, running = carry
            action_key, env_key = jax.random.split(step_key)
            _, state, reward, terminated, truncated, _ = env.step(
                env_key, state, space.sample(action_key), env_params)
            done = jnp.logical_or(terminated, truncated)
            return (state, total + running * reward, running * (1.0 - done)), None

        keys = jax.random.split(key, env_params.max_steps_in_episode)
        (_, total, _), _ = jax.lax.scan(step, (state, 0.0, 1.0), keys)
        return total

    keys = jax.random.split(jax.random.PRNGKey(seed), num_episodes)
    return float(jnp.mean(jax.jit(jax.vmap(episode))(keys)))


def control_defaults(algorithm: str, **fields: Any) -> ml_collections.ConfigDict:
    """The fields every control program's config has (run shape, model, checkpoints, mesh,
    guards), with ``fields`` overriding or adding; `ppo.defaults` and `trpo.defaults` build on it."""
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
    config.checkpoint_every_chunks = 1
    config.keep_checkpoints = 2
    # Devices: runs (a sweep's run axis) × data (the batch) × fsdp (parameters); -1 = the rest.
    # kltrust.sharding explains the axes; --config.mesh.runs=8 spreads 8 seeds over 8 devices.
    config.mesh = ml_collections.ConfigDict(dict(runs=1, data=-1, fsdp=1))
    # Guards: a non-finite update is skipped; this many in a row stop the run (kltrust.guards).
    config.guards = ml_collections.ConfigDict(dict(max_nonfinite_updates=10))
    for key, value in fields.items():
        config[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    return config


def hparams_from_config(cls: type, hparams: ml_collections.ConfigDict,
                        **groups: tuple[components.Registry, str]) -> Any:
    """Builds the flax dataclass ``cls`` from ``hparams``, every field a float32 array, except a
    field named in ``groups`` (``name=(registry, chosen)``): it holds the knobs of component
    ``chosen`` from the knob group ``hparams[name]`` (`components.group_defaults`), e.g.
    ``controller=(controllers.REGISTRY, "pid")`` for ``hparams.controller.pid``."""
    fields = {}
    for field in dataclasses.fields(cls):
        if field.name in groups:
            registry, chosen = groups[field.name]
            fields[field.name] = components.chosen_hparams(registry, hparams.get(field.name),
                                                           chosen)
        else:
            fields[field.name] = jnp.asarray(hparams[field.name], jnp.float32)
    return cls(**fields)


def inf_knobs(registry: components.Registry, group: str) -> tuple[str, ...]:
    """``GROUP.COMPONENT.KNOB`` for every knob of ``registry``'s components that allows +inf: what
    `check_finite` must let through in a `components.group_defaults` group named ``group``."""
    return tuple(f"{group}.{name}.{knob}" for name, entry in registry.items()
                 for knob, spec in components.knobs(entry.hparams).items() if spec.allow_inf)


def variant_error(error: Exception) -> ConfigError:
    """A program's ``Variant`` refusing a field (``variant.NAME must be one of (...), got 'X'.``)
    as a `ConfigError` naming ``config.variant.NAME``, with a did-you-mean for a near miss."""
    message = f"config.{' '.join(str(error).split())}"
    match = re.search(r"must be one of (\(.*\)), got ('[^']*')\.$", message)
    if match:
        choices, value = ast.literal_eval(match[1]), ast.literal_eval(match[2])
        hint = did_you_mean(value, choices).strip()
        if hint:
            message = f"{message[:-1]}; {hint}"
    return ConfigError(message)


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict,
               path: str = "") -> None:
    """Refuses keys that ``reference`` (a program's defaults) does not have and values of another
    type than the default's, naming the key: a typo in a config file must not be silently ignored.

    Integers are accepted where a float is expected; under ``hparams`` an array or sequence of
    numbers is accepted too (a sweep's values).
    """
    for key in config.keys():
        name = f"{path}{key}"
        if key not in reference:
            raise unknown_key(name, reference.keys())
        value, default = config[key], reference[key]
        if isinstance(default, ml_collections.ConfigDict):
            check(isinstance(value, ml_collections.ConfigDict), name, value,
                  "a group of fields (a ConfigDict)")
            check_keys(value, default, f"{name}.")
        elif default is not None and not _same_kind(value, default, in_hparams="hparams" in path):
            check(False, name, value, f"of type {type(default).__name__} (like its default "
                  f"{default!r})")


def _same_kind(value: Any, default: Any, in_hparams: bool) -> bool:
    number = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(  # noqa: E731
        v, (bool, np.bool_))
    if isinstance(default, bool):
        return isinstance(value, (bool, np.bool_))
    if isinstance(default, int):
        return number(value) and float(value).is_integer() and not isinstance(value, float)
    if isinstance(default, float):
        if in_hparams and isinstance(value, (tuple, list, np.ndarray, jax.Array)):
            return all(number(v) for v in np.ravel(np.asarray(value)).tolist())
        return number(value)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(default))


def check_range(hparams: ml_collections.ConfigDict, name: str, low: float, high: float = np.inf,
                low_open: bool = False, high_open: bool = False, prefix: str = "hparams",
                allow_inf: bool = False) -> None:
    """Checks ``hparams[name]`` (a scalar or a sweep's array) lies in the interval, else raises
    a `ConfigError` naming ``config.{prefix}.{name}``.

    Every value must be a finite number: nan and ±inf are refused (an unbounded interval is open at
    inf), unless ``allow_inf``, which lets +inf through where ``high`` is inf (the interval then
    prints as ``[low, inf]``).
    """
    v = _numbers(hparams, name, prefix)
    top_open = high_open or (high == np.inf and not allow_inf)
    ok = (v > low if low_open else v >= low) & (v < high if top_open else v <= high)
    if not np.all(ok):  # nan fails every comparison
        bad = _first_bad(v, ok)
        lo = "(" if low_open else "["
        hi = ")" if top_open else "]"
        raise ConfigError(f"config.{prefix}.{name} = {bad!r}: must be in {lo}{low}, {high}{hi}.")


def _numbers(hparams: ml_collections.ConfigDict, name: str, prefix: str) -> np.ndarray:
    """``hparams[name]`` as float64 (a scalar or a sweep's array); a `ConfigError` if not numbers."""
    try:
        return np.asarray(hparams[name], np.float64)
    except (TypeError, ValueError):
        check(False, f"{prefix}.{name}", hparams[name], "a number")


def _first_bad(v: np.ndarray, ok: np.ndarray) -> float:
    """The first value failing ``ok`` (a sweep's array names its first bad entry)."""
    return float(v[~ok].flat[0] if v.ndim else v)


def check_finite(hparams: ml_collections.ConfigDict, prefix: str = "hparams",
                 allow_inf: tuple[str, ...] = ()) -> None:
    """Refuses nan and ±inf in every field of ``hparams`` (scalars or a sweep's arrays), also in
    those the config's variant does not read, and in every nested knob group (e.g.
    ``hparams.controller.pid``, whichever controller is chosen). ``allow_inf`` names fields, dotted
    below ``hparams``, where +inf is meant. Call after the range checks, whose messages say more."""
    for name in hparams.keys():
        if isinstance(hparams[name], (ml_collections.ConfigDict, Mapping)):
            inner = tuple(a.split(".", 1)[1] for a in allow_inf if a.startswith(f"{name}."))
            check_finite(hparams[name], f"{prefix}.{name}", inner)
            continue
        v = _numbers(hparams, name, prefix)
        ok = np.isfinite(v) | ((v == np.inf) if name in allow_inf else False)
        if not np.all(ok):
            bad = _first_bad(v, ok)
            allowed = "a finite number or inf" if name in allow_inf else "a finite number"
            raise ConfigError(f"config.{prefix}.{name} = {bad!r}: must be {allowed}.")


def num_updates(config: ml_collections.ConfigDict) -> int:
    """How many updates a control config runs: total_timesteps // (num_envs * num_steps)."""
    return config.total_timesteps // (config.num_envs * config.num_steps)


def validate_run_shape(config: ml_collections.ConfigDict, batch_shards: int | None = None) -> None:
    """Checks the fields every control config has: env, batch shape, chunking, seeds, model, mesh.

    ``batch_shards`` is how many pieces the mesh cuts the environment batch into (data × fsdp);
    by default it comes from ``config.mesh`` on this process's devices (checked too).
    """
    if batch_shards is None:
        batch_shards = mesh_batch_shards(config)
    check_choice(config.env_name, ENV_NAMES, "env_name")
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
    limit = config.guards.max_nonfinite_updates
    check(isinstance(limit, int) and limit >= 1, "guards.max_nonfinite_updates", limit,
          "an integer >= 1")
    check_choice(config.model.activation, ("tanh", "relu"), "model.activation")
    check(len(config.model.hidden) >= 1 and all(is_int(h, 1) for h in config.model.hidden),
          "model.hidden", config.model.hidden, "a non-empty tuple of integer widths >= 1")


def mesh_batch_shards(config: ml_collections.ConfigDict) -> int:
    """How many pieces ``config.mesh`` cuts a batch into on this process's devices (data × fsdp);
    a bad mesh is a `ConfigError` naming ``config.mesh``."""
    shape = sharding.mesh_shape(config.mesh.to_dict() if "mesh" in config else {},
                                jax.device_count())
    return shape[sharding.DATA_AXIS] * shape[sharding.FSDP_AXIS]


def initial_params(model: Any, env: Any, env_params: Any, seeds: jax.Array) -> Any:
    """The model's initial parameters for each seed (leading axis = seed), computed *eagerly*.

    Not inside the jitted init on purpose: flax's orthogonal initialiser calls LAPACK's QR, and
    jaxlib 0.10.2's CPU LAPACK kernels deadlock when one compiled program runs as many of them at
    once as XLA's intra-op pool has threads (each blocks a pool thread waiting for batch chunks
    queued on the same exhausted pool; 2 threads on a 2-core machine). Eagerly, one QR runs at a
    time. The values are bit-identical to the jitted ones (checked). The key split matches the
    training programs' ``init``: PRNGKey(seed) → (run key, params key, env key).
    """
    obs = jnp.zeros((1,) + tuple(env.observation_space(env_params).shape))

    def one(seed: jax.Array) -> Any:
        _, key_params, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
        return model.init(key_params, obs)

    return jax.vmap(one)(jnp.asarray(seeds))


@dataclasses.dataclass(frozen=True)
class ControlTrainer:
    """What PPO's and TRPO's trainers share; subclasses add ``init(seed, hp, params)`` and ``update``.

    ``static`` must carry ``env_name``, ``hidden``, ``activation`` and ``updates_per_chunk``.
    """

    static: Any
    mesh: jax.sharding.Mesh

    @functools.cached_property
    def _model_and_env(self):
        return model_and_env(self.static.env_name, self.static.hidden, self.static.activation)

    def apply_fn(self, params: Any, obs: jax.Array):
        model, _, _ = self._model_and_env
        return model.apply(params, obs)

    def initial_params(self, seeds: jax.Array) -> Any:
        """Initial parameters per seed (leading axis = seed); eager, see `initial_params`."""
        return initial_params(*self._model_and_env, seeds)

    def run_chunk(self, state: Any, hp: Any) -> tuple[Any, dict[str, jax.Array]]:
        """``updates_per_chunk`` updates in one `lax.scan`; metrics stacked along a leading axis."""
        return jax.lax.scan(lambda s, _: self.update(s, hp), state, None,
                            length=self.static.updates_per_chunk)


def compile_run(trainer: ControlTrainer) -> tuple[Callable, Callable]:
    """Jitted (init, run_chunk) over a leading run axis (seeds × hyperparameters).

    Inputs: seeds [R] int32 and HParams with leaves [R], R a multiple of the mesh's run axis. The
    run axis is split over ``runs``, the runner's environment axis over data × fsdp, and parameters
    follow `sharding.param_constraint` (replicated unless fsdp > 1).
    Parameters are initialised eagerly first (`initial_params`), then passed into the jitted init.
    """
    init_state = jax.jit(sharding.vmap_runs(trainer.init))

    def init(seeds: jax.Array, hparams: Any) -> Any:
        return init_state(seeds, hparams, trainer.initial_params(seeds))

    return init, jax.jit(sharding.vmap_runs(trainer.run_chunk))
