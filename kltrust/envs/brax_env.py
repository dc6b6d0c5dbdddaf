"""Brax environments behind the gymnax interface the control rollout uses (`kltrust.rollout`).

`BraxEnv` wraps a *raw* brax environment (``brax.envs.get_environment(name, backend=...)``), not
brax's training wrappers, because those break what `kltrust.rollout.rollout` relies on:
brax's ``AutoResetWrapper`` resets every environment to the one state cached at the first reset
(every episode would start from the same initial state) and overwrites the pre-reset observation,
so a truncated episode could not be bootstrapped from V(final observation). Here instead:

- ``reset(key, params) -> (obs, state)`` draws a fresh initial state from its own key;
- ``step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``
  auto-resets like gymnax 1.x: the state after a finished episode is a fresh reset drawn from
  ``key``, and ``info["final_observation"]`` is the observation *before* that reset;
- ``terminated`` is brax's ``done`` (a true terminal state, e.g. the pendulum fell: worth 0);
  ``truncated`` is the time limit, counted by the adapter's own step counter
  (``params.max_steps_in_episode``, 1000 by default as in the MuJoCo tasks of the PPO paper), and
  is never also terminated, so the rollout bootstraps it from V(final observation);
- actions live in the Box [-1, 1]^action_size (brax scales them to the actuators' ranges); an
  unbounded Gaussian sample is clipped to it before brax sees it, as SB3 and the PPO paper's
  baselines do (the log-probability stays that of the unclipped sample);
- observations and rewards are float32.

Known snag, shimmed: brax's ``swimmer`` exists only on the ``generalized`` backend, and its fluid
model (``brax/fluid.py``, brax 0.14.2) calls ``jp.clip(..., a_min=...)``, a keyword jax 0.10
removed. `import_brax` points that one module's ``jp`` at `_ClipCompat`, which maps
``a_min``/``a_max`` to ``min``/``max`` (the same function under its new argument names); nothing
else in brax or jax is touched.

brax is imported lazily (`import_brax`), so kltrust works without it; a run that asks for a brax
environment without brax installed gets a one-line error naming what to install.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from gymnax.environments import spaces

BACKENDS = ("mjx", "generalized", "positional", "spring")
DEFAULT_BACKEND = "mjx"  # MuJoCo's own dynamics (the PPO paper's simulator), via MJX
DEFAULT_EPISODE_LENGTH = 1000
INSTALL_HINT = "pip install 'kltrust[brax]' (brax==0.14.2 with mujoco and mujoco-mjx 3.17.0)"


class _ClipCompat:
    """``jax.numpy`` as brax 0.14.2's fluid model expects it: ``clip`` still takes the
    ``a_min``/``a_max`` keywords jax 0.10 removed (renamed ``min``/``max``); every other name is
    ``jax.numpy``'s own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(jnp, name)

    @staticmethod
    def clip(x: Any, a_min: Any = None, a_max: Any = None, **kwargs: Any) -> jax.Array:
        kwargs.setdefault("min", a_min)
        kwargs.setdefault("max", a_max)
        return jnp.clip(x, **kwargs)


def import_brax() -> Any:
    """``brax.envs``, or an ImportError whose one line says what to install.

    Also applies the swimmer's compatibility shim (module docstring) to ``brax.fluid``.
    """
    try:
        from brax import envs  # noqa: PLC0415 - lazy on purpose: brax is an optional extra
        from brax import fluid  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(f"brax environments need brax, which is not installed ({error}); "
                          f"{INSTALL_HINT}.") from None
    if fluid.jp is jnp:  # brax 0.14.2 imports jax.numpy as jp there; leave any other binding be
        fluid.jp = _ClipCompat()
    return envs


def brax_names() -> tuple[str, ...]:
    """The names brax's environment registry holds (``brax.envs.get_environment`` accepts)."""
    # brax keeps its registry in a module-level dict and exposes no public listing.
    return tuple(sorted(import_brax()._envs))


@flax.struct.dataclass
class BraxParams:
    """The gymnax-style environment parameters: only the time limit, static (a Python int, so
    `kltrust.train.common.random_policy_score` can size its scan with it)."""

    max_steps_in_episode: int = flax.struct.field(pytree_node=False,
                                                  default=DEFAULT_EPISODE_LENGTH)


@flax.struct.dataclass
class BraxEnvState:
    """brax's own ``State`` of the running episode and how many steps it has taken.

    brax's state holds zero-size arrays (an MJX model without actuator activations has ``act``
    of shape (0,)), which orbax refuses to checkpoint. So the state keeps only brax's non-empty
    leaves as arrays; the tree structure and the empty leaves' shapes and dtypes (fixed by the
    model) are static metadata, and `brax_state` rebuilds brax's ``State``. Build with `pack`,
    and read `brax_state` of one environment's state (inside the vmap, as the rollout does).
    """

    arrays: tuple[jax.Array, ...]  # brax's non-empty leaves, in tree order
    time: jax.Array  # int32 steps since the episode's reset
    layout: Any = flax.struct.field(pytree_node=False)  # (treedef, ((index, shape, dtype), ...))

    @classmethod
    def pack(cls, brax_state: Any, time: jax.Array) -> BraxEnvState:
        leaves, treedef = jax.tree.flatten(brax_state)
        leaves = [jnp.asarray(leaf) for leaf in leaves]
        empty = tuple((i, leaf.shape, leaf.dtype) for i, leaf in enumerate(leaves)
                      if leaf.size == 0)
        arrays = tuple(leaf for leaf in leaves if leaf.size)
        return cls(arrays, time, (treedef, empty))

    @property
    def brax_state(self) -> Any:
        treedef, empty = self.layout
        arrays = iter(self.arrays)
        empty_at = {i: (shape, dtype) for i, shape, dtype in empty}
        leaves = [jnp.zeros(*empty_at[i]) if i in empty_at else next(arrays)
                  for i in range(treedef.num_leaves)]
        return jax.tree.unflatten(treedef, leaves)


@dataclasses.dataclass(frozen=True, eq=False)
class BraxEnv:
    """A raw brax environment as a gymnax 1.x environment (module docstring for the contract).

    Attributes:
      env: the raw brax environment (``brax.envs.get_environment``'s, no wrappers).
      episode_length: the time limit reported as truncation, ``default_params``'s.
    """

    env: Any
    episode_length: int = DEFAULT_EPISODE_LENGTH

    @classmethod
    def make(cls, name: str, backend: str = DEFAULT_BACKEND,
             episode_length: int = DEFAULT_EPISODE_LENGTH) -> BraxEnv:
        """The brax environment ``name`` on ``backend``, truncated at ``episode_length`` steps."""
        return cls(import_brax().get_environment(name, backend=backend), episode_length)

    @property
    def default_params(self) -> BraxParams:
        return BraxParams(max_steps_in_episode=self.episode_length)

    def action_space(self, params: BraxParams | None = None) -> spaces.Box:
        """Actions in [−1, 1]^action_size, Brax's convention for its control tasks."""
        return spaces.Box(-1.0, 1.0, (self.env.action_size,), jnp.float32)

    def observation_space(self, params: BraxParams | None = None) -> spaces.Box:
        """Unbounded observations of the task's observation size."""
        return spaces.Box(-jnp.inf, jnp.inf, (self.env.observation_size,), jnp.float32)

    def reset(self, key: jax.Array, params: BraxParams | None = None
              ) -> tuple[jax.Array, BraxEnvState]:
        """A fresh episode drawn from ``key``: (obs, state)."""
        brax_state = self.env.reset(key)
        return (brax_state.obs.astype(jnp.float32),
                BraxEnvState.pack(brax_state, jnp.zeros((), jnp.int32)))

    def step(self, key: jax.Array, state: BraxEnvState, action: jax.Array,
             params: BraxParams | None = None):
        """One step with gymnax's auto-reset: (obs, state, reward, terminated, truncated, info).

        After a terminated or truncated step the returned obs and state are a fresh reset drawn
        from ``key``, and ``info["final_observation"]`` is the observation the step reached.
        """
        params = self.default_params if params is None else params
        stepped = self.env.step(state.brax_state, jnp.clip(action, -1.0, 1.0))
        time = state.time + 1
        terminated = stepped.done > 0
        truncated = jnp.logical_and(time >= params.max_steps_in_episode,
                                    jnp.logical_not(terminated))
        done = jnp.logical_or(terminated, truncated)
        fresh = self.env.reset(key)
        # Every leaf through where: brax's step may leave Python scalars (e.g. a constant reward)
        # in its state, and the scan carrying it needs arrays of fixed dtypes.
        brax_state = jax.tree.map(lambda new, old: jnp.where(done, new, old), fresh, stepped)
        final_obs = stepped.obs.astype(jnp.float32)
        info = {"final_observation": final_obs, "terminated": terminated,
                "truncated": truncated, "discount": 1.0 - terminated.astype(jnp.float32)}
        return (brax_state.obs.astype(jnp.float32),
                BraxEnvState.pack(brax_state, jnp.where(done, 0, time).astype(jnp.int32)),
                jnp.asarray(stepped.reward, jnp.float32), terminated, truncated, info)
