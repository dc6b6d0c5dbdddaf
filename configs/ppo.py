"""PPO presets: TASK_VARIANT, e.g. ``--config=configs/ppo.py:cartpole_clip`` or
``--config=configs/ppo.py:inverted_pendulum_kl_adaptive``.

Tasks: cartpole, acrobot, pendulum, mountaincar (gymnax CartPole-v1, Acrobot-v1, Pendulum-v1,
MountainCarContinuous-v0), and the PPO paper's seven MuJoCo tasks through brax (`MUJOCO_TASKS`:
halfcheetah, hopper, inverted_double_pendulum, inverted_pendulum, reacher, swimmer, walker2d; the
``brax`` extra) with the paper's Table 3 settings: one environment × 2048 steps per update, 10
epochs of minibatches of 64, Adam 3e-4, γ = 0.99, λ = 0.95, 1M steps (999,424 = 488 updates),
observations normalised and clipped to ±5 (as in the baselines code the paper ran), no entropy
bonus, no gradient clipping; the step size is annealed linearly, as baselines' ``run_mujoco`` did.
Variants, the PPO paper's comparison (Schulman et al. 2017, §6.1) plus controllers from later work:

    none            no clipping, no penalty
    clip            clipped surrogate, ε = 0.2
    kl_fixed        fixed KL penalty to the old policy, β = 1
    kl_adaptive     adaptive β (d_targ = 0.01, β₀ = 1): halve below d_targ/1.5, double above 1.5·d_targ
    clip_kl         clipping plus the adaptive penalty
    kl_proportional proportional controller (Ziegler et al. 2019) on KL to the old policy; gain 1 and
                    horizon 10 000 as in their released code (the paper writes K_β = 0.1)
    kl_pid          PID-Lagrangian controller (Stooke et al. 2020); K_P = 10, K_I = 1 because the
                    error KL − d_targ is of order 0.01
    kl_ref          fixed β = 0.1 penalty on KL(π_θ ‖ π_ref) to the frozen initial policy (RLHF-style)

Everything under ``hparams`` is an array in the compiled program (sweepable without recompiling);
everything else is static. Override anything with ``--config.key=value``. The β controllers' knobs
sit in ``hparams.controller.KIND`` (every registered kind has its group, e.g.
``--config.variant.kl_penalty=pid --config.hparams.controller.pid.kp=1``).
"""

import ml_collections

from kltrust.errors import unknown_preset
from kltrust.train import control_config

TASKS = {
    # PureJaxRL's CartPole settings (4 envs × 128 steps, 4 epochs × 4 minibatches, lr 2.5e-4).
    "cartpole": dict(
        env_name="CartPole-v1", num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4,
        total_timesteps=500_000, updates_per_chunk=61,
        hparams=dict(learning_rate=2.5e-4, ent_coef=0.01, gamma=0.99),
    ),
    "acrobot": dict(
        env_name="Acrobot-v1", num_envs=4, num_steps=128, num_epochs=4, num_minibatches=4,
        total_timesteps=500_000, updates_per_chunk=61,
        hparams=dict(learning_rate=2.5e-4, ent_coef=0.01, gamma=0.99),
    ),
    # Pendulum: shorter effective horizon (γ = 0.95) and rewards scaled to ~[-1.6, 0] as is usual
    # for PPO there; 10 epochs of 32 minibatches as in the PPO paper's MuJoCo setting.
    "pendulum": dict(
        env_name="Pendulum-v1", num_envs=8, num_steps=256, num_epochs=10, num_minibatches=32,
        total_timesteps=1_000_000, updates_per_chunk=61,
        hparams=dict(learning_rate=1e-3, ent_coef=0.0, gamma=0.95, reward_scale=0.1),
    ),
    "mountaincar": dict(
        env_name="MountainCarContinuous-v0", num_envs=8, num_steps=256, num_epochs=10,
        num_minibatches=32, total_timesteps=1_000_000, updates_per_chunk=61,
        hparams=dict(learning_rate=3e-4, ent_coef=0.0, gamma=0.99),
    ),
}


def _mujoco(env_name: str) -> dict:
    """The PPO paper's Table 3 on one brax task (module docstring)."""
    return dict(
        env_name=env_name, num_envs=1, num_steps=2048, num_epochs=10, num_minibatches=32,
        total_timesteps=999_424, updates_per_chunk=61, normalize_observations=True,
        hparams=dict(learning_rate=3e-4, gamma=0.99, gae_lambda=0.95, ent_coef=0.0,
                     max_grad_norm=float("inf"), obs_clip=5.0),
    )


# The brax environment of each of the paper's tasks; MuJoCo's dynamics (mjx) wherever brax has
# them. swimmer exists only on brax's 'generalized' backend. hopper_positional is hopper on brax's
# positional backend (brax's own position-based dynamics, not MuJoCo's): ~2.5x the env steps/s of
# the mjx hopper on 2 CPU cores, which is what lets the CPU arm of the Table-1 sweep include it.
MUJOCO_ENVS = {
    "halfcheetah": "brax:halfcheetah",
    "hopper": "brax:hopper",
    "hopper_positional": "brax:hopper,backend=positional",
    "inverted_double_pendulum": "brax:inverted_double_pendulum",
    "inverted_pendulum": "brax:inverted_pendulum",
    "reacher": "brax:reacher",
    "swimmer": "brax:swimmer,backend=generalized",
    "walker2d": "brax:walker2d",
}
MUJOCO_TASKS = tuple(MUJOCO_ENVS)
TASKS.update({task: _mujoco(env_name) for task, env_name in MUJOCO_ENVS.items()})

# ``controller``: knobs set in ``hparams.controller.<kl_penalty>``; the others keep the controller's
# own defaults (`kltrust.controllers`).
VARIANTS = {
    "none": dict(clip=False, kl_penalty="none"),
    "clip": dict(clip=True, kl_penalty="none"),
    "kl_fixed": dict(clip=False, kl_penalty="fixed"),
    "kl_adaptive": dict(clip=False, kl_penalty="adaptive", controller=dict(kl_target=0.01)),
    "clip_kl": dict(clip=True, kl_penalty="adaptive", controller=dict(kl_target=0.01)),
    # Gain 1 explicitly: the component's default is the paper's K_β = 0.1.
    "kl_proportional": dict(clip=False, kl_penalty="proportional",
                            controller=dict(kl_target=0.01, gain=1.0, horizon=10_000.0)),
    "kl_pid": dict(clip=False, kl_penalty="pid",
                   controller=dict(kl_target=0.01, kp=10.0, ki=1.0, kd=0.0)),
    "kl_ref": dict(clip=True, kl_penalty="fixed", kl_anchor="reference", beta=0.1),
}

PRESETS = tuple(f"{task}_{variant}" for task in TASKS for variant in VARIANTS)


def base_config() -> ml_collections.ConfigDict:
    """The ppo defaults every preset starts from (`kltrust.train.control_config.ppo_defaults`)."""
    return control_config.ppo_defaults()


def split_preset(preset: str, tasks, variants) -> tuple[str, str] | None:
    """(task, variant) of ``preset`` = TASK_VARIANT (task names may hold underscores), or None."""
    for task in sorted(tasks, key=len, reverse=True):
        if preset.startswith(task + "_") and preset[len(task) + 1:] in variants:
            return task, preset[len(task) + 1:]
    return None


def get_config(preset: str = "cartpole_clip") -> ml_collections.ConfigDict:
    """The config of ``preset`` (TASK_VARIANT); see the module docstring."""
    parts = split_preset(preset, TASKS, VARIANTS)
    if parts is None:
        raise unknown_preset("PPO", preset, PRESETS)
    task, variant = parts
    config = base_config()
    task_fields = dict(TASKS[task])
    config.hparams.update(task_fields.pop("hparams"))
    config.update(task_fields)
    variant_fields = dict(VARIANTS[variant])
    if "beta" in variant_fields:
        config.hparams.beta = variant_fields.pop("beta")
    if "controller" in variant_fields:
        config.hparams.controller[variant_fields["kl_penalty"]].update(
            variant_fields.pop("controller"))
    config.variant.update(variant_fields)
    return config
