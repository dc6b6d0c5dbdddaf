"""PPO paper (Schulman et al. 2017) Table 1 on its own MuJoCo tasks, through brax.

    python -m experiments.sweep --sweep=configs/sweeps/ppo_table1_brax.py --workdir=runs/ppo_table1_brax
    python -m experiments.sweep --sweep=configs/sweeps/ppo_table1_brax.py:full \\
        --workdir=runs/ppo_table1_brax_full        # the whole table: a GPU job

The presets are configs/ppo.py's MuJoCo tasks with the paper's Table 3 settings (one environment ×
2048 steps, 10 epochs of minibatches of 64, Adam 3e-4 annealed, γ = 0.99, λ = 0.95, observations
normalised) and configs/trpo.py's for the TRPO row (δ = 0.01). Score: the mean return of the last
100 episodes at the end of training, normalised per task so that a random policy (measured: 100
episodes of uniform actions in [-1, 1]) scores 0 and the best row 1, then averaged over tasks.

Rows as in the paper: no clipping or penalty; clipping ε = 0.1, 0.2, 0.3; adaptive KL with
d_targ = 0.003, 0.01, 0.03 (β₀ = 1); fixed KL β = 0.3, 1, 3, 10; plus TRPO (δ = 0.01). The KL rows
penalise KL(π_old ‖ π_θ) without clipping, as in the paper.

Programs: each row is a point of a compiled program, not a program of its own. "No clipping or
penalty" is the clipped program at ε = ∞ (min(ρA, clip(ρ, 1 − ∞, 1 + ∞)A) = ρA exactly), and the
fixed-β rows are the adaptive program with its step ``factor`` = 1 (β never moves; bit-identical to
the ``fixed`` controller, tests/test_controllers.py). So a task runs three programs (clip family,
KL family, TRPO), each vmapped over its rows × seeds, instead of eleven.

Sizes:
    cpu    (default) the five tasks that run on CPU (inverted_pendulum,
           inverted_double_pendulum, swimmer, reacher, and hopper on brax's positional backend);
           rows none, clip 0.2, adaptive 0.01, fixed β = 1, TRPO; 3 seeds; 1M steps (999,424 =
           488 updates)
    table  the same five tasks with all eleven rows and TRPO
    full   all seven tasks, hopper on MuJoCo's dynamics (mjx) like the others, + halfcheetah and
           walker2d (~7× slower per step on mjx), all rows
"""

import ml_collections

from configs.sweeps import ppo_table1

# Cheapest first (env steps/s of a 12-run PPO program on 2 cores), so that an interrupted sweep has
# finished the cheap tasks; the same command resumes the rest. On CPU, hopper runs on brax's
# positional backend (configs/ppo.py: hopper_positional), ~2.5x faster than MuJoCo's dynamics via
# mjx; the full arm runs the mjx hopper.
CHEAP_TASKS = ("inverted_pendulum", "inverted_double_pendulum", "swimmer", "reacher")
CPU_TASKS = CHEAP_TASKS + ("hopper_positional",)
ALL_TASKS = CHEAP_TASKS + ("hopper", "halfcheetah", "walker2d")
GRIDS = {  # size -> the grid of each row family
    "cpu": dict(clip=(0.2,), kl_target=(0.01,), beta=(1.0,)),
    "table": dict(clip=(0.1, 0.2, 0.3), kl_target=(0.003, 0.01, 0.03), beta=(0.3, 1.0, 3.0, 10.0)),
}
GRIDS["full"] = GRIDS["table"]
TASKS = {"cpu": CPU_TASKS, "table": CPU_TASKS, "full": ALL_TASKS}


def get_config(size: str = "cpu") -> ml_collections.ConfigDict:
    if size not in GRIDS:
        raise ValueError(f"size {size!r}: must be one of {tuple(GRIDS)}.")
    grid = GRIDS[size]
    sweep = ml_collections.ConfigDict()
    sweep.name = f"ppo_table1_brax_{size}"
    # The tasks are not named here: --sweep.tasks may narrow them (the report lists its tasks).
    sweep.description = f"PPO paper Table 1 on brax's MuJoCo tasks ({size}), 999,424 steps, 3 seeds"
    sweep.num_seeds = 3
    sweep.seed = 0
    sweep.tasks = TASKS[size]
    sweep.record_every = 4
    sweep.group_runs = True
    sweep.overrides = {"total_timesteps": 999_424, "updates_per_chunk": 61}
    sweep.arms = [
        dict(name="no clipping or penalty", base="configs/ppo.py:{task}_clip",
             set={"hparams.clip_eps": float("inf")}),
        dict(name="clipping", base="configs/ppo.py:{task}_clip",
             grid={"hparams.clip_eps": grid["clip"]}),
        dict(name="adaptive KL", base="configs/ppo.py:{task}_kl_adaptive",
             set={"hparams.beta": 1.0},
             grid={"hparams.controller.adaptive.kl_target": grid["kl_target"]}),
        dict(name="fixed KL", base="configs/ppo.py:{task}_kl_adaptive",
             set={"hparams.controller.adaptive.factor": 1.0},
             grid={"hparams.beta": grid["beta"]}),
        dict(name="TRPO", base="configs/trpo.py:{task}_trpo", set={"hparams.delta": 0.01}),
    ]
    sweep.report = ppo_table1.REPORT
    return sweep
