"""Tokens per second of sampling (KV cache) and of the token-PPO update, default rlhf model.

    python -m benchmarks.token_throughput [--batch=64,256] [--repeats=5]

Sampling: one jitted `kltrust.rollout.sample_tokens` call (prefill + 12 cached decode steps) on
``batch`` prompts, response tokens per second (padding after EOS counted, as it is computed).
PPO update: one jitted `kltrust.train.rlhf.Trainer.update` (rollout with the reference, proxy
scoring, GAE, 2 epochs × 4 minibatches of Adam) on ``batch`` prompts; tokens per second =
batch × response length / update time. Random (untrained) weights: speed does not depend on them.
Median of ``repeats`` timed calls after one warm-up call (compile excluded).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks import bench_util
from configs import rlhf as rlhf_configs
from kltrust import rollout
from kltrust.models.transformer import SequenceScorer
from kltrust.tasks import text
from kltrust.tasks.synthetic.task import SyntheticTask
from kltrust.train import pipeline, rlhf, token_config
from kltrust.train import tokens as tok

_BATCH = flags.DEFINE_list("batch", ["64", "256"], "Prompts per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement.")


def _median_seconds(fn, *args) -> float:
    """Median seconds of ``--repeats`` blocking calls ``fn(*args)`` after one warm-up (compile)."""
    return float(np.median(bench_util.call_times(lambda: jax.block_until_ready(fn(*args)),
                                                 _REPEATS.value)))


def main(argv: Sequence[str]) -> None:
    del argv
    config = rlhf_configs.get_config("ppo")
    # The config layer's static pieces, unvalidated: the batch sizes below are any the flag gives.
    spec = token_config.language_spec(config)
    language = text.make_language(spec)
    static = token_config.static_from_config(config)
    policy = static.reference
    params = policy.init(jax.random.PRNGKey(0))
    rm_config = static.reward_model.config
    length = spec.prompt_len + spec.response_len
    rm_params = SequenceScorer(rm_config).init(jax.random.PRNGKey(1),
                                               jnp.zeros((1, length), jnp.int32),
                                               jnp.ones((1, length)))
    print(f"device: {jax.devices()[0].device_kind}; policy {config.model.num_layers} layers × "
          f"{config.model.width} wide, vocab {spec.vocab_size}, {spec.response_len} new tokens")
    for batch in map(int, _BATCH.value):
        prompts = text.sample_prompts(language, jax.random.PRNGKey(2), batch)
        sample = jax.jit(lambda key: rollout.sample_tokens(
            policy.decode, params, prompts, policy.empty_cache(batch), key,
            max_new_tokens=spec.response_len, eos_id=text.EOS, pad_id=text.PAD))
        seconds = _median_seconds(sample, jax.random.PRNGKey(3))
        print(f"batch {batch:4d}: sampling    {batch * spec.response_len / seconds:10,.0f} tokens/s "
              f"({seconds * 1e3:.1f} ms per call)")

        config.rl.batch_prompts = batch
        trainer = rlhf.Trainer(pipeline.static_from_config(config))
        frozen = tok.Frozen(params, rm_params, prompts, prompts, SyntheticTask(language))
        hp = jax.tree.map(lambda x: x[0], pipeline.hparams_from_config(config, 1))
        state = jax.jit(trainer.init)(0, hp, frozen)
        update = jax.jit(lambda st: trainer.update(st, hp, frozen))
        seconds = _median_seconds(update, state)
        print(f"batch {batch:4d}: PPO update  {batch * spec.response_len / seconds:10,.0f} tokens/s "
              f"({seconds * 1e3:.1f} ms per update)")


if __name__ == "__main__":
    app.run(main)
