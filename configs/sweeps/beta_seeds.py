"""Timing: 8 seeds × 4 fixed β on CartPole as one vmapped program, against the same 32 runs alone.

    python -m experiments.sweep --sweep=configs/sweeps/beta_seeds.py --workdir=runs/beta_seeds
    python -m experiments.sweep --sweep=configs/sweeps/beta_seeds.py --workdir=runs/beta_seeds_alone \
        --nogroup

PPO with a fixed KL penalty to the old policy (β = 0.3, 1, 3, 10), 500k steps per run, CartPole
preset settings (4 envs × 128 steps, 4 epochs × 4 minibatches).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "beta_seeds"
    sweep.description = "PPO fixed-β KL penalty on CartPole: 4 β × 8 seeds"
    sweep.num_seeds = 8
    sweep.seed = 0
    sweep.record_every = 8
    sweep.group_runs = True
    sweep.arms = [dict(name="fixed KL", base="configs/ppo.py:cartpole_kl_fixed",
                       grid={"hparams.beta": (0.3, 1.0, 3.0, 10.0)})]
    sweep.report = dict(
        curves=dict(x="env_steps", ys=["episode_return", "kl_old"], by=["label"], band="sem",
                    logy=["kl_old"]),
    )
    return sweep
