"""Non-finite updates are skipped and counted inside the compiled step; too many in a row stop the
run with an error that names the update, the run and the metrics."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ppo as ppo_configs
from configs import trpo as trpo_configs
from kltrust import guards
from kltrust import train as programs
from kltrust.train import control_config, loop
from token_helpers import random_models, tiny_token_config


def _config(family):
    if family == "ppo":
        config = ppo_configs.get_config("cartpole_kl_adaptive")
        config.num_minibatches = 2
    else:
        config = trpo_configs.get_config("cartpole_trpo")
        config.vf_epochs, config.vf_minibatches = 1, 2
    config.num_envs, config.num_steps = 4, 32
    config.total_timesteps, config.updates_per_chunk = 4 * 32 * 6, 2
    return config


def _tree_equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b)))


@pytest.mark.parametrize("family", ["ppo", "trpo"])
def test_a_nan_reward_is_skipped_and_counted_then_training_goes_on(family):
    """Chunks of 2 updates: clean, then NaN rewards (reward_scale = NaN), then clean again."""
    config = _config(family)
    spec = control_config.spec_from_config(config)
    program = programs.program(spec.algorithm)
    trainer = program.make_trainer(spec.static)
    init, run_chunk = program.compile_run(trainer)
    hparams = jax.tree.map(lambda x: x[None], control_config.hparams(config))
    poisoned = hparams.replace(reward_scale=jnp.full((1,), jnp.nan))
    state = init(jnp.zeros(1, jnp.int32), hparams)
    chunk = jax.jit(run_chunk).lower(state, hparams).compile()

    state, clean = chunk(state, hparams)
    assert np.all(clean[guards.SKIPPED] == 0) and np.all(clean[guards.STREAK] == 0)
    before = state
    state, bad = chunk(state, poisoned)
    np.testing.assert_array_equal(bad[guards.SKIPPED], [[1, 1]])
    np.testing.assert_array_equal(bad[guards.STREAK], [[1, 2]])
    # Nothing learned from the poisoned batches: parameters and optimiser state are bit-identical,
    # and the episode statistics did not take a NaN return.
    assert _tree_equal(state.params, before.params)
    opt = "opt_state" if family == "ppo" else "vf_opt_state"
    assert _tree_equal(getattr(state, opt), getattr(before, opt))
    assert np.all(np.isfinite(np.asarray(bad["episode_return"])))
    state, again = chunk(state, hparams)
    np.testing.assert_array_equal(again[guards.STREAK], [[0, 0]])
    assert not _tree_equal(state.params, before.params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def test_the_guard_selects_exactly_and_checks_each_value_once():
    """skip_nonfinite keeps ``old`` where anything is NaN/inf and takes ``new`` otherwise, per
    run; and in the compiled program each leaf's and metric's finiteness is computed once, not
    copied into every leaf's select (XLA did that: 130 ``is-finite`` for these 25 values)."""
    import re

    leaves, seeds = 20, 2
    old = {f"w{i}": jnp.zeros((seeds, 3)) for i in range(leaves)}
    new = {f"w{i}": jnp.ones((seeds, 3)) for i in range(leaves)}
    new["w7"] = new["w7"].at[1, 2].set(jnp.nan)  # run 1 is bad, run 0 is fine
    metrics = {f"m{i}": jnp.zeros((seeds,)) for i in range(5)}
    program = jax.jit(jax.vmap(guards.skip_nonfinite))
    kept, streak, out = program(old, new, metrics, jnp.zeros((seeds,), jnp.int32))
    for name in old:
        np.testing.assert_array_equal(kept[name][0], 1.0)
        np.testing.assert_array_equal(kept[name][1], 0.0)
    np.testing.assert_array_equal(streak, [0, 1])
    np.testing.assert_array_equal(out[guards.SKIPPED], [0.0, 1.0])
    compiled = program.lower(old, new, metrics, jnp.zeros((seeds,), jnp.int32)).compile()
    assert len(re.findall(r" is-finite\(", compiled.as_text())) <= leaves + len(metrics)


def test_too_many_nonfinite_updates_in_a_row_stop_the_run(tmp_path):
    config = _config("ppo")
    config.guards.max_nonfinite_updates = 3
    # A NaN in the config is refused up front (config.hparams.reward_scale must be > 0), so the
    # poison enters as a run's hyperparameters, the way a sweep passes them.
    hparams = jax.tree.map(lambda x: np.asarray(x)[None], control_config.hparams(config))
    hparams = hparams.replace(reward_scale=np.full((1,), np.nan, np.float32))
    with pytest.raises(guards.NonFiniteError,
                       match=r"update 3 \(run 0, seed 0\): 3 updates in a row were not finite "
                             r"\(guards.max_nonfinite_updates = 3\); non-finite metrics: .*"
                             r"policy_loss.*value_loss"):
        loop.train(control_config.spec_from_config(config), tmp_path, progress=False,
                   runs=(np.zeros(1, np.int32), hparams))
    # The updates up to the failing chunk were recorded; nothing after it was checkpointed.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2]


def test_the_guard_limit_is_validated():
    config = _config("ppo")
    config.guards.max_nonfinite_updates = 0
    with pytest.raises(ValueError, match=r"config.guards.max_nonfinite_updates = 0: must be an "
                                         r"integer >= 1"):
        loop.train(control_config.spec_from_config(config), progress=False)


def test_token_ppo_skips_a_poisoned_run_and_the_clean_one_in_the_same_program_learns(tmp_path):
    """Two runs in one vmapped program; run 1's β is NaN, so its KL-shaped rewards are NaN."""
    from kltrust.train import pipeline

    config = tiny_token_config(num_updates=3, updates_per_eval=3)
    pipeline.validate(config)
    ref_params, rm_params = random_models(config)
    hp = pipeline.hparams_from_config(config, 2)
    hp = hp.replace(beta=jnp.array([0.1, jnp.nan]))
    result = pipeline.run_policy(pipeline.spec_from_config(config),
                                 tmp_path, ref_params, rm_params, write=False,
                                 runs=(np.zeros(2, np.int32), hp))
    np.testing.assert_array_equal(result.train_metrics[guards.SKIPPED], [[0, 0, 0], [1, 1, 1]])
    np.testing.assert_array_equal(result.train_metrics[guards.STREAK], [[0, 0, 0], [1, 2, 3]])
    # Both runs start from the reference's trunk; only the clean one moves away from it.
    trunk = lambda p: p["params"]["trunk"]["token_embed"]["embedding"]  # noqa: E731
    np.testing.assert_array_equal(trunk(result.params)[1], trunk(ref_params))
    assert not np.array_equal(trunk(result.params)[0], trunk(ref_params))


# ---------------------------------------------------------------- the KL guard (token RLHF)


def _token_config(budget, **guard):
    config = tiny_token_config(num_updates=8, updates_per_eval=2)
    config.rl.hparams.learning_rate = 3e-3
    config.guards.update(max_sequence_kl=budget, **guard)
    return config


@pytest.fixture(scope="module")
def planted_bug(tmp_path_factory):
    """A reward bug: the proxy's scores multiplied by 1000, so β = 0.1 cannot hold the policy."""
    from kltrust.train import pipeline
    from kltrust.train import tokens as tok

    ref_params, rm_params = random_models(_token_config(0.0))
    score = tok.score
    patch = pytest.MonkeyPatch()
    patch.setattr(tok, "score", lambda *a, **k: 1000.0 * score(*a, **k))
    root = tmp_path_factory.mktemp("kl_guard")

    def run(config, write=False):
        pipeline.validate(config)
        return pipeline.run_policy(pipeline.spec_from_config(config),
                                   root, ref_params, rm_params, write=write)

    yield run, root
    patch.undo()


def test_a_planted_reward_bug_makes_the_kl_explode_without_the_guard(planted_bug):
    run, _ = planted_bug
    kls = [row["kl"] for row in run(_token_config(0.0)).evals]
    assert kls[0] == pytest.approx(0.0, abs=1e-5) and max(kls) > 4.0, kls


def test_the_kl_guard_rolls_back_and_raises_beta(planted_bug):
    run, root = planted_bug
    config = _token_config(3.0, kl_backoff=4.0, max_rollbacks=5)
    with pytest.warns(RuntimeWarning, match="KL guard"):
        result = run(config, write=True)
    assert result.guard_events and all(e["reason"] == "budget" for e in result.guard_events)
    assert all(e["kl"] > 3.0 for e in result.guard_events)
    # Every evaluation that passed, and the final one, stays within the budget.
    rolled = {e["evaluation"] for e in result.guard_events}
    passing = [row["kl"] for row in result.evals if row["update"] // 2 not in rolled]
    assert max(passing) <= 3.0 and result.final[0]["kl"] <= 3.0
    # β went up 4× at each rollback (the fixed controller keeps it there); a rollback at the last
    # of the 4 evaluations has no update after it to show in.
    beta = result.train_metrics["beta"][0]
    raised = len([e for e in result.guard_events if e["evaluation"] < 4])
    assert raised >= 1
    assert beta[0] == pytest.approx(0.1) and beta[-1] == pytest.approx(0.1 * 4.0 ** raised)
    events = [json.loads(line) for line in (root / "ppo" / "events.jsonl").read_text().splitlines()]
    assert events == result.guard_events


def test_too_many_rollbacks_stop_the_stage(planted_bug):
    run, _ = planted_bug
    with pytest.warns(RuntimeWarning, match="KL guard"), pytest.raises(
            guards.KLGuardError, match=r"evaluation \d \(run 0, seed 0\): the KL guard rolled back "
                                       r"more than guards.max_rollbacks = 0 times"):
        run(_token_config(1.0, max_rollbacks=0))


def test_a_warning_alarm_fires_where_the_kl_breaks_the_budget_and_changes_nothing(planted_bug):
    run, _ = planted_bug
    free = run(_token_config(0.0)).evals
    budget = 2.0
    with pytest.warns(RuntimeWarning, match="KL guard: .*'action': 'warn'.*training goes on"):
        warned = run(_token_config(budget, kl_action="warn"))
    # Nothing rolled back: the same numbers as the unguarded run, bit for bit.
    assert [row["kl"] for row in warned.evals] == [row["kl"] for row in free]
    fired = [row["update"] // 2 for row in free if row["update"] and row["kl"] > budget]
    assert fired and [e["evaluation"] for e in warned.guard_events] == fired
    for event in warned.guard_events:
        row = free[event["evaluation"]]
        assert event["reason"] == "budget" and event["action"] == "warn" and "rollback" not in event
        # The event holds what the evaluation saw: its KL, rewards and decoded samples.
        assert (event["kl"], event["gold"], event["proxy"]) == (row["kl"], row["gold"], row["proxy"])
        assert event["samples"] == row["samples"] and len(event["samples"]) == 3


def test_a_stopping_alarm_writes_its_event_and_stops_the_stage(planted_bug):
    run, root = planted_bug
    free = run(_token_config(0.0)).evals
    budget = 2.0
    first = next(row["update"] // 2 for row in free if row["update"] and row["kl"] > budget)
    config = _token_config(budget, kl_action="stop")
    config.name = "ppo_stop"
    with pytest.warns(RuntimeWarning, match="stopping the stage"), pytest.raises(
            guards.KLGuardError, match=rf"evaluation {first} \(run 0, seed 0\): KL alarm "
                                       r"\(budget, KL [0-9.]+\) with guards.kl_action = 'stop'"):
        run(config, write=True)
    events = [json.loads(line)
              for line in (root / "ppo_stop" / "events.jsonl").read_text().splitlines()]
    assert [(e["evaluation"], e["action"]) for e in events] == [(first, "stop")]
    assert events[0]["kl"] == free[first]["kl"] and len(events[0]["samples"]) == 3


def test_a_planted_proxy_bug_pays_its_bonus_per_occurrence_of_its_token():
    from kltrust.train import token_config

    config = tiny_token_config()
    config.proxy_bug.update(token=5, bonus=0.75)
    token_config.validate(config)
    clean = token_config.static_from_config(tiny_token_config()).reward_model
    buggy = token_config.static_from_config(config).reward_model
    assert (buggy.bug_token, buggy.bug_bonus) == (5, 0.75)
    _, rm_params = random_models(config)
    prompts = jnp.array([[1, 3, 4], [1, 6, 7], [1, 8, 9]], jnp.int32)
    response = jnp.array([[5, 5, 3, 5, 2, 0], [4, 6, 2, 0, 0, 0], [5, 2, 0, 5, 5, 5]], jnp.int32)
    mask = (jnp.arange(6) <= jnp.array([[4], [2], [1]])).astype(jnp.float32)  # PAD after EOS
    extra = np.asarray(buggy.score(rm_params, prompts, response, mask)
                       - clean.score(rm_params, prompts, response, mask))
    # 3, 0 and 1 occurrences of token 5 among the real tokens (the padded ones do not count).
    np.testing.assert_allclose(extra, [2.25, 0.0, 0.75], atol=1e-5)  # float32 scores of O(1)


@pytest.mark.parametrize("key,value,message", [
    ("token", 2, r"config.proxy_bug.token = 2: must be -1 \(no bug\) or a word's token id in "
                 r"\[3, 13\)"),
    ("token", 13, r"config.proxy_bug.token = 13: must be -1"),
    ("bonus", -0.5, r"config.proxy_bug.bonus = -0.5: must be finite and >= 0"),
])
def test_a_proxy_bug_outside_the_vocabulary_is_refused(key, value, message):
    from kltrust.errors import ConfigError
    from kltrust.train import token_config

    config = tiny_token_config()
    config.proxy_bug[key] = value
    with pytest.raises(ConfigError, match=message):
        token_config.validate(config)


@pytest.mark.parametrize("action,fired", [("warn", [2, 4]), ("rollback", [2, 3, 4])])
def test_a_jump_is_measured_from_the_last_passing_evaluation(action, fired):
    """KLs 1, 3.5, 5, 16 with kl_jump = 3: "warn" moves the baseline to every evaluation (3.5 is a
    spike over 1, 5 is not one over 3.5, 16 is one over 5); "rollback" keeps it at the last
    passing evaluation (1), so 3.5, 5 and 16 all fire (the rollback itself is a no-op here: the
    state is the same array every time)."""
    import types

    from kltrust.train import kl_guard
    from kltrust.train.token_spec import GuardSpec

    spec = GuardSpec(max_nonfinite_updates=10, max_sequence_kl=0.0, kl_jump=3.0, kl_jump_from=0.5,
                     kl_backoff=2.0, max_rollbacks=10, kl_action=action)
    trainer = types.SimpleNamespace(back_off=lambda state, hp, good, bad, backoff: (good, hp))
    state = {"w": jnp.zeros((1, 2))}
    guard = kl_guard.KLGuard(spec, trainer, state, None, 1)
    hp = {"beta": np.ones(1, np.float32)}
    with pytest.warns(RuntimeWarning, match="KL guard"):
        for i, kl in enumerate([1.0, 3.5, 5.0, 16.0], start=1):
            guard.check(state, hp, np.array([kl]), i, np.array([0]))
    assert [e["evaluation"] for e in guard.events] == fired
    assert all(e["reason"] == "jump" and e["action"] == action for e in guard.events)
