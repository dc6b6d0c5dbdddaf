"""What every control training program shares: environments, the actor-critic, the compiled run.

Kept here so that PPO and TRPO build the same model on the same environment. This is library code
below the config boundary: it takes specs (a program's ``Static``, a mesh), never the config; the
config layer is `kltrust.train.control_config` (and the shared checks, `config_checks`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kltrust import envs, sharding
from gymnax.environments import spaces as gymnax_spaces  # after kltrust.envs: see envs.lazy_imports
from kltrust.errors import check
from kltrust.envs.normalize import RunningStats
from kltrust.models import ActorCritic

# The gymnax names; `kltrust.envs` holds every family (brax's "brax:NAME" too) and checks names.
ENV_NAMES = envs.GYMNAX_NAMES


def model_and_env(env_name: str, hidden: tuple[int, ...], activation: str):
    """(ActorCritic, env, env params) with a categorical or Gaussian head to match the env; the
    env has gymnax's interface whatever its family (`kltrust.envs.make`)."""
    env, env_params = envs.make(env_name)
    space = env.action_space(env_params)
    discrete = isinstance(space, gymnax_spaces.Discrete)
    action_dim = space.n if discrete else int(np.prod(space.shape))
    return ActorCritic(action_dim, discrete, hidden, activation), env, env_params


def random_policy_score(env_name: str, num_episodes: int = 100, seed: int = 0) -> float:
    """Mean return of ``num_episodes`` episodes of uniformly random actions.

    The zero of the PPO paper's normalised score. Each episode runs in its own environment for
    the time limit; rewards after its first ``done`` are masked out (gymnax auto-resets). Any
    name `kltrust.envs.make` knows (a brax env samples its Box [-1, 1]).
    """
    env, env_params = envs.make(env_name)
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


def check_fits_mesh(num_envs: int, mesh: jax.sharding.Mesh) -> None:
    """Refuses a batch of ``num_envs`` environments the mesh cannot split evenly, in the words the
    config check uses for ``config.mesh`` (a trainer may be given another mesh than its spec's)."""
    shards = sharding.batch_shards(mesh)
    check(num_envs % shards == 0, "num_envs", num_envs,
          f"divisible by the mesh's batch shards, data × fsdp = {shards} (or change config.mesh)")


@dataclasses.dataclass(frozen=True)
class ControlTrainer:
    """What PPO's and TRPO's trainers share; subclasses add ``init(seed, hp, params)`` and ``update``.

    ``static`` must carry ``env_name``, ``hidden``, ``activation``, ``updates_per_chunk`` and
    ``normalize_observations``.
    """

    static: Any
    mesh: jax.sharding.Mesh

    @functools.cached_property
    def _model_and_env(self):
        return model_and_env(self.static.env_name, self.static.hidden, self.static.activation)

    def apply_fn(self, params: Any, obs: jax.Array):
        """The actor-critic's outputs (action distribution parameters and value) at ``obs``."""
        model, _, _ = self._model_and_env
        return model.apply(params, obs)

    def init_obs_stats(self) -> RunningStats | None:
        """Empty running observation statistics, or None when observations are not normalised
        (the train state then holds no statistics and the program is unchanged)."""
        if not self.static.normalize_observations:
            return None
        _, env, env_params = self._model_and_env
        return RunningStats.init(tuple(env.observation_space(env_params).shape))

    @staticmethod
    def observe(stats: RunningStats | None, obs: jax.Array, clip: jax.Array) -> jax.Array:
        """What the networks see of ``obs``: normalised by ``stats`` (`kltrust.envs.normalize`),
        or ``obs`` itself when ``stats`` is None."""
        return obs if stats is None else stats.normalize(obs, clip)

    @staticmethod
    def absorb(stats: RunningStats | None, raw_obs: jax.Array, clip: jax.Array
               ) -> tuple[jax.Array, RunningStats | None]:
        """(``raw_obs`` as the behaviour policy saw them, the statistics with them merged in):
        an update optimises on the former; the next rollout normalises with the latter."""
        if stats is None:
            return raw_obs, None
        return stats.normalize(raw_obs, clip), stats.update(raw_obs)

    def observed_policy(self, stats: RunningStats | None, clip: jax.Array) -> Callable:
        """``apply_fn`` behind `observe`: the policy the rollout samples from raw observations."""
        return lambda params, obs: self.apply_fn(params, self.observe(stats, obs, clip))

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
    # The model and environment are built here, outside any trace: `loop.init_and_compile` traces
    # ``init`` (jax.eval_shape) before or while running it, and an environment that makes arrays
    # when built (brax's loads its MJCF model into jnp arrays) would otherwise keep tracers.
    trainer._model_and_env  # noqa: B018  (a cached property: this builds it)
    vmapped_init = sharding.vmap_runs(trainer.init)
    if trainer.mesh.shape[sharding.RUN_AXIS] == 1:
        init_state = jax.jit(vmapped_init)
    else:
        # Leaves nothing inside constrains (the optimisers' step counters) would leave init
        # replicated but come out of a chunk split over ``runs``; placed there from the start,
        # the chunk compiled for init's output takes its own output (`loop.init_and_compile`
        # then compiles once, not twice). One device: the program is left as it was.
        init_state = jax.jit(lambda *a: sharding.split_runs(vmapped_init(*a), trainer.mesh))

    def init(seeds: jax.Array, hparams: Any) -> Any:
        return init_state(seeds, hparams, trainer.initial_params(seeds))

    return init, jax.jit(sharding.vmap_runs(trainer.run_chunk))
