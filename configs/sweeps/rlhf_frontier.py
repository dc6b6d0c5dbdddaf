"""Reward–KL frontier on the token task, in the style of the DPO paper's Figure 2 (left).

    python -m experiments.sweep --sweep=configs/sweeps/rlhf_frontier.py --workdir=runs/rlhf_frontier

Each method sweeps the knob that sets how far it may move from the reference, and every run lands
as one point (gold reward against the exact sequence KL to the reference, at the end of training):

    DPO         β = 0.03, 0.1, 0.3, 1 (offline, on the preference set the proxy was trained on)
    PPO β       fixed β = 0.03, 0.1, 0.3, 1, KL (k1) in the reward
    PPO target  proportional β controller (Ziegler et al.), target KL = 1, 2, 4, 8 nats
    TRPO        per-token KL budget to the reference 0.03, 0.1, 0.3, 1 (δ = 0.01 per update); the
                budget, not δ, is what bounds the distance to the reference here
    GRPO        β = 0.03, 0.1, 0.3, 1, k3 in the loss
    best-of-n   n = 1, 4, 16, 64, 256 (KL reported as the upper bound log n − (n − 1)/n)

One pipeline (one reference, one proxy) under ``WORKDIR/pipelines``; 2 seeds per point; each method
is one vmapped program over its knob and seeds.
"""

import ml_collections

BETAS = (0.03, 0.1, 0.3, 1.0)


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "rlhf_frontier"
    sweep.description = "Reward–KL frontier on the token task (DPO paper Figure 2, left, style)"
    sweep.num_seeds = 2
    sweep.seed = 0
    sweep.group_runs = True
    sweep.arms = [
        dict(name="DPO", base="configs/rlhf.py:dpo", grid={"rl.hparams.beta": BETAS}),
        dict(name="PPO β", base="configs/rlhf.py:ppo", grid={"rl.hparams.beta": BETAS}),
        dict(name="PPO target", base="configs/rlhf.py:ppo_adaptive",
             grid={"rl.hparams.controller.proportional.kl_target": (1.0, 2.0, 4.0, 8.0)}),
        dict(name="TRPO", base="configs/rlhf.py:trpo",
             grid={"rl.hparams.kl_budget_per_token": (0.03, 0.1, 0.3, 1.0)}),
        dict(name="GRPO", base="configs/rlhf.py:grpo", grid={"rl.hparams.beta": BETAS}),
        dict(name="best of n", base="configs/rlhf.py:best_of_n",
             set={"rl.best_of_n": (1, 4, 16, 64, 256)}),
    ]
    sweep.report = dict(
        frontier=dict(kl="kl", rewards=["gold", "proxy"], by="label", color_by="arm",
                      final_only=True),
        final_table=dict(by="label", metrics=["gold", "proxy", "kl", "distinct_2"]),
    )
    return sweep
