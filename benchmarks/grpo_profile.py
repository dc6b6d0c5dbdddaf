"""Where one GRPO update's time goes on SmolLM2-135M with LoRA (benchmarks/trl_real.py's step).

    python -m benchmarks.grpo_profile [--repeats=3] [--profile]

The same model, adapters and shapes as `benchmarks.trl_real`'s GRPO row (configs/real.py's
``grpo`` preset: 4 prompts × 4 samples, prompt 19 + 24 sampled tokens, LoRA rank 8 on q, k, v, o,
float32). Each phase is compiled on its own and timed directly (median of ``--repeats`` calls
after one untimed call), then the whole update (`rlhf.Trainer.update`, as the benchmark's chunk
runs it) for comparison:

    sample          16 × 24 tokens with the KV cache (`rollout.sample_tokens`, the LoRA policy)
    policy forward  the policy's teacher-forced forward over prompt + response (the rollout's
                    statistics; ``rl.sampler_stats`` removes it)
    reference fwd   the base's teacher-forced forward (reference log-probs, exact KL)
    proxy           the reward's trunk forward (`TrunkReward.score`)
    loss fwd + bwd  the value and gradient of a token log-prob loss in the adapters, the shape of
                    GRPO's loss (the policy's forward and its backward)

What the update spends beyond the phases' sum (the optimiser, the metrics, VADER's gold reward
through a host callback, the guard) is the rest. Phases compiled apart can fuse differently from
the whole program, so the split is a guide, not an identity. ``--profile`` also traces one
sampling call (`bench_util.executed_ops`: what XLA's CPU runtime ran, by kind of operation).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks import bench_util
# trl_real's sizes, and its --repeats flag (timed calls per phase here; the median is reported).
from benchmarks.trl_real import (_REPEATS, GRPO_GROUP, GRPO_PROMPTS, LORA_ALPHA, LORA_RANK, MODEL,
                                 RESPONSE_LEN)

_PROFILE = flags.DEFINE_bool("profile", False, "Also trace one sampling call, by operation kind.")


def build():
    """(trainer, state, hp, frozen, prompts) of the benchmark's GRPO step."""
    from configs import real as real_configs
    from kltrust.models import lora, pretrained
    from kltrust.models.pretrained.config import ArchConfig
    from kltrust.models.trunk_reward import TrunkReward
    from kltrust.tasks.sentiment import SentimentTask
    from kltrust.train import real_config, rlhf
    from kltrust.train import tokens as tok

    base = pretrained.load(MODEL, "float32")
    task = SentimentTask.create(base.tokenizer, None, RESPONSE_LEN)
    base = dataclasses.replace(base, config=ArchConfig.from_dict(
        {**base.config.to_dict(), "max_len": task.prompt_len + RESPONSE_LEN}))
    ref_params = jax.tree.map(jnp.asarray, base.init(jax.random.PRNGKey(0)))
    rng = np.random.default_rng(0)
    head = {"w": jnp.asarray(rng.standard_normal(base.width) / np.sqrt(base.width), jnp.float32),
            "b": jnp.float32(0.0)}
    config = real_configs.get_config("grpo")
    config.model.update(lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA, lora_targets="attention")
    config.rl.update(updates_per_eval=1)
    spec = real_config.spec_from_config(config)
    static = dataclasses.replace(spec.static, policy=lora.LoRAModel(base, spec.lora),
                                 reference=base, reward_model=TrunkReward(base, "mean"))
    prompts = task.prompts("train")
    frozen = tok.Frozen(ref_params, {"trunk": ref_params, "head": head}, jnp.asarray(prompts),
                        jnp.asarray(prompts[:4]), task, None)
    trainer = rlhf.Trainer(static)
    hp = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), spec.hparams_values)
    state = jax.jit(trainer.init)(0, hp, frozen)
    batch = GRPO_PROMPTS * GRPO_GROUP
    return trainer, state, hp, frozen, jnp.asarray(prompts[:batch])


def main(argv: Sequence[str]) -> None:
    del argv
    from kltrust import rollout

    logging.set_verbosity(logging.WARNING)
    bench_util.apply_threads(None)
    trainer, state, hp, frozen, prompts = build()
    policy, base, task = trainer.policy, trainer.reference, frozen.task
    batch = prompts.shape[0]
    key = jax.random.PRNGKey(1)

    def sample(params):
        return rollout.sample_tokens(policy.decode, params, prompts, policy.empty_cache(batch), key,
                                     max_new_tokens=RESPONSE_LEN, eos_id=task.eos_id,
                                     pad_id=task.pad_id)

    response, mask, _ = jax.jit(sample)(state.params)  # what the later phases score
    advantage = jax.random.normal(key, (batch, 1))

    def loss(params):
        logits, _ = rollout.response_logits(policy.sequence, params, prompts, response)
        return -(rollout.token_log_probs(logits, response, mask) * advantage).sum()

    phases = {
        "sample": (sample, state.params),
        "policy forward": (lambda p: rollout.response_logits(
            policy.sequence, p, prompts, response)[0], state.params),
        "reference forward": (lambda p: rollout.response_logits(
            base.sequence, p, prompts, response)[0], frozen.ref_params),
        "proxy": (lambda p: trainer.static.reward_model.score(p, prompts, response, mask),
                  frozen.rm_params),
        "loss forward + backward": (jax.grad(loss), state.params),
        # The state and the frozen inputs as arguments: a closed-over array would be a constant
        # of the compiled program (and XLA would fold the embedding's transpose at compile time).
        "whole update": (lambda a: trainer.update(a[0], hp, a[1]), (state, frozen)),
    }
    times = {}
    for name, (fn, arg) in phases.items():
        compiled = jax.jit(fn).lower(arg).compile()
        calls = bench_util.call_times(lambda: jax.block_until_ready(compiled(arg)),
                                      _REPEATS.value)
        times[name] = statistics.median(calls)
        print(f"{name}: {times[name]:.2f} s ({', '.join(f'{t:.2f}' for t in calls)})", flush=True)
        if name == "sample" and _PROFILE.value:
            ops = bench_util.executed_ops(lambda: jax.block_until_ready(compiled(arg)))
            print(f"  busy {sum(ns for _, ns in ops.values()) / 1e9:.2f} s; the largest kinds:")
            for kind, (n, ns) in sorted(ops.items(), key=lambda kv: -kv[1][1])[:8]:
                print(f"  {kind}: {n:,} ops, {ns / 1e9:.3f} s, {ns / n / 1e3:.1f} µs each")
    whole = times.pop("whole update")
    print(f"\n| phase | s | share of the update |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {t:.2f} | {t / whole:.0%} |")
    print(f"| the rest | {whole - sum(times.values()):.2f} | "
          f"{(whole - sum(times.values())) / whole:.0%} |")
    print(f"| whole update | {whole:.2f} | 100% |")


if __name__ == "__main__":
    app.run(main)
