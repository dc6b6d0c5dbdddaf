"""Bandit testbed presets: ``--config=configs/bandit.py:PRESET``, PRESET in default, mlp, quick.

Run: python -m experiments.bandit_frontier --config=configs/bandit.py --workdir=runs/bandit_frontier

Every run of ``runs`` trains one method (``run_specs[name].method``, a key of
``kltrust.train.bandit.METHODS``) for every β of ``betas`` and ``num_seeds`` seeds in one compiled
program; offline DPO runs with sampled preferences repeat for each size in ``num_pairs``. Runs:

    pg_exact        gradient ascent on the exact E[r] − β·KL(π‖π_ref)
    pg_reinforce    REINFORCE, KL penalty in the reward (k1), leave-one-out baseline
    ppo             PPO clip with a fixed-β exact KL(π‖π_ref) penalty in the loss, 4 epochs per batch
    trpo            TRPO with the hard budget KL(π‖π_ref) ≤ kl_budget·KL(π*_β‖π_ref), δ = 0.01 per step
    dpo_exact       DPO on every (x, y_w, y_l) weighted by its probability: no sampling at all
    ipo_exact       IPO likewise (β = IPO's τ); its optimum is *not* π*_β (Azar et al. 2023)
    dpo, ipo        offline on ``num_pairs`` Bradley–Terry pairs from π_ref
    dpo_online      pairs from the current policy every step
    dpo_noisy       DPO on exact pairs whose labels are flipped with probability 0.2
    rdpo_noisy      robust DPO (ε = 0.2) on the same noisy pairs

Presets:
    default   4 contexts × 6 actions, tabular policy (contains every π*_β)
    mlp       the same bandit, policy = π_ref + MLP(one-hot(x)) with a 2-unit bottleneck, which in
              general cannot represent π*_β
    quick     few steps, for smoke tests

Everything under ``hparams`` and in ``run_specs`` except ``method``, ``loss`` and ``preferences`` is
an array in the compiled program; everything else is static.
"""

import ml_collections

from kltrust.errors import unknown_preset

PRESETS = ("default", "mlp", "quick")


def _run(method, loss="sigmoid", preferences="sampled", label_noise=0.0, label_smoothing=0.0):
    return dict(method=method, loss=loss, preferences=preferences, label_noise=label_noise,
                label_smoothing=label_smoothing)


RUN_SPECS = {
    "pg_exact": _run("pg_exact"),
    "pg_reinforce": _run("pg_reinforce"),
    "ppo": _run("ppo"),
    "trpo": _run("trpo"),
    "dpo_exact": _run("dpo", "sigmoid", "exact"),
    "ipo_exact": _run("dpo", "ipo", "exact"),
    "dpo": _run("dpo", "sigmoid", "sampled"),
    "ipo": _run("dpo", "ipo", "sampled"),
    "dpo_online": _run("dpo_online", "sigmoid"),
    "dpo_noisy": _run("dpo", "sigmoid", "exact", label_noise=0.2),
    "rdpo_noisy": _run("dpo", "robust", "exact", label_noise=0.2, label_smoothing=0.2),
}


def get_config(preset: str = "default") -> ml_collections.ConfigDict:
    """The config of ``preset``; see the module docstring."""
    if preset not in PRESETS:
        raise unknown_preset("bandit", preset, PRESETS)
    config = ml_collections.ConfigDict()
    config.algorithm = "bandit"
    config.seed = 0  # training seeds seed, seed+1, … (vmapped); the bandit has its own seed
    config.num_seeds = 2
    config.bandit = ml_collections.ConfigDict(
        dict(seed=0, num_contexts=4, num_actions=6, reward_scale=1.0, ref_scale=1.0, context_scale=0.5)
    )
    config.policy = ml_collections.ConfigDict(dict(kind="tabular", hidden=(8,), activation="tanh"))
    config.num_steps = 2000
    config.steps_per_eval = 50
    config.lr_schedule = "cosine"
    config.batch_size = 64  # pairs per step (online DPO); contexts per step (REINFORCE)
    config.group_size = 4  # actions per context (REINFORCE, PPO)
    config.ppo_epochs = 4  # Adam steps per sampled batch (PPO)
    config.offline_batch_size = 0  # pairs per step for offline DPO; 0 = all of them (full batch)
    config.betas = (0.1, 0.3, 1.0)
    config.num_pairs = (64, 1024, 16384)
    config.runs = tuple(RUN_SPECS)
    config.run_specs = ml_collections.ConfigDict(RUN_SPECS)
    # kl_budget (TRPO) is relative to KL(π*_β‖π_ref); δ and damping are TRPO's per-step trust region
    # and CG damping (smaller than the control default 0.1: a tabular policy's Fisher is small);
    # clip_eps is PPO's.
    config.hparams = ml_collections.ConfigDict(
        dict(learning_rate=0.1, kl_budget=1.0, delta=0.01, damping=0.001, clip_eps=0.2))
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
