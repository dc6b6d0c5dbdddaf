"""Bandit testbed presets: ``--config=configs/bandit.py:PRESET``, PRESET in default, mlp, quick.

Run: python -m experiments.bandit_frontier --config=configs/bandit.py --workdir=runs/bandit_frontier

Every run of ``runs`` trains one method (``run_specs[name].method``, a name in
``kltrust.train.bandit.METHODS``, with ``run_specs[name].preference_loss`` where it uses one) for every β of ``betas`` and ``num_seeds`` seeds in one compiled
program; offline DPO runs with sampled preferences repeat for each size in ``num_pairs``. Runs:

    pg_exact        gradient ascent on the exact E[r] − β·KL(π‖π_ref)
    pg_reinforce    REINFORCE, KL penalty in the reward (k1), leave-one-out baseline
    ppo             PPO clip with a fixed-β exact KL(π‖π_ref) penalty in the loss, 4 epochs per batch
    trpo            TRPO with the hard budget KL(π‖π_ref) ≤ kl_budget_ratio·KL(π*_β‖π_ref), δ = 0.01 per step
    dpo_exact       DPO on every (x, y_w, y_l) weighted by its probability: no sampling at all
    ipo_exact       IPO likewise (β = IPO's τ); its optimum is *not* π*_β (Azar et al. 2023)
    dpo, ipo        offline on ``num_pairs`` Bradley–Terry pairs from π_ref
    dpo_online      pairs from the current policy every step
    dpo_noisy       DPO on exact pairs whose labels are flipped with probability 0.2
    rdpo_noisy      robust DPO (ε = 0.2) on the same noisy pairs
    simpo_exact     SimPO (reference-free, margin γ) on exact pairs; brought by its own module,
                    kltrust/objectives/simpo.py, as is every run a registered preference loss declares

Presets:
    default   4 contexts × 6 actions, tabular policy (contains every π*_β)
    mlp       the same bandit, policy = π_ref + MLP(one-hot(x)) with a 2-unit bottleneck, which in
              general cannot represent π*_β
    quick     few steps, for smoke tests

Everything under ``hparams``, each run spec's ``label_noise`` and its preference loss's knobs
(``run_specs.NAME.preference.LOSS.*``) are arrays in the compiled program; everything else is static.
The schema and the checks are `kltrust.train.bandit_config`.
"""

import ml_collections

from kltrust.errors import unknown_preset
from kltrust.objectives import preference
from kltrust.train import bandit_config

PRESETS = ("default", "mlp", "quick")

_run = bandit_config.run_spec

RUN_SPECS = {
    "pg_exact": dict(method="pg_exact"),
    "pg_reinforce": dict(method="pg_reinforce"),
    "ppo": dict(method="ppo"),
    "trpo": dict(method="trpo"),
    "dpo_exact": dict(method="dpo", preference_loss="sigmoid", preferences="exact"),
    "ipo_exact": dict(method="dpo", preference_loss="ipo", preferences="exact"),
    "dpo": dict(method="dpo", preference_loss="sigmoid", preferences="sampled"),
    "ipo": dict(method="dpo", preference_loss="ipo", preferences="sampled"),
    "dpo_online": dict(method="dpo_online", preference_loss="sigmoid"),
    "dpo_noisy": dict(method="dpo", preference_loss="sigmoid", preferences="exact",
                      label_noise=0.2),
    "rdpo_noisy": dict(method="dpo", preference_loss="robust", preferences="exact",
                       label_noise=0.2, robust=dict(label_smoothing=0.2)),
}
# Runs a registered preference loss brings with it (e.g. SimPO's ``simpo_exact``).
for _name, _loss in preference.LOSSES.items():
    for _run_name, _fields in _loss.bandit_runs.items():
        RUN_SPECS.setdefault(_run_name, dict(_fields, preference_loss=_name))


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    """The config of ``preset``; see the module docstring."""
    if preset not in PRESETS:
        raise unknown_preset("bandit", preset, PRESETS)
    config = bandit_config.defaults()
    config.runs = tuple(RUN_SPECS)
    config.run_specs = ml_collections.ConfigDict(
        {name: _run(**fields) for name, fields in RUN_SPECS.items()})
    # kl_budget_ratio (TRPO) is relative to KL(π*_β‖π_ref); δ and damping are TRPO's per-step
    # trust region and CG damping (smaller than the control default 0.1: a tabular policy's Fisher
    # is small); clip_eps is PPO's. These are the defaults of bandit.Knobs.
    if preset == "mlp":
        config.policy.kind = "mlp"
        config.policy.hidden = (32, 2)
    elif preset == "quick":
        config.num_steps = 100
        config.steps_per_eval = 50
        config.num_seeds = 1
        config.betas = (0.3,)
        config.num_pairs = (64,)
    return config
