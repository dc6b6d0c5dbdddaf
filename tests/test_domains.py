"""Prompt domains (`kltrust.domains`): per-domain statistics, per-domain β controllers, the
per-domain KL guard and the blind-spot reward bug, against NumPy restatements."""

from __future__ import annotations

import json
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import controllers, domains
from kltrust.objectives import grpo
from token_helpers import random_models, tiny_token_config


def test_domain_means_restate_numpy_and_an_empty_domain_is_zero_not_nan():
    rng = np.random.default_rng(0)
    values = rng.normal(size=12).astype(np.float32)
    ids = np.array([0, 2, 2, 0, 3, 0, 2, 3, 3, 0, 2, 0])  # domain 1 has no row
    means, counts = domains.domain_means(jnp.asarray(values), jnp.asarray(ids), 4)
    expected = [values[ids == d].astype(np.float64).mean() if (ids == d).any() else 0.0
                for d in range(4)]
    # float32 sums of ≤ 5 values of O(1): a few ulps of 1.
    np.testing.assert_allclose(means, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(counts, [5, 0, 4, 3])
    shown = domains.metrics({"kl": jnp.asarray(values)}, jnp.asarray(ids), 4)
    assert sorted(shown) == ["kl_d0", "kl_d1", "kl_d2", "kl_d3"]
    assert np.isnan(shown["kl_d1"])  # reported as no measurement, never as a zero KL
    assert domains.is_domain_metric("kl_d3") and not domains.is_domain_metric("kl_k1")
    assert domains.metrics({"kl": jnp.asarray(values)}, jnp.asarray(ids), 1) == {}


@pytest.mark.parametrize("kind", ["adaptive", "proportional", "pid", "dual_ascent"])
def test_per_domain_controllers_equal_separate_single_domain_controllers(kind):
    """Three domains with targets s_d·kl_target, fed interleaved batches (a domain absent from a
    batch is not fed): the [D] state equals three scalar controllers each fed only its own
    domain's batches. Elementwise float32 arithmetic on a vector and on scalars: equal to a few
    ulps (XLA may vectorise the vector path differently)."""
    controller = controllers.get(kind)
    hp = controller.hparams(**{name: jnp.float32(k.default)
                               for name, k in controllers.components.knobs(
                                   controller.hparams).items()})
    scale = np.array([0.5, 1.0, 4.0], np.float32)
    state = domains.init_controller(controller, jnp.float32(0.2), hp, jnp.asarray(scale))
    singles = [controller.init(0.2, hp.replace(kl_target=hp.kl_target * s)) for s in scale]
    rng = np.random.default_rng(1)
    for _ in range(12):
        observed = rng.uniform(0.0, 0.05, size=3).astype(np.float32)
        counts = rng.integers(0, 3, size=3).astype(np.float32)  # some domains absent
        state = domains.update_controller(controller, state, jnp.asarray(observed),
                                          jnp.asarray(counts))
        singles = [controller.update(s, observed[d], counts[d]) if counts[d] else s
                   for d, s in enumerate(singles)]
    np.testing.assert_allclose(state.beta, [s.beta for s in singles], rtol=1e-6)


def test_a_per_sequence_beta_in_the_group_loss_is_the_scalar_loss_when_equal_and_weights_rows():
    """reduce(β_i·k_it): equal β_i give β·reduce(k) (the scalar path); β = (0, b) leaves only
    the second sequence's KL term, b·mean_t k_2t / 2 under the sequence average."""
    rng = np.random.default_rng(2)
    new, old, ref = (jnp.asarray(rng.normal(-1.5, 0.3, (2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]], jnp.float32)
    adv = jnp.zeros(2)
    variant = grpo.Variant(kl_estimator="k3", kl_in_loss=True)
    loss = lambda beta: grpo.loss(new, old, adv, mask, grpo.LossCoefs(0.2, beta),  # noqa: E731
                                  variant=variant, ref_logp=ref)[0]
    np.testing.assert_allclose(loss(jnp.array([0.3, 0.3])), loss(jnp.float32(0.3)), rtol=1e-6)
    k3 = np.expm1(np.float64(ref) - np.float64(new)) - (np.float64(ref) - np.float64(new))
    expected = 0.7 * k3[1].mean() / 2  # policy term 0: zero advantages
    np.testing.assert_allclose(loss(jnp.array([0.0, 0.7])), expected, rtol=1e-5)


def test_a_blind_spot_bug_pays_only_in_its_domain():
    from kltrust.tasks.synthetic.language import prompt_domains
    from kltrust.train import token_config

    config = tiny_token_config()
    config.domains.count = 3
    config.proxy_bug.update(token=5, bonus=0.75, domain=1)
    token_config.validate(config)
    buggy = token_config.static_from_config(config).reward_model
    clean = token_config.static_from_config(tiny_token_config()).reward_model
    _, rm_params = random_models(config)
    prompts = jnp.array([[1, 3, 4], [1, 4, 7], [1, 5, 9], [1, 7, 9]], jnp.int32)
    np.testing.assert_array_equal(prompt_domains(prompts, 3), [0, 1, 2, 1])  # (w₁ − 3) mod 3
    response = jnp.full((4, 6), 5, jnp.int32)
    mask = jnp.ones((4, 6), jnp.float32)
    extra = np.asarray(buggy.score(rm_params, prompts, response, mask)
                       - clean.score(rm_params, prompts, response, mask))
    np.testing.assert_allclose(extra, [0.0, 4.5, 0.0, 4.5], atol=1e-5)  # 6 × 0.75 in domain 1


@pytest.mark.parametrize("key,value,message", [
    ("domains.count", 0, r"config.domains.count = 0: must be an integer in \[1, task.num_words"),
    ("domains.kl_scale", (1.0, 2.0), r"config.domains.kl_scale = \(1.0, 2.0\): must be empty"),
    ("domains.kl_scale", (1.0, 0.0, 1.0), r"config.domains.kl_scale = \(1.0, 0.0, 1.0\)"),
    ("domains.control", "per_prompt", r"config.domains.control = 'per_prompt'"),
    ("proxy_bug.domain", 3, r"config.proxy_bug.domain = 3: must be -1 \(every prompt\) or a "
                            r"domain id in \[0, domains.count = 3\)"),
])
def test_bad_domain_settings_are_refused(key, value, message):
    from kltrust.errors import ConfigError
    from kltrust.train import token_config

    config = tiny_token_config()
    config.domains.count = 3
    group, name = key.split(".")
    config[group][name] = value
    with pytest.raises(ConfigError, match=message):
        token_config.validate(config)


@pytest.mark.parametrize("preset,placement,message", [
    ("ppo", "loss", r"'global' for method 'ppo' with rl.kl_placement 'loss'"),
    ("dpo", "implicit", r"'global' for method 'dpo' with rl.kl_placement 'implicit'"),
])
def test_per_domain_control_needs_a_supported_placement(preset, placement, message):
    from kltrust.errors import ConfigError
    from kltrust.train import token_config

    config = tiny_token_config(preset, kl_placement=placement)
    config.domains.update(count=2, control="per_domain")
    with pytest.raises(ConfigError, match=message):
        token_config.validate(config)
    config.domains.count = 1
    with pytest.raises(ConfigError, match=r"'global' when domains.count is 1"):
        token_config.validate(config)


def test_the_per_domain_guard_fires_per_domain_and_strengthens_only_that_domain():
    """Budgets s_d·0.1 with s = (1, 0.5, 10): KLs (0.08, 0.06, 0.5) break only domain 1's (0.05)
    although the run's mean KL and domain 2's KL exceed the global 0.1; the back-off factor is 2
    for domain 1 and 1 elsewhere; an empty domain (NaN) fires nothing."""
    from kltrust.train import kl_guard
    from kltrust.train.token_spec import GuardSpec

    spec = GuardSpec(max_nonfinite_updates=10, max_sequence_kl=0.1, kl_jump=0.0, kl_jump_from=0.5,
                     kl_backoff=2.0, max_rollbacks=10, kl_action="rollback")
    # The stand-in back-off hands the factor it was given back as the hyperparameters.
    trainer = types.SimpleNamespace(
        back_off=lambda state, hp, good, bad, factor: (good, {"factor": factor}))
    state = {"w": jnp.zeros((1, 2))}
    guard = kl_guard.KLGuard(spec, trainer, state, None, 1, np.array([1.0, 0.5, 10.0]),
                             per_domain_anchor=True)
    hp = {"beta": np.ones(1, np.float32)}
    rows = [{"gold": 1.0, "samples_d1": ["a → b"], "gold_d1": -2.0}]
    with pytest.warns(RuntimeWarning, match="KL guard"):
        _, factor, rolled = guard.check(state, hp, np.array([0.2]), 1, np.array([0]), rows,
                                        np.array([[0.08, 0.06, 0.5]]))
    (event,) = guard.events
    assert [d["domain"] for d in event["domains"]] == [1]
    assert event["domains"][0]["budget"] == pytest.approx(0.05)
    assert event["domains"][0]["samples"] == ["a → b"] and event["domains"][0]["gold"] == -2.0
    assert rolled
    np.testing.assert_array_equal(factor["factor"], [[1.0, 2.0, 1.0]])
    guard.check(state, hp, np.array([0.05]), 2, np.array([0]), rows,
                np.array([[0.08, np.nan, 0.5]]))
    assert len(guard.events) == 1
    # Under one global envelope (s_d = 1, one β) the same KLs fire domain 2 alone (0.5 > 0.1),
    # and the one β is strengthened by the full factor.
    glob = kl_guard.KLGuard(spec, trainer, state, None, 1, np.ones(3))
    with pytest.warns(RuntimeWarning, match="KL guard"):
        _, factor, _ = glob.check(state, hp, np.array([0.09]), 1, np.array([0]), rows,
                                  np.array([[0.08, 0.06, 0.5]]))
    assert [d["domain"] for d in glob.events[0]["domains"]] == [2]
    np.testing.assert_array_equal(factor["factor"], [2.0])


@pytest.fixture(scope="module")
def per_domain_run(tmp_path_factory):
    """A tiny PPO run with three domains and one adaptive β per domain (targets 0.01·s_d, s =
    (0.1, 1, 10)), 4 updates."""
    from kltrust.train import pipeline, token_config

    config = tiny_token_config("ppo", num_updates=4, updates_per_eval=2, controller="adaptive")
    config.domains.update(count=3, kl_scale=(0.1, 1.0, 10.0), control="per_domain")
    spec = token_config.spec_from_config(config)
    ref, rm = random_models(spec)
    root = pathlib.Path(tmp_path_factory.mktemp("domains"))
    return pipeline.run_policy(spec, root, ref, rm, write=False)


def test_each_domain_beta_follows_the_adaptive_rule_on_its_own_kl(per_domain_run):
    """β_d,t+1 from β_d,t and KL_d,t (both recorded per update) by the paper's rule with target
    0.01·s_d, restated in NumPy; a domain absent from a batch (KL NaN) keeps its β."""
    m = per_domain_run.train_metrics
    targets = 0.01 * np.array([0.1, 1.0, 10.0])
    moved = 0
    for d, target in enumerate(targets):
        beta, kl = np.asarray(m[f"beta_d{d}"][0], np.float64), np.asarray(m[f"kl_d{d}"][0])
        for t in range(len(beta) - 1):
            expected = beta[t]
            if np.isfinite(kl[t]) and kl[t] > 1.5 * target:
                expected = 2 * beta[t]
            elif np.isfinite(kl[t]) and kl[t] < target / 1.5:
                expected = beta[t] / 2
            moved += expected != beta[t]
            assert beta[t + 1] == pytest.approx(expected, rel=1e-6), (d, t)
    assert moved >= 2  # the test sees the rule act, not only β standing still
    assert np.asarray(m["beta"][0]) == pytest.approx(
        np.mean([m[f"beta_d{d}"][0] for d in range(3)], axis=0), rel=1e-6)
    final = per_domain_run.final[0]
    assert {f"{k}_d{d}" for k in ("gold", "proxy", "kl") for d in range(3)} <= set(final)
    json.dumps(final)  # per-domain rows stay valid JSON (an empty domain is None, not NaN)
    # Each domain's samples are its own prompts' (prompt → response), at most three.
    for d in range(3):
        assert 1 <= len(final[f"samples_d{d}"]) <= 3
        assert all(" → " in s for s in final[f"samples_d{d}"])


def test_trpo_keeps_each_domain_within_its_own_budget_on_a_short_run(tmp_path):
    """Token TRPO with budgets s_d·0.002 per token, s = (1, 0.25, 4): after every accepted update
    each domain's exact per-token KL to the reference on that batch (re-measured by the line
    search at the accepted step) is within its own budget, though the loosest domain uses more
    than the tightest one's budget (so the budgets are not one global budget in disguise)."""
    from kltrust.train import pipeline, token_config

    config = tiny_token_config("trpo", num_updates=6, updates_per_eval=3, group_size=2)
    config.rl.hparams.kl_budget_per_token = 0.002
    config.domains.update(count=3, kl_scale=(1.0, 0.25, 4.0), control="per_domain")
    spec = token_config.spec_from_config(config)
    ref, rm = random_models(spec)
    m = pipeline.run_policy(spec, tmp_path, ref, rm, write=False).train_metrics
    budgets = 0.002 * np.array([1.0, 0.25, 4.0])
    accepted = np.asarray(m["trpo_accepted"][0]) == 1
    assert accepted.sum() >= 3
    kl_d = np.stack([np.asarray(m[f"trpo_kl_ref_d{d}"][0]) for d in range(3)], -1)
    # The same float32 numbers the line search compared with the float32 budgets.
    assert np.all(kl_d[accepted] <= budgets.astype(np.float32))
    assert np.all(np.asarray(m["trpo_kl_ref_excess"][0])[accepted] == 0)
    assert kl_d[accepted, 2].max() > budgets[1]


def test_back_off_strengthens_only_the_domains_that_fired():
    """`anchor.back_off` with a per-domain factor (2 for domain 1, 1 elsewhere) on a rolled-back
    run: the parameters return to the last passing state's, β_1 doubles, β_0 and β_2 keep their
    current values, and the shared learning rate is untouched (every β_d > 0)."""
    from kltrust.train import anchor, rlhf
    from kltrust.train import tokens as tok

    controller = controllers.get("fixed")
    beta = jnp.array([0.1, 0.2, 0.4], jnp.float32)

    def state(w):
        params = {"w": jnp.full((2,), w, jnp.float32)}
        opt = tok.set_learning_rate(tok.adam(1.0).init(params), jnp.float32(1e-3))
        return rlhf.TrainState(params, opt, controller.init(beta), jax.random.PRNGKey(0),
                               jnp.int32(5), jnp.int32(0))

    static = types.SimpleNamespace(method="ppo", preference_loss="sigmoid", uses_reference=True)
    hp = types.SimpleNamespace(learning_rate=jnp.float32(1e-3),
                               replace=lambda **kw: types.SimpleNamespace(**kw))
    new, _ = anchor.back_off(static, state(1.0), hp, state(0.0), jnp.array(True),
                             jnp.array([1.0, 2.0, 1.0], jnp.float32))
    np.testing.assert_array_equal(new.params["w"], [0.0, 0.0])
    np.testing.assert_array_equal(new.controller.beta, np.float32([0.1, 0.4, 0.4]))  # ×2 exact
    assert float(new.opt_state.hyperparams["learning_rate"]) == pytest.approx(1e-3)
