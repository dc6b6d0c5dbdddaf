"""TRPO presets: TASK_VARIANT, e.g. ``--config=configs/trpo.py:cartpole_trpo``.

Tasks: cartpole, acrobot, pendulum, mountaincar (the PPO presets' gymnax environments, with the same
environment counts and total steps so the two families compare on equal data). Variants:

    trpo      hard trust region KL(π_old ‖ π_θ) ≤ δ = 0.01, CG + backtracking line search
              (Schulman et al. 2015; defaults as in OpenAI Spinning Up's TRPO)
    npg       natural policy gradient: the same scaled step, no line search, no KL check (Kakade 2001)
    trpo_ref  trust region plus an RLHF-style budget KL(π_θ ‖ π_ref) ≤ kl_budget to the frozen
              initial policy

Everything under ``hparams`` is an array in the compiled program (sweepable without recompiling);
everything else is static. Override anything with ``--config.key=value``.
"""

import ml_collections

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

VARIANTS = {
    "trpo": dict(line_search=True, kl_anchor="old"),
    "npg": dict(line_search=False, kl_anchor="old"),
    "trpo_ref": dict(line_search=True, kl_anchor="reference"),
}

PRESETS = tuple(f"{task}_{variant}" for task in TASKS for variant in VARIANTS)


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.algorithm = "trpo"
    config.env_name = "CartPole-v1"
    config.seed = 0
    config.num_seeds = 1  # seeds seed, seed+1, … run vmapped in one program
    config.num_envs = 4
    config.num_steps = 512
    config.total_timesteps = 499_712
    config.updates_per_chunk = 61  # updates per compiled call; metrics/checkpoints between calls
    config.cg_iters = 10
    config.max_backtracks = 10
    config.fvp_subsample = 1  # Fisher-vector products on every k-th state of the batch
    config.vf_epochs = 5
    config.vf_minibatches = 8
    config.model = ml_collections.ConfigDict(dict(hidden=(64, 64), activation="tanh"))
    config.variant = ml_collections.ConfigDict(
        dict(line_search=True, kl_anchor="old", normalize_advantages=True)
    )
    config.hparams = ml_collections.ConfigDict(
        dict(
            delta=0.01, kl_budget=0.5, damping=0.1, backtrack_factor=0.8, cg_residual_tol=1e-10,
            vf_learning_rate=1e-3, gamma=0.99, gae_lambda=0.97, reward_scale=1.0,
        )
    )
    config.checkpoint_every_chunks = 1
    config.keep_checkpoints = 2
    # Devices: runs (a sweep's run axis) × data (the batch) × fsdp (parameters); -1 = the rest.
    # kltrust.sharding explains the axes; --config.mesh.runs=8 spreads 8 seeds over 8 devices.
    config.mesh = ml_collections.ConfigDict(dict(runs=1, data=-1, fsdp=1))
    return config


def get_config(preset: str = "cartpole_trpo") -> ml_collections.ConfigDict:
    """The config of ``preset`` (TASK_VARIANT); see the module docstring."""
    task, _, variant = preset.partition("_")
    if task not in TASKS or variant not in VARIANTS:
        raise ValueError(f"Unknown TRPO preset {preset!r}; known presets: {', '.join(PRESETS)}.")
    config = base_config()
    task_fields = dict(TASKS[task])
    config.hparams.update(task_fields.pop("hparams"))
    config.update(task_fields)
    config.variant.update(VARIANTS[variant])
    return config
