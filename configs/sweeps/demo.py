"""`make demo`: PPO-clip vs adaptive-KL PPO vs TRPO on CartPole, 2 seeds, 500k steps each.

    python -m experiments.sweep --sweep=configs/sweeps/demo.py --workdir=runs/demo

A few minutes on 2 CPU cores. Each arm is one vmapped program over its two seeds.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "demo"
    sweep.description = "PPO-clip vs adaptive-KL PPO vs TRPO on CartPole-v1 (2 seeds)"
    sweep.num_seeds = 2
    sweep.seed = 0
    sweep.record_every = 4
    sweep.group_runs = True
    sweep.arms = [
        dict(name="PPO clip", base="configs/ppo.py:cartpole_clip",
             set={"total_timesteps": 499_712}),
        dict(name="PPO adaptive KL", base="configs/ppo.py:cartpole_kl_adaptive",
             set={"total_timesteps": 499_712}),
        dict(name="TRPO", base="configs/trpo.py:cartpole_trpo",
             set={"total_timesteps": 499_712}),
    ]
    sweep.report = dict(
        curves=dict(x="env_steps", ys=["episode_return", "kl_old"], by=["label"], band="minmax",
                    logy=["kl_old"]),
    )
    return sweep
