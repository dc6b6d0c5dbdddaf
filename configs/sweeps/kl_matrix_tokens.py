"""The KL matrix on the token task (issue 23, reproduction 3; "A Comedy of Estimators", arXiv
2512.21852, ranks estimator × placement by final reward and stability): GRPO with every registered
estimator in the loss and every plain estimator in the sequence reward, β = 0.1 and 0.3, 3 seeds.

    python -m experiments.sweep --sweep=configs/sweeps/kl_matrix_tokens.py --workdir=runs/kl_matrix_tokens

The cells come from the registry (`kltrust.kl.estimators`), so a new estimator joins by being
registered. Left out, because the programs refuse them: k1 in the loss (zero expected gradient)
and the corrected estimators (k1+, k3+, k3_is) in the reward (a correction acts on a loss term's
gradient only). One pipeline (one reference, one proxy); each cell is one program vmapped over
β × seeds. Per cell the report gives the final gold and proxy reward and the exact sequence KL to
the reference, with the spread over seeds; a run that ends with a non-finite metric or skipped
updates is counted as diverged in docs/kl_matrix.md.
"""

import ml_collections

from kltrust import kl

BETAS = (0.1, 0.3)


def cells() -> list[tuple[str, str]]:
    """(placement, estimator) pairs the GRPO program accepts, loss first."""
    loss = [("loss", name) for name in kl.estimators(loss_term=True)]
    reward = [("reward", name) for name in kl.estimators(reward_term=True)]
    return loss + reward


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "kl_matrix_tokens"
    sweep.description = "GRPO on the token task: KL estimator × placement, β = 0.1, 0.3, 3 seeds"
    sweep.num_seeds = 3
    sweep.seed = 0
    sweep.group_runs = True
    sweep.arms = [
        # "+" is not kept in a run directory name: k3+ would share k3's.
        dict(name=f"{estimator.replace('+', 'plus')} in the {placement}",
             base="configs/rlhf.py:grpo",
             set={"rl.kl_placement": placement, "rl.kl_estimator": estimator},
             grid={"rl.hparams.beta": BETAS})
        for placement, estimator in cells()
    ]
    sweep.report = dict(
        frontier=dict(kl="kl", rewards=["gold", "proxy"], by="label", color_by="arm",
                      final_only=True),
        final_table=dict(by="label", metrics=["gold", "proxy", "kl", "entropy"]),
    )
    return sweep
