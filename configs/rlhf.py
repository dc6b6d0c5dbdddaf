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
                    H = 256 and gain 1 (their released code's; the component's default is the
                    paper's 0.1), so β moves by up to 0.2·64/256 = 5% per update of 64 samples
                    (theirs: H = 10 000 with batches of 512, about 1%)
    ppo_kl_loss     PPO with β·k3 in the loss instead of the reward
    grpo            GRPO, k3 KL in the loss, β = 0.1, 8 samples per prompt
    grpo_kl_reward  GRPO with the same β but the KL (k1) in the sequence reward
    rloo            RLOO, KL (k1) in the reward, β = 0.1
    dapo            DAPO: no KL, clip-higher [0.8, 1.28], token-level loss, flat groups dropped
    gspo            GSPO: no KL, one clipped ratio per sequence, range [1 − 3e-4, 1 + 4e-4]
    trpo            TRPO with δ = 0.01 per update and a per-token KL budget of 0.1 to the reference
    dpo, ipo        offline DPO / IPO on the preference data set
    simpo           offline SimPO (reference-free, length-normalised; β = 2, γ = 1), brought by
                    kltrust/objectives/simpo.py itself, as is any preset a preference loss declares
    dpo_online      online DPO: pairs from the current policy, labelled by the proxy
    best_of_n       best-of-n sampling from the reference against the proxy, n = 1 … 64; its "kl"
                    is the upper bound log n − (n−1)/n (docs/best_of_n.md), not the exact KL

Every preset takes prompt domains (``config.domains``: count, kl_scale, control "global" or
"per_domain") and a planted reward bug (``config.proxy_bug``, optionally in one domain): see
docs/domains.md.

Everything under ``rl.hparams`` is an array in the compiled program; the rest is static. The β
controller's knobs sit in ``rl.hparams.controller.KIND`` for the kind ``rl.controller`` names.
"""

import ml_collections

from kltrust.errors import unknown_preset
from kltrust.objectives import preference
from kltrust.train import pipeline

PRESETS = ("sft", "sft_shakespeare", "reward_model", "ppo", "ppo_nokl", "ppo_adaptive",
           "ppo_kl_loss", "grpo", "grpo_kl_reward", "rloo", "dapo", "gspo", "trpo", "dpo", "ipo",
           "dpo_online", "best_of_n")

METHOD_OVERRIDES = {
    "ppo": dict(method="ppo", kl_placement="reward", kl_estimator="k1"),
    "ppo_nokl": dict(method="ppo", kl_placement="none", hparams=dict(beta=0.0)),
    "ppo_adaptive": dict(method="ppo", kl_placement="reward", kl_estimator="k1",
                         controller="proportional",
                         hparams=dict(controller=dict(proportional=dict(
                             kl_target=2.0, horizon=256.0, gain=1.0)))),
    "ppo_kl_loss": dict(method="ppo", kl_placement="loss", kl_estimator="k3"),
    "grpo": dict(method="grpo", kl_placement="loss", kl_estimator="k3", group_size=8,
                 batch_prompts=8, epochs=1),
    "grpo_kl_reward": dict(method="grpo", kl_placement="reward", kl_estimator="k1",
                           group_size=8, batch_prompts=8, epochs=1),
    "rloo": dict(method="rloo", kl_placement="reward", kl_estimator="k1", group_size=8,
                 batch_prompts=8, epochs=1),
    "dapo": dict(method="dapo", kl_placement="none", group_size=8, batch_prompts=8, epochs=1,
                 token_average="token", hparams=dict(beta=0.0, clip_eps=0.2, clip_eps_high=0.28)),
    "gspo": dict(method="gspo", kl_placement="none", group_size=8, batch_prompts=8, epochs=1,
                 hparams=dict(beta=0.0, clip_eps=3e-4, clip_eps_high=4e-4)),
    "trpo": dict(method="trpo", kl_placement="budget", kl_estimator="exact", group_size=8,
                 batch_prompts=8, epochs=1, minibatches=1),
    "dpo": dict(method="dpo", kl_placement="implicit", kl_estimator="exact", batch_prompts=64,
                epochs=1, minibatches=1, hparams=dict(beta=0.1, learning_rate=1e-4)),
    "ipo": dict(method="dpo", kl_placement="implicit", kl_estimator="exact", batch_prompts=64,
                epochs=1, minibatches=1, preference_loss="ipo",
                hparams=dict(beta=0.1, learning_rate=1e-4)),
    "dpo_online": dict(method="dpo_online", kl_placement="implicit", kl_estimator="exact",
                       group_size=2, batch_prompts=32, epochs=1, minibatches=2,
                       hparams=dict(beta=0.1, learning_rate=1e-4)),
    "best_of_n": dict(method="best_of_n", kl_placement="none"),
}
# Presets a registered preference loss brings with it (e.g. SimPO's ``simpo``).
for _name, _loss in preference.LOSSES.items():
    for _preset, _fields in _loss.token_presets.items():
        METHOD_OVERRIDES.setdefault(_preset, dict(_fields, preference_loss=_name))
PRESETS += tuple(p for p in METHOD_OVERRIDES if p not in PRESETS)


def _update(node: ml_collections.ConfigDict, fields: dict) -> None:
    """``node.update(fields)``, descending into groups instead of replacing them."""
    for key, value in fields.items():
        if isinstance(value, dict):
            _update(node[key], value)
        else:
            node[key] = value


def get_config(preset: str = "ppo") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise unknown_preset("token RLHF", preset, PRESETS)
    c = pipeline.defaults()
    c.preset = preset
    c.name = preset  # the policy stage's directory under the pipeline root
    c.stage = {"sft": "sft", "sft_shakespeare": "sft", "reward_model": "reward_model"}.get(
        preset, "policy")
    if preset == "sft_shakespeare":
        c.data.source = "tfds:tiny_shakespeare"
    if preset in METHOD_OVERRIDES:
        _update(c.rl, METHOD_OVERRIDES[preset])
    return c
