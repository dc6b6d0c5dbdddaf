"""A reference that moves, and KTO, beside offline DPO on the token task (issue 23): TR-DPO's hard
and soft reference sync (Gorbatovski et al. 2024, arXiv 2404.09656) and KTO (Ethayarajh et al.
2024) on the same fixed preference set, trained as long as the overoptimisation sweep
(configs/sweeps/dpo_overoptimization.py: 8 epochs of the 4,096 pairs, an evaluation every half
epoch), so that their gold-against-KL paths can be laid beside DPO's.

    python -m experiments.sweep --sweep=configs/sweeps/reference_refresh.py \
        --workdir=runs/reference_refresh

TR-DPO's claim: refreshing the reference lets the policy move further from the initial reference
and reach a better policy than DPO with a fixed reference. The KL reported is always to the
*initial* reference (the one the budget is about), not to the moving one. τ = 64 updates (one
epoch); α = 1 (hard sync, TR-DPO^τ) and 0.6 (soft, TR-DPO^α; TRL's default). 2 seeds.
"""

import ml_collections

from configs.sweeps.dpo_overoptimization import TRAINING  # the same 8 epochs, evaluated as often

BETAS = (0.1, 0.3)


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "reference_refresh"
    sweep.description = "DPO with a fixed, hard-synced or soft-synced reference, and KTO"
    sweep.num_seeds = 2
    sweep.seed = 0
    sweep.group_runs = True
    sweep.arms = [
        dict(name="DPO", base="configs/rlhf.py:dpo", set=dict(TRAINING),
             grid={"rl.hparams.beta": BETAS}),
        dict(name="TR-DPO", base="configs/rlhf.py:dpo",
             set={**TRAINING, "rl.ref_sync": True, "rl.hparams.ref_sync_every": 64},
             grid={"rl.hparams.beta": BETAS, "rl.hparams.ref_sync_alpha": (1.0, 0.6)}),
        dict(name="KTO", base="configs/rlhf.py:dpo",
             set={**TRAINING, "rl.preference_loss": "kto"}, grid={"rl.hparams.beta": BETAS}),
    ]
    sweep.report = dict(
        curves=dict(x="update", ys=["gold", "kl"], by="label", band="sem"),
        frontier=dict(kl="kl", rewards=["gold"], by="label", color_by="arm", final_only=False),
        peaks=dict(metric="gold", by="label", x="update", also=["kl"]),
        final_table=dict(by="label", metrics=["gold", "proxy", "kl"]),
    )
    return sweep
