"""TRPO presets: TASK_VARIANT, e.g. ``--config=configs/trpo.py:cartpole_trpo``.

Tasks: cartpole, acrobot, pendulum, mountaincar (the PPO presets' gymnax environments, with the same
environment counts and total steps so the two families compare on equal data), and the seven MuJoCo
tasks through brax (configs/ppo.py's ``MUJOCO_ENVS``) with the PPO paper's batch (one environment ×
2048 steps), γ = 0.99, λ = 0.95, 1M steps and the same observation normalisation, so the TRPO row of
its Table 1 sees the PPO rows' data. Variants:

    trpo      hard trust region KL(π_old ‖ π_θ) ≤ δ = 0.01, CG + backtracking line search
              (Schulman et al. 2015; defaults as in OpenAI Spinning Up's TRPO)
    npg       natural policy gradient: the same scaled step, no line search, no KL check (Kakade 2001)
    trpo_ref  trust region plus an RLHF-style budget KL(π_θ ‖ π_ref) ≤ kl_budget to the frozen
              initial policy

Everything under ``hparams`` is an array in the compiled program (sweepable without recompiling);
everything else is static. Override anything with ``--config.key=value``.
"""

import ml_collections

from configs.ppo import MUJOCO_ENVS, split_preset
from kltrust.errors import unknown_preset
from kltrust.train import control_config

TASKS = {
    # TRPO takes one policy step per batch, so it gets larger batches than PPO's 4 × 128: 2048 steps
    # per update (Spinning Up uses 4000, sb3-contrib 2048).
    "cartpole": dict(
        env_name="CartPole-v1", num_envs=4, num_steps=512, total_timesteps=499_712,
        updates_per_chunk=61, hparams=dict(gamma=0.99),
    ),
    "acrobot": dict(
        env_name="Acrobot-v1", num_envs=4, num_steps=512, total_timesteps=499_712,
        updates_per_chunk=61, hparams=dict(gamma=0.99),
    ),
    # Pendulum: PPO preset's γ = 0.95 and reward scale 0.1.
    "pendulum": dict(
        env_name="Pendulum-v1", num_envs=8, num_steps=256, total_timesteps=999_424,
        updates_per_chunk=61, hparams=dict(gamma=0.95, reward_scale=0.1),
    ),
    "mountaincar": dict(
        env_name="MountainCarContinuous-v0", num_envs=8, num_steps=256, total_timesteps=999_424,
        updates_per_chunk=61, hparams=dict(gamma=0.99),
    ),
}

TASKS.update({
    task: dict(env_name=env_name, num_envs=1, num_steps=2048, total_timesteps=999_424,
               updates_per_chunk=61, normalize_observations=True,
               hparams=dict(gamma=0.99, gae_lambda=0.95, obs_clip=5.0))
    for task, env_name in MUJOCO_ENVS.items()})

VARIANTS = {
    "trpo": dict(line_search=True, kl_anchor="old"),
    "npg": dict(line_search=False, kl_anchor="old"),
    "trpo_ref": dict(line_search=True, kl_anchor="reference"),
    # The same budget with Achiam et al.'s recovery step when the budget is exceeded.
    "trpo_ref_recovery": dict(line_search=True, kl_anchor="reference", recovery=True),
}

PRESETS = tuple(f"{task}_{variant}" for task in TASKS for variant in VARIANTS)


def base_config() -> ml_collections.ConfigDict:
    """The trpo defaults every preset starts from (`kltrust.train.control_config.trpo_defaults`)."""
    return control_config.trpo_defaults()


def get_config(preset: str = "cartpole_trpo") -> ml_collections.ConfigDict:
    """The config of ``preset`` (TASK_VARIANT); see the module docstring."""
    parts = split_preset(preset, TASKS, VARIANTS)
    if parts is None:
        raise unknown_preset("TRPO", preset, PRESETS)
    task, variant = parts
    config = base_config()
    task_fields = dict(TASKS[task])
    config.hparams.update(task_fields.pop("hparams"))
    config.update(task_fields)
    config.variant.update(VARIANTS[variant])
    return config
