"""SimPO's margin γ on the exact bandit testbed, beside DPO, as one sweep.

    python -m experiments.sweep --sweep=configs/sweeps/simpo_gamma.py --workdir=runs/simpo_gamma

SimPO (reference-free, kltrust/objectives/simpo.py) on exact preferences at γ = 0, 0.5, 1, 2 and
DPO on the same pairs, every β of the quick bandit's ``betas`` × 2 seeds; the four γ of a seed
pair run as one vmapped program (γ is an array in the compiled program). Rows carry the exact
KL(π_θ‖π_ref), KL(π_θ‖π*_β) and E[r] after every evaluation.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "simpo_gamma"
    sweep.description = "SimPO margin γ vs DPO on the exact bandit (exact preferences)"
    sweep.num_seeds = 2
    sweep.seed = 0
    sweep.record_every = 50
    sweep.group_runs = True
    quick = "configs/bandit.py:quick"
    sweep.overrides = {"num_steps": 500, "betas": (0.3, 1.0)}
    sweep.arms = [
        dict(name="simpo", base=quick, set={"runs": ("simpo_exact",)},
             grid={"run_specs.simpo_exact.preference.simpo.gamma": (0.0, 0.5, 1.0, 2.0)}),
        dict(name="dpo", base=quick, set={"runs": ("dpo_exact",)}),
    ]
    return sweep
