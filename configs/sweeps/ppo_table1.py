"""PPO paper (Schulman et al. 2017) Table 1 on the JAX-native continuous-control tasks that run here.

    python -m experiments.sweep --sweep=configs/sweeps/ppo_table1.py --workdir=runs/ppo_table1
    python -m experiments.sweep --sweep=configs/sweeps/ppo_table1.py:full --workdir=runs/ppo_table1_full

Rows as in the paper: no clipping or penalty; clipping ε = 0.1, 0.2, 0.3; adaptive KL with
d_targ = 0.003, 0.01, 0.03 (β₀ = 1); fixed KL β = 0.3, 1, 3, 10; plus TRPO (δ = 0.01). Three seeds.
Score: the mean return of the last 100 episodes at the end of training, normalised per task so that a
random policy scores 0 and the best row 1, then averaged over tasks.

Tasks: gymnax Pendulum-v1 and MountainCarContinuous-v0, with the PPO presets' settings (2048 steps
per update, 10 epochs of 32 minibatches of 64, Adam; the paper's MuJoCo setting). The paper's
MuJoCo tasks (and Brax's versions of them) are not installed here. Sizes:

    cpu   (default) 499,712 steps per task (244 updates)
    full  999,424 steps per task (488 updates; the paper's 1M)

Each row is one vmapped program over its grid points and seeds: five programs per task.
"""

import ml_collections

STEPS = {"cpu": 499_712, "full": 999_424}

# The paper's score table (random = 0, best row = 1) and the curves; configs/sweeps/
# ppo_table1_brax.py reports the same way.
REPORT = dict(
    scores=dict(score="episode_return", by="label", task="task", random="measure"),
    curves=dict(x="env_steps", ys=["episode_return", "kl_old"], by=["task", "label"],
                band="sem", logy=["kl_old"]),
)


def get_config(size: str = "cpu") -> ml_collections.ConfigDict:
    if size not in STEPS:
        raise ValueError(f"size {size!r}: must be one of {tuple(STEPS)}.")
    sweep = ml_collections.ConfigDict()
    sweep.name = f"ppo_table1_{size}"
    sweep.description = (f"PPO paper Table 1 on Pendulum-v1 and MountainCarContinuous-v0, "
                         f"{STEPS[size]:,} steps per task, 3 seeds")
    sweep.num_seeds = 3
    sweep.seed = 0
    sweep.tasks = ("pendulum", "mountaincar")
    sweep.record_every = 4
    sweep.group_runs = True
    # The adaptive and fixed rows penalise KL(π_old ‖ π_θ) without clipping, as in the paper.
    sweep.overrides = {"total_timesteps": STEPS[size], "updates_per_chunk": 61}
    sweep.arms = [
        dict(name="no clipping or penalty", base="configs/ppo.py:{task}_none"),
        dict(name="clipping", base="configs/ppo.py:{task}_clip",
             grid={"hparams.clip_eps": (0.1, 0.2, 0.3)}),
        dict(name="adaptive KL", base="configs/ppo.py:{task}_kl_adaptive",
             set={"hparams.beta": 1.0},
             grid={"hparams.controller.adaptive.kl_target": (0.003, 0.01, 0.03)}),
        dict(name="fixed KL", base="configs/ppo.py:{task}_kl_fixed",
             grid={"hparams.beta": (0.3, 1.0, 3.0, 10.0)}),
        dict(name="TRPO", base="configs/trpo.py:{task}_trpo", set={"hparams.delta": 0.01}),
    ]
    sweep.report = REPORT
    return sweep
