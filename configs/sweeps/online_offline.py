"""Online against offline preference optimisation at matched KL (Tang et al. 2024, arXiv 2405.08448;
issue 23 reproduction 6) on the token task: offline DPO on the fixed preference set, online DPO on
pairs sampled from the current policy and labelled by the proxy, and PPO with the KL in the reward,
each over its β, so that their (exact sequence KL, gold) points can be compared at equal KL.

    python -m experiments.sweep --sweep=configs/sweeps/online_offline.py --workdir=runs/online_offline

The paper's claim: at matched KL, online preference optimisation reaches a higher gold reward than
offline. One pipeline (reference, proxy, pairs); every evaluation along training is a point; one
program per method, vmapped over β × seeds; 2 seeds.
"""

import ml_collections

BETAS = (0.03, 0.1, 0.3, 1.0)


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "online_offline"
    sweep.description = "Offline DPO, online DPO and PPO over β on the token task: gold at matched KL"
    sweep.num_seeds = 2
    sweep.seed = 0
    sweep.group_runs = True
    sweep.arms = [
        dict(name="offline DPO", base="configs/rlhf.py:dpo", grid={"rl.hparams.beta": BETAS}),
        dict(name="online DPO", base="configs/rlhf.py:dpo_online", grid={"rl.hparams.beta": BETAS}),
        dict(name="PPO", base="configs/rlhf.py:ppo", grid={"rl.hparams.beta": BETAS}),
    ]
    # Matched KL: every evaluation along training is a (KL, gold) point, so each method traces a
    # frontier over its β's and checkpoints; the peaks say where each run's gold turned down.
    sweep.report = dict(
        frontier=dict(kl="kl", rewards=["gold"], by="label", color_by="arm", final_only=False),
        curves=dict(x="update", ys=["gold", "kl"], by="label", band="sem"),
        peaks=dict(metric="gold", by="label", x="update", also=["kl"]),
        final_table=dict(by="label", metrics=["gold", "proxy", "kl"]),
    )
    return sweep
