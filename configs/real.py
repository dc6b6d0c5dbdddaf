"""Real-model RLHF presets: ``--config=configs/real.py:PRESET`` (`kltrust.train.real_rlhf`).

    python -m experiments.real_rlhf --config=configs/real.py:grpo --workdir=runs/real

runs, under the root ``--workdir``, what the preset needs and is missing: ``pairs/`` (reference
samples labelled by a Bradley–Terry draw on VADER), ``reward_model/`` (a linear head on the frozen
trunk) and then the preset's own stage in ``workdir/NAME``. Every preset of one root shares the
pairs and the proxy. CPU-sized: SmolLM2-135M, LoRA rank 8 on attention, 24 new tokens, a few
prompts per update, tens of updates (``*_gpu`` presets: the sizes for an accelerator).

    best_of_n     best-of-n from the reference against the proxy, n = 1 (the reference), 4, 16;
                  its "kl" is the upper bound log n − (n−1)/n (docs/best_of_n.md)
    grpo          GRPO, k3 in the loss, β = 0.05, 4 prompts × 4 samples
    rloo          RLOO, k1 in the sequence reward, β = 0.05
    ppo           PPO with a value head on the policy's trunk, k1 per token in the reward, β = 0.05
    ppo_nokl      PPO without any KL (the reference is evaluated only)
    dpo           offline DPO on the reference pairs, β = 0.1
    dpo_online    online DPO, pairs from the policy labelled by the proxy, β = 0.1
    gemma_grpo    GRPO on Gemma-3-270M as run on 2 cores (docs/real_models.md): chunked statistics
                  (rl.stats_chunk = 4), 128 / 64 pairs, 10 updates, 16 evaluation prompts; its own
                  root (its pairs differ from the SmolLM2 presets')

Gemma (``--config.model.name=gemma3-270m``) falls under the Gemma Terms of Use bundled with its
package: keep its runs local.
"""

import ml_collections

from kltrust.errors import unknown_preset
from kltrust.train import real_config

CPU_SIZES = dict(num_updates=20, updates_per_eval=5)
PRESETS = {
    "best_of_n": dict(method="best_of_n", kl_placement="none"),
    "grpo": dict(method="grpo", kl_placement="loss", kl_estimator="k3", batch_prompts=4,
                 group_size=4),
    "rloo": dict(method="rloo", kl_placement="reward", kl_estimator="k1", batch_prompts=4,
                 group_size=4),
    "ppo": dict(method="ppo", kl_placement="reward", kl_estimator="k1", batch_prompts=16,
                group_size=1, epochs=2, minibatches=2),
    "ppo_nokl": dict(method="ppo", kl_placement="none", kl_estimator="k1", batch_prompts=16,
                     group_size=1, epochs=2, minibatches=2, hparams=dict(beta=0.0)),
    "dpo": dict(method="dpo", kl_placement="implicit", kl_estimator="exact", batch_prompts=16,
                group_size=1, hparams=dict(beta=0.1, learning_rate=3e-4)),
    "dpo_online": dict(method="dpo_online", kl_placement="implicit", kl_estimator="exact",
                       batch_prompts=8, group_size=2, hparams=dict(beta=0.1, learning_rate=3e-4)),
}


# Presets on another model or at other sizes: a base preset and dotted overrides of the config.
VARIANTS = {
    "gemma_grpo": ("grpo", {"model.name": "gemma3-270m", "rl.stats_chunk": 4,
                            "pairs.num_train": 128, "pairs.num_test": 64, "pairs.batch_size": 32,
                            "rl.num_updates": 10, "task.num_eval_prompts": 16}),
}


def get_config(preset: str = "grpo") -> ml_collections.ConfigDict:
    if preset in VARIANTS:
        base, overrides = VARIANTS[preset]
        c = get_config(base)
        c.preset = c.name = preset
        for dotted, value in overrides.items():
            group, key = dotted.split(".")
            c[group][key] = value
        return c
    gpu = preset.endswith("_gpu")
    name = preset[:-4] if gpu else preset
    if name not in PRESETS:
        raise unknown_preset("configs/real.py", preset,
                             list(PRESETS) + [p + "_gpu" for p in PRESETS] + list(VARIANTS))
    c = real_config.defaults()
    c.preset = c.name = preset
    fields = dict(PRESETS[name])
    hparams = fields.pop("hparams", {})
    c.rl.update(fields)
    c.rl.hparams.update(hparams)
    c.rl.update(CPU_SIZES)
    if gpu:  # an accelerator: 8× the prompts per update, 10× the updates, 3 seeds, more pairs
        c.rl.batch_prompts *= 8
        c.rl.update(num_updates=200, updates_per_eval=20)
        c.num_seeds = 3
        c.task.num_eval_prompts = 256
        c.pairs.update(num_train=4096, num_test=512)
    return c
