"""Reward-model overoptimisation (Gao et al. 2022) on the token task, two proxy data sizes.

    python -m experiments.sweep --sweep=configs/sweeps/overoptimization.py \
        --workdir=runs/overoptimization

For proxies trained on 1,024 and 4,096 preference pairs (each its own pipeline: reference, data,
proxy), gold and proxy reward against d = √KL(π ‖ π_ref):

    best of n      n = 1 … 256, fitted to R_bon(d) = d(α − βd) (n × 256 prompts are sampled at
                   once: n = 1024 needs about 30 GB)
    RL, no KL      PPO with β = 0: every evaluation along training, fitted to R_RL(d) = d(α − β log d)
    RL, KL 0.1     PPO with β = 0.1 (k1 in the reward): the same, with a KL penalty

R is the gold reward minus the reference's. 3 seeds per curve.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "overoptimization"
    sweep.description = "Reward-model overoptimisation (Gao et al. 2022 functional forms)"
    sweep.num_seeds = 3
    sweep.seed = 0
    sweep.group_runs = True
    pairs = {"data.num_pairs": (1024, 4096)}
    sweep.arms = [
        dict(name="best of n", base="configs/rlhf.py:best_of_n", grid=pairs,
             set={"rl.best_of_n": (1, 2, 4, 8, 16, 32, 64, 128, 256)}),
        dict(name="RL, no KL", base="configs/rlhf.py:ppo_nokl", grid=pairs),
        dict(name="RL, KL 0.1", base="configs/rlhf.py:ppo", grid=pairs,
             set={"rl.hparams.beta": 0.1}),
    ]
    sweep.report = dict(
        overopt=dict(kl="kl", gold="gold", proxy="proxy", by=["arm", "data.num_pairs"],
                     reference_by=["data.num_pairs"],
                     forms={"best of n": "bon", "*": "rl"}),
    )
    return sweep
