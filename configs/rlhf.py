"""Token RLHF presets: ``--config=configs/rlhf.py:PRESET``, all stages of one pipeline.

    python -m experiments.rlhf --config=configs/rlhf.py:ppo --workdir=runs/rlhf

runs what the preset needs under the pipeline root ``--workdir``: ``sft/`` (the reference) and
``reward_model/`` (the proxy) when they are missing, then the preset's own stage in ``workdir/NAME``.
Finished stages are reused, so every method of one pipeline shares one reference and one proxy.

Stages and methods (see `kltrust.train.rlhf` for what each optimises and where its KL goes):

    sft             next-token cross-entropy on the synthetic corpus (the reference policy)
    sft_shakespeare the real-text path: byte-level SFT on TFDS tiny_shakespeare (prepared locally)
    reward_model    Bradley–Terry scorer on the preference pairs
    ppo             PPO, KL in the reward (k1 per token, Ziegler et al.), fixed β = 0.1
    ppo_nokl        PPO with no KL at all (β = 0; the reference is run only for evaluation)
    ppo_adaptive    PPO with Ziegler et al.'s proportional β controller, target 2 nats; horizon
                    H = 256, so β moves by up to 0.2·64/256 = 5% per update of 64 samples (theirs:
                    H = 10 000 with batches of 512, about 1%)
    ppo_kl_loss     PPO with β·k3 in the loss instead of the reward
    grpo            GRPO, k3 KL in the loss, β = 0.1, 8 samples per prompt
    grpo_kl_reward  GRPO with the same β but the KL (k1) in the sequence reward
    rloo            RLOO, KL (k1) in the reward, β = 0.1
    trpo            TRPO with δ = 0.01 per update and a per-token KL budget of 0.1 to the reference
    dpo, ipo        offline DPO / IPO on the preference data set
    dpo_online      online DPO: pairs from the current policy, labelled by the proxy
    best_of_n       best-of-n sampling from the reference against the proxy, n = 1 … 64

Everything under ``rl.hparams`` is an array in the compiled program; the rest is static.
"""

import ml_collections

PRESETS = ("sft", "sft_shakespeare", "reward_model", "ppo", "ppo_nokl", "ppo_adaptive",
           "ppo_kl_loss", "grpo", "grpo_kl_reward", "rloo", "trpo", "dpo", "ipo", "dpo_online",
           "best_of_n")

METHOD_OVERRIDES = {
    "ppo": dict(method="ppo", kl_placement="reward", kl_estimator="k1"),
    "ppo_nokl": dict(method="ppo", kl_placement="none", hparams=dict(beta=0.0)),
    "ppo_adaptive": dict(method="ppo", kl_placement="reward", kl_estimator="k1",
                         controller="proportional",
                         hparams=dict(kl_target=2.0, kl_horizon=256.0)),
    "ppo_kl_loss": dict(method="ppo", kl_placement="loss", kl_estimator="k3"),
    "grpo": dict(method="grpo", kl_placement="loss", kl_estimator="k3", group_size=8,
                 batch_prompts=8, epochs=1),
    "grpo_kl_reward": dict(method="grpo", kl_placement="reward", kl_estimator="k1",
                           group_size=8, batch_prompts=8, epochs=1),
    "rloo": dict(method="rloo", kl_placement="reward", kl_estimator="k1", group_size=8,
                 batch_prompts=8, epochs=1),
    "trpo": dict(method="trpo", kl_placement="budget", kl_estimator="exact", group_size=8,
                 batch_prompts=8, epochs=1, minibatches=1),
    "dpo": dict(method="dpo", kl_placement="implicit", kl_estimator="exact", batch_prompts=64,
                epochs=1, minibatches=1, hparams=dict(beta=0.1, learning_rate=1e-4)),
    "ipo": dict(method="dpo", kl_placement="implicit", kl_estimator="exact", batch_prompts=64,
                epochs=1, minibatches=1, dpo_variant="ipo",
                hparams=dict(beta=0.1, learning_rate=1e-4)),
    "dpo_online": dict(method="dpo_online", kl_placement="implicit", kl_estimator="exact",
                       group_size=2, batch_prompts=32, epochs=1, minibatches=2,
                       hparams=dict(beta=0.1, learning_rate=1e-4)),
    "best_of_n": dict(method="best_of_n", kl_placement="none"),
}


def get_config(preset: str = "ppo") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}.")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.name = preset  # the policy stage's directory under the pipeline root
    c.stage = {"sft": "sft", "sft_shakespeare": "sft", "reward_model": "reward_model"}.get(
        preset, "policy")
    c.seed = 0
    c.num_seeds = 3
    # The synthetic language (`kltrust.tasks.text.LanguageSpec`).
    c.task = ml_collections.ConfigDict(dict(
        num_words=20, successors=4, eos_prob=0.08, num_good=4, good_weight=0.35, prompt_len=4,
        response_len=12, seed=0, good_scale=3.0, good_saturation=2.0, repeat_penalty=1.0,
        ungrammatical_penalty=1.0))
    # Data sets (TFDS builders of `kltrust.tasks.text_data`, written under WORKDIR/tfds).
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic",  # or "tfds:tiny_shakespeare" (sft_shakespeare)
        num_sft=8192, num_prompts=2048, num_eval_prompts=256, num_pairs=4096,
        num_eval_pairs=1024, label_noise=0.0, bt_temperature=1.0, seq_len=64))
    c.model = ml_collections.ConfigDict(dict(num_layers=2, width=64, num_heads=4, critic="shared"))
    c.reward_model = ml_collections.ConfigDict(dict(num_layers=2, width=64, num_heads=4))
    # SFT: held-out KL(true ‖ model) is lowest near 1000 steps and rises after (overfitting).
    c.sft = ml_collections.ConfigDict(dict(steps=1000, batch_size=64, learning_rate=1e-3,
                                           eval_every=250))
    # The reward model overfits its 4096 pairs within a few hundred steps (held-out BT loss rises),
    # so it is trained briefly: early stopping by the step count.
    c.rm = ml_collections.ConfigDict(dict(steps=250, batch_size=64, learning_rate=5e-4,
                                          weight_decay=0.0, eval_every=50))
    c.rl = ml_collections.ConfigDict(dict(
        method="ppo", kl_placement="reward", kl_estimator="k1", controller="fixed",
        batch_prompts=64, group_size=1, epochs=2, minibatches=4, num_updates=200,
        updates_per_eval=10, max_grad_norm=1.0, dpo_variant="sigmoid", cg_iters=10,
        max_backtracks=10, token_average="sequence", eval_kl=True,
        best_of_n=(1, 2, 4, 8, 16, 32, 64),
        hparams=ml_collections.ConfigDict(dict(
            learning_rate=1e-4, beta=0.1, kl_target=2.0, kl_horizon=10_000.0, clip_eps=0.2,
            gamma=1.0, gae_lambda=0.95, vf_coef=0.5, ent_coef=0.0, delta=0.01, kl_budget=0.1,
            damping=0.1, label_smoothing=0.0))))
    # Devices: runs (the seeds) × data (prompts, sequences, pairs) × fsdp (transformer weights and
    # Adam state split over devices, the batch too); -1 = the rest. See kltrust.sharding.
    c.mesh = ml_collections.ConfigDict(dict(runs=1, data=-1, fsdp=1))
    if preset == "sft_shakespeare":
        c.data.source = "tfds:tiny_shakespeare"
    if preset in METHOD_OVERRIDES:
        over = dict(METHOD_OVERRIDES[preset])
        c.rl.hparams.update(over.pop("hparams", {}))
        c.rl.update(over)
    return c
