"""The token RLHF pipeline on a tiny language: SFT, reward model, every policy method."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import rlhf as rlhf_configs
from kltrust.objectives import preference
from kltrust.train import pipeline, rlhf
from kltrust.train import tokens as tok


def tiny(preset: str):
    c = rlhf_configs.get_config(preset)
    c.num_seeds = 2
    c.task.update(num_words=10, successors=3, num_good=2, prompt_len=3, response_len=6)
    c.data.update(num_sft=512, num_prompts=64, num_eval_prompts=16, num_pairs=512,
                  num_eval_pairs=128, seq_len=16)
    for part in (c.model, c.reward_model):
        part.update(num_layers=1, width=16, num_heads=2)
    c.sft.update(steps=150, batch_size=32, eval_every=50, learning_rate=3e-3)
    c.rm.update(steps=100, batch_size=32, eval_every=50, learning_rate=3e-3)
    c.rl.update(num_updates=2, updates_per_eval=1, best_of_n=(1, 4))
    if c.rl.method in ("ppo",):
        c.rl.update(batch_prompts=8, minibatches=2)
    elif c.rl.method in ("grpo", "rloo", "trpo", "dapo", "gspo"):
        c.rl.update(batch_prompts=2, group_size=4, minibatches=1)
    elif c.rl.method == "dpo_online":
        c.rl.update(batch_prompts=8, minibatches=2)
    elif c.rl.method == "dpo":
        c.rl.update(batch_prompts=8)
    return c


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    root = tmp_path_factory.mktemp("rlhf")
    config = tiny("ppo")
    ref_params = pipeline.run_sft(pipeline.spec_from_config(config), root)
    rm_params = pipeline.run_reward_model(pipeline.spec_from_config(config), root)
    return root, ref_params, rm_params


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_loss_falls_and_approaches_the_language(stages):
    root, _, _ = stages
    rows = _rows(root / "sft" / "metrics.jsonl")
    vocab = 13
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] < math.log(vocab)
    # Held-out KL(true ‖ model) per response: small against the ~10 nats of a uniform model.
    assert rows[-1]["kl_true"] < 1.0


def test_reward_model_beats_chance_on_held_out_pairs(stages):
    root, _, _ = stages
    rows = _rows(root / "reward_model" / "metrics.jsonl")
    # 128 held-out pairs: chance is 0.5 with a standard error of 0.044.
    assert rows[-1]["accuracy_gold"] > 0.7


def test_finished_stages_are_reused_and_a_different_config_is_refused(stages):
    root, ref_params, _ = stages
    config = tiny("ppo")
    again = pipeline.run_sft(pipeline.spec_from_config(config), root)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), again, ref_params))
    config.model.width = 32
    with pytest.raises(ValueError, match="different config"):
        pipeline.run_sft(pipeline.spec_from_config(config), root)


METHOD_PRESETS = ["ppo", "ppo_kl_loss", "ppo_nokl", "grpo", "grpo_kl_reward", "rloo", "dapo",
                  "gspo", "trpo",
                  "trpo:none", "dpo", "ipo", "dpo_online"]
# ... and every preset a registered preference loss brings (SimPO's ``simpo``).
METHOD_PRESETS += [name for _, loss in preference.LOSSES.items() for name in loss.token_presets
                   if name not in METHOD_PRESETS]


@pytest.mark.parametrize("preset", METHOD_PRESETS)
def test_each_method_runs_a_few_updates_without_nan(stages, preset):
    root, ref_params, rm_params = stages
    preset, _, placement = preset.partition(":")
    config = tiny(preset)
    if placement:
        config.rl.kl_placement = placement
    result = pipeline.run_policy(pipeline.spec_from_config(config),
                                 root, ref_params, rm_params, write=False)
    for name, values in result.train_metrics.items():
        assert values.shape == (2, 2), name
        assert np.all(np.isfinite(values)), name
    if preset == "dapo":  # the fraction of groups with a reward signal, all of them kept at worst
        kept = result.train_metrics["kept_groups"]
        assert np.all((kept >= 0) & (kept <= 1)) and np.all(kept * 2 == np.round(kept * 2))
    for row in result.evals:
        for key in ("gold", "proxy", "kl", "entropy"):
            assert row[key] is not None and np.isfinite(row[key]), (preset, key)
        assert len(row["samples"]) == 3
    assert result.evals[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # starts at the reference


def test_best_of_n_reports_the_kl_upper_bound(stages):
    root, ref_params, rm_params = stages
    result = pipeline.run_policy(pipeline.spec_from_config(tiny("best_of_n")),
                                 root, ref_params, rm_params, write=False)
    by_n = {row["n"]: row for row in result.evals if row["seed"] == 0}
    assert by_n[1]["kl"] == pytest.approx(0.0, abs=1e-7)
    assert by_n[4]["kl"] == pytest.approx(math.log(4) - 3 / 4, rel=1e-6)
    assert by_n[4]["proxy"] > by_n[1]["proxy"]  # selecting by the proxy raises the proxy


def _ppo_program(stages, **rl):
    root, ref_params, rm_params = stages
    config = tiny("ppo")
    config.rl.update(**rl)
    pipeline.validate(config)
    task = pipeline.synthetic_task(pipeline.spec_from_config(config), root)
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(task.prompts("train")),
                        jnp.asarray(task.prompts("test")), task)
    trainer = rlhf.Trainer(pipeline.static_from_config(config))
    return config, trainer, frozen


def test_large_beta_stays_near_the_reference_and_zero_beta_drifts(stages):
    """One compiled program, two runs: β = 0 and β = 2 (KL in the reward), same seed."""
    config, trainer, frozen = _ppo_program(stages, updates_per_eval=12, num_updates=12,
                                           batch_prompts=16)
    config.rl.hparams.learning_rate = 3e-3
    hp = pipeline.hparams_from_config(config, 2).replace(beta=jnp.array([0.0, 2.0]))
    seeds = jnp.zeros((2,), jnp.int32)
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, 0, None)))(seeds, hp, frozen)
    chunk = jax.jit(jax.vmap(trainer.run_chunk, in_axes=(0, 0, None)))
    end, metrics = chunk(state, hp, frozen)
    kl_free, kl_held = np.asarray(metrics["kl"][:, -3:].mean(axis=1))
    assert kl_free > 3 * kl_held, (kl_free, kl_held)
    # Same seed, same numbers: the program is deterministic on CPU.
    end_again, metrics_again = chunk(state, hp, frozen)
    for name in metrics:
        np.testing.assert_array_equal(metrics[name], metrics_again[name])


def test_reference_is_never_run_without_a_kl(stages):
    """kl_placement='none': a NaN reference cannot leak into training (it is never evaluated)."""
    config, trainer, frozen = _ppo_program(stages, kl_placement="none", updates_per_eval=1,
                                           num_updates=1)
    hp = pipeline.hparams_from_config(config, 1).replace(beta=jnp.zeros((1,)))
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, 0, None)))(
        jnp.zeros((1,), jnp.int32), hp, frozen)
    poisoned = frozen.replace(ref_params=jax.tree.map(lambda x: x * jnp.nan, frozen.ref_params))
    _, metrics = jax.jit(jax.vmap(trainer.run_chunk, in_axes=(0, 0, None)))(state, hp, poisoned)
    assert "kl" not in metrics
    assert all(np.all(np.isfinite(v)) for v in metrics.values())


def test_a_reference_free_preference_loss_never_runs_the_reference_in_training(stages):
    """SimPO (offline): a NaN reference cannot reach its updates; DPO's would be NaN."""
    root, ref_params, rm_params = stages
    for preset, reference_free in (("simpo", True), ("dpo", False)):
        config = tiny(preset)
        config.rl.update(updates_per_eval=1, num_updates=1)
        pipeline.validate(config)
        task = pipeline.synthetic_task(pipeline.spec_from_config(config), root)
        pairs = {k: jnp.asarray(v) for k, v in task.preference_pairs("train").items()
                 if k in ("prompt", "chosen", "chosen_mask", "rejected", "rejected_mask")}
        poisoned = jax.tree.map(lambda x: x * jnp.nan, ref_params)
        frozen = tok.Frozen(poisoned, rm_params, jnp.asarray(task.prompts("train")),
                            jnp.asarray(task.prompts("test")), task, pairs)
        trainer = rlhf.Trainer(pipeline.static_from_config(config))
        hp = pipeline.hparams_from_config(config, 1)
        # Initialised from healthy reference weights; only the frozen reference is poisoned.
        state = jax.jit(jax.vmap(trainer.init, in_axes=(0, 0, None)))(
            jnp.zeros((1,), jnp.int32), hp, frozen.replace(ref_params=ref_params))
        _, metrics = jax.jit(jax.vmap(trainer.run_chunk, in_axes=(0, 0, None)))(state, hp, frozen)
        finite = all(np.all(np.isfinite(v)) for v in metrics.values())
        assert finite == reference_free, preset


@pytest.mark.parametrize("field, value, message", [
    ("rl.kl_placement", "loss", None),
    ("rl.kl_placement", "budget", "rl.kl_placement = 'budget': must be one of"),
    ("rl.kl_estimator", "k4", "rl.kl_estimator = 'k4'"),
    ("rl.minibatches", 3, "rl.minibatches = 3: must be a divisor of the batch"),
    ("rl.hparams.beta", -0.1, "config.rl.hparams.beta = -0.1"),
    ("rl.updates_per_eval", 3, "rl.updates_per_eval = 3"),
    ("data.label_noise", 0.5, "data.label_noise = 0.5"),
    ("model.critic", "none", "model.critic = 'none'"),
    ("rl.controller", "pid", None),  # every registered controller kind runs on tokens
    ("rl.controller", "pdi", "rl.controller = 'pdi': must be one of"),
    ("rl.hparams.controller.pid.kpp", 1.0, "config.rl.hparams.controller.pid.kpp: unknown key"),
])
def test_config_errors_are_raised_before_anything_runs(field, value, message):
    config = tiny("ppo")
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    if message is None:
        pipeline.validate(config)
        return
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        pipeline.validate(config)


def test_group_methods_refuse_k1_in_the_loss_and_groups_of_one():
    config = tiny("grpo")
    config.rl.kl_estimator = "k1"
    with pytest.raises(ValueError, match="zero expected gradient"):
        pipeline.validate(config)
    config = tiny("grpo")
    config.rl.group_size = 1
    with pytest.raises(ValueError, match="rl.group_size = 1"):
        pipeline.validate(config)


def test_policy_stage_writes_its_outputs_and_refuses_to_overwrite(stages):
    root, ref_params, rm_params = stages
    config = tiny("dpo")
    config.name = "dpo_outputs"
    pipeline.run_policy(pipeline.spec_from_config(config), root, ref_params, rm_params)
    out = root / "dpo_outputs"
    for name in ("metrics.jsonl", "eval.jsonl", "results.json", "gold_proxy_vs_kl.png",
                 "params.msgpack", "config.json"):
        assert (out / name).exists(), name
    final = json.loads((out / "results.json").read_text())["final"]
    assert {row["seed"] for row in final} == {0, 1}
    before = (out / "eval.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds results"):
        pipeline.run_policy(pipeline.spec_from_config(config), root, ref_params, rm_params)
    assert (out / "eval.jsonl").read_text() == before


def test_real_text_sft_runs_on_mocked_tfds_data(tmp_path):
    """The sft_shakespeare preset on tfds.testing.mock_data: byte tokens in, falling loss out."""
    import tensorflow_datasets as tfds

    config = tiny("sft_shakespeare")
    config.sft.update(steps=40, eval_every=20, batch_size=8)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        params = pipeline.run(pipeline.spec_from_config(config), tmp_path)
    rows = _rows(tmp_path / "sft" / "metrics.jsonl")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[0]["train_loss"] < math.log(259) + 0.5  # cross-entropy over 259 byte tokens
    embed = params["params"]["trunk"]["token_embed"]["embedding"]
    assert embed.shape[0] == 259


def test_group_method_reads_the_estimator_clamps_and_importance_correction(stages):
    """GRPO with k3_is in the loss: the clamp knobs reach the compiled program as arrays (one
    program, two runs): an output clamp v bounds every penalised term, so the penalty's mean ≤ v,
    while the unclamped run (v = inf) penalises more once the policy has left the reference."""
    root, ref_params, rm_params = stages
    config = tiny("grpo")
    config.rl.update(kl_estimator="k3_is", num_updates=3, updates_per_eval=3, epochs=2)
    config.rl.hparams.learning_rate = 3e-2
    pipeline.validate(config)
    task = pipeline.synthetic_task(pipeline.spec_from_config(config), root)
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(task.prompts("train")),
                        jnp.asarray(task.prompts("test")), task)
    trainer = rlhf.Trainer(pipeline.static_from_config(config))
    hp = pipeline.hparams_from_config(config, 2)
    hp = hp.replace(kl_value_clamp=jnp.array([jnp.inf, 1e-6], jnp.float32))
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, 0, None)))(
        jnp.zeros((2,), jnp.int32), hp, frozen)
    _, metrics = jax.jit(jax.vmap(trainer.run_chunk, in_axes=(0, 0, None)))(state, hp, frozen)
    free, clamped = np.asarray(metrics["kl_penalty"][:, -1])
    assert clamped <= 1e-6 < free, (free, clamped)


def test_a_synced_reference_follows_the_policy_in_the_compiled_program(stages):
    """rl.ref_sync, τ swept as an array (one program, two runs, the same seed), α = 1, 3 updates.
    Run 0 (τ = 2) syncs after update 2, so update 3 samples from a policy equal to its reference:
    the applied KL is exactly 0 there, while run 1's is not; run 1 (τ = 3) syncs after update 3 and
    ends with its reference equal to its policy bit for bit. Before the first sync the runs agree."""
    root, ref_params, rm_params = stages
    config = tiny("grpo")
    config.rl.update(ref_sync=True, num_updates=3, updates_per_eval=3)
    config.rl.hparams.update(learning_rate=3e-2, ref_sync_alpha=1.0)
    pipeline.validate(config)
    task = pipeline.synthetic_task(pipeline.spec_from_config(config), root)
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(task.prompts("train")),
                        jnp.asarray(task.prompts("test")), task)
    trainer = rlhf.Trainer(pipeline.static_from_config(config))
    hp = pipeline.hparams_from_config(config, 2).replace(
        ref_sync_every=jnp.array([2.0, 3.0], jnp.float32))
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, 0, None)))(
        jnp.zeros((2,), jnp.int32), hp, frozen)
    end, metrics = jax.jit(jax.vmap(trainer.run_chunk, in_axes=(0, 0, None)))(state, hp, frozen)
    for synced, policy, original in zip(jax.tree.leaves(end.ref_params), jax.tree.leaves(end.params),
                                        jax.tree.leaves(ref_params)):
        np.testing.assert_array_equal(synced[1], policy[1])
    first = lambda tree: jax.tree.leaves(tree)[0]  # noqa: E731
    assert not np.array_equal(first(end.ref_params)[0], first(ref_params))  # run 0 moved ...
    assert not np.array_equal(first(end.ref_params)[0], first(end.params)[0])  # ... at update 2
    assert metrics["kl"][0, 2] == 0.0 < metrics["kl"][1, 2]
    for name in metrics:  # the same seed and the same reference until the first sync
        np.testing.assert_array_equal(metrics[name][0, :2], metrics[name][1, :2], err_msg=name)
