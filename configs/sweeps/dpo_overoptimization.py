"""Overoptimisation in direct alignment algorithms (Rafailov et al. 2024, arXiv 2406.02900; issue 23
reproduction 5): offline DPO, IPO and SLiC (hinge) on the token task's fixed preference set, over β
and over training (8 epochs of the 4,096 pairs, evaluated every half epoch).

    python -m experiments.sweep --sweep=configs/sweeps/dpo_overoptimization.py \
        --workdir=runs/dpo_overoptimization

The paper's claim: gold reward against the KL to the reference rises, peaks and falls (a hump),
and the fall starts earlier in training for small β; within one run, longer training moves along
the same hump. Every evaluation along training is a point (gold, exact sequence KL); one program
per loss, vmapped over β × seeds. 2 seeds.
"""

import ml_collections

BETAS = (0.01, 0.03, 0.1, 0.3)
# 64 pairs per update: 64 updates per epoch of the 4,096 pairs; 8 epochs, an evaluation every 32.
TRAINING = {"rl.num_updates": 512, "rl.updates_per_eval": 32}


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "dpo_overoptimization"
    sweep.description = "DPO / IPO / SLiC over β and epochs on the token task: gold against KL"
    sweep.num_seeds = 2
    sweep.seed = 0
    sweep.group_runs = True
    sweep.arms = [
        dict(name=name, base="configs/rlhf.py:dpo",
             set={"rl.preference_loss": loss, **TRAINING}, grid={"rl.hparams.beta": BETAS})
        for name, loss in (("DPO", "sigmoid"), ("IPO", "ipo"), ("SLiC", "hinge"))
    ]
    # The paper's reading (its Fig. 1/2): every checkpoint is a point of gold against KL, fitted per
    # loss with Gao et al.'s RL form R = d(α − β log d), d = sqrt(KL); and gold along training
    # per β, to see when it turns down.
    sweep.report = dict(
        curves=dict(x="update", ys=["gold", "kl"], by="label", band="sem"),
        frontier=dict(kl="kl", rewards=["gold"], by="label", color_by="arm", final_only=False),
        overopt=dict(kl="kl", gold="gold", proxy="proxy", by=["arm"], forms={"*": "rl"}),
        peaks=dict(metric="gold", by="label", x="update", also=["kl"]),
        final_table=dict(by="label", metrics=["gold", "proxy", "kl"]),
    )
    return sweep
