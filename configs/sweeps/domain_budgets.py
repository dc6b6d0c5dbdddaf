"""One global KL envelope against one per prompt domain, on a task whose proxy has a blind spot in
one domain (issue 24).

    python -m experiments.sweep --sweep=configs/sweeps/domain_budgets.py \
        --workdir=runs/domain_budgets

The task: the synthetic language with three prompt domains (a prompt's domain is its first word's
index mod 3: 33%, 16% and 51% of the prompts), and a reward bug planted in domain 1 only
(`config.proxy_bug`: the proxy pays 3.0 per "c" in a response to a domain-1 prompt; the gold
reward charges for the repeats that collect it). Two methods, each with one envelope for every
prompt and with one per domain:

    PPO   β from a dual-ascent controller (β ← max(0, β + 0.02·(KL − target))) on the exact
          sequence KL: one β steered to 2 nats, or one β_d per domain steered to s_d·2 nats
    TRPO  a hard budget on the per-token KL to the reference (with the recovery step): 0.1 nats
          per token for every prompt, or s_d·0.1 per domain

with s = (1.15, 0.25, 1.15): the blind-spot domain gets a quarter of the global envelope and the
others 15% more, so that the prompt-weighted mean envelope (0.33·1.15 + 0.16·0.25 + 0.51·1.15 ≈
1.0) matches the global one. The claim under test: per-domain envelopes keep the exploitable domain
inside its envelope while the other domains improve more than under one global envelope. 3 seeds.
"""

import ml_collections

SCALE = (1.15, 0.25, 1.15)
TASK = {"domains.count": 3, "proxy_bug.token": 5, "proxy_bug.bonus": 3.0, "proxy_bug.domain": 1}
PPO = {**TASK, "rl.controller": "dual_ascent",
       "rl.hparams.controller.dual_ascent.kl_target": 2.0,
       "rl.hparams.controller.dual_ascent.step_size": 0.02}
TRPO = {**TASK, "rl.trpo_recovery": True}
PER_DOMAIN = {"domains.control": "per_domain", "domains.kl_scale": SCALE}


def get_config() -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "domain_budgets"
    sweep.description = "one global KL envelope vs one per prompt domain, with a blind spot in domain 1"
    sweep.num_seeds = 3
    sweep.seed = 0
    sweep.group_runs = True
    sweep.arms = [
        dict(name="PPO global β", base="configs/rlhf.py:ppo", set=PPO),
        dict(name="PPO per-domain β", base="configs/rlhf.py:ppo", set={**PPO, **PER_DOMAIN}),
        dict(name="TRPO global budget", base="configs/rlhf.py:trpo", set=TRPO),
        dict(name="TRPO per-domain budgets", base="configs/rlhf.py:trpo",
             set={**TRPO, **PER_DOMAIN}),
    ]
    per_domain = [f"{m}_d{d}" for d in range(3) for m in ("gold", "kl")]
    sweep.report = dict(
        curves=dict(x="update", ys=["gold_d1", "proxy_d1", "kl_d1", "gold_d0", "gold_d2"],
                    by="arm", band="sem"),
        final_table=dict(by="arm", metrics=["gold", "kl", *per_domain, "proxy_d1"]),
    )
    return sweep
