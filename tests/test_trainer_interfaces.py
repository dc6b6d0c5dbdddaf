"""The token trainer reads its task only through `kltrust.tasks.interface.TokenTask`.

A toy task that is not the synthetic language (its own vocabulary, EOS and PAD ids, no data sets
and a host-Python gold reward, ``traceable_gold=False``) must run a method's update and the
evaluation through `rlhf.Trainer` unchanged: response lengths, EOS/PAD and the gold reward come
from the task, and a task without the optional ``metrics`` hook reports no task metrics.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rlhf as rlhf_configs
from kltrust.models.transformer import TransformerConfig
from kltrust.tasks.interface import TokenTask
from kltrust.train import pipeline, reward_model, rlhf
from kltrust.train import tokens as tok

# Counts the host gold's calls: proof that the trainer reached the host function.
CALLS = {"gold": 0}


@flax.struct.dataclass
class CountTask:
    """Prompts are random ids; the gold reward (host numpy) counts the response's ``target``
    tokens. Its EOS is 1 (the synthetic language's is 2); PAD is 0."""

    vocab_size: int = flax.struct.field(pytree_node=False, default=9)
    prompt_len: int = flax.struct.field(pytree_node=False, default=3)
    response_len: int = flax.struct.field(pytree_node=False, default=5)
    eos_id: int = flax.struct.field(pytree_node=False, default=1)
    pad_id: int = flax.struct.field(pytree_node=False, default=0)
    target: int = flax.struct.field(pytree_node=False, default=4)

    @property
    def traceable_gold(self) -> bool:
        return False

    def prompts(self, split: str) -> np.ndarray:
        rng = np.random.default_rng(0 if split == "train" else 1)
        return rng.integers(2, self.vocab_size, (16, self.prompt_len)).astype(np.int32)

    def gold_reward(self, prompts, responses, mask):
        assert isinstance(responses, np.ndarray)  # host arrays, as the protocol promises
        CALLS["gold"] += 1
        return ((responses == self.target) & (mask > 0)).sum(-1).astype(np.float32)

    def sft_corpus(self, split: str):
        return None

    def preference_pairs(self, split: str):
        return None

    def decode(self, tokens) -> str:
        return " ".join(str(int(t)) for t in np.asarray(tokens) if t != self.pad_id)


def _trainer(task: CountTask, preset: str) -> tuple[rlhf.Trainer, rlhf.HParams]:
    """The preset's method and hyperparameters, on models sized for ``task``."""
    config = rlhf_configs.get_config(preset)
    config.rl.update(batch_prompts=4, minibatches=1, epochs=1)
    if config.rl.group_size > 2:
        config.rl.group_size = 2
    spec = pipeline.spec_from_config(config)
    model = TransformerConfig(vocab_size=task.vocab_size, num_layers=1, width=16, num_heads=2,
                              max_len=task.prompt_len + task.response_len)
    critic = spec.static.policy.config.critic
    static = dataclasses.replace(
        spec.static, policy=tok.Policy(dataclasses.replace(model, critic=critic)),
        reference=tok.Policy(model), reward_model=reward_model.Scorer(model))
    return rlhf.Trainer(static), jax.tree.map(lambda x: x[0], spec.hparams(1))


@pytest.mark.parametrize("preset", ["ppo", "grpo"])
def test_a_toy_task_with_a_host_gold_runs_through_the_trainer(preset):
    task = CountTask()
    assert isinstance(task, TokenTask)
    trainer, hp = _trainer(task, preset)
    ref_params = trainer.reference.init(jax.random.PRNGKey(1))
    pairs = {"prompt": np.zeros((1, task.prompt_len), np.int32),
             "chosen": np.zeros((1, task.response_len), np.int32)}
    rm_params = reward_model.init_params(trainer.static.reward_model.config, pairs, 2)
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(task.prompts("train")),
                        jnp.asarray(task.prompts("test")), task)

    calls = CALLS["gold"]
    state = jax.jit(trainer.init)(jnp.int32(0), hp, frozen)
    state, metrics = jax.jit(trainer.update)(state, hp, frozen)
    assert CALLS["gold"] > calls  # the host gold ran inside the compiled update
    assert np.isfinite(float(metrics["gold"])) and 0 <= float(metrics["gold"]) <= task.response_len
    assert int(state.update_step) == 1 and int(state.bad_updates) == 0

    metrics, responses = jax.jit(trainer.evaluate)(state, frozen, jax.random.PRNGKey(2))
    responses = np.asarray(responses)
    assert responses.shape == (16, task.response_len)
    # Real tokens up to and including the task's EOS; after it the returned responses hold 0.
    mask = np.cumsum(responses == task.eos_id, axis=1) - (responses == task.eos_id) == 0
    expected = task.gold_reward(None, responses, mask.astype(np.float32)).mean()
    assert float(metrics["gold"]) == pytest.approx(float(expected))
    assert "grammatical" not in metrics  # no ``metrics`` hook: no task metrics
    assert isinstance(task.decode(responses[0]), str)
