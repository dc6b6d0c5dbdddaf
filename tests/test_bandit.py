"""The bandit testbed: closed forms against brute force, the Bradley–Terry sampler against its exact
distribution, and every training method against the optimum it should reach."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subprocs
from configs import bandit as bandit_configs
from kltrust.tasks import bandit as bandit_lib
from kltrust.train import bandit as bandit_train

BANDIT = bandit_lib.make(seed=1, num_contexts=4, num_actions=6)


def _np(x):
    return np.asarray(x, np.float64)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kl(logp, logq):
    """Σ_y p (log p − log q), float64, per context."""
    return (np.exp(logp) * (logp - logq)).sum(-1)


# ---------------------------------------------------------------- closed forms


def test_make_is_deterministic_and_valid():
    again = bandit_lib.make(seed=1, num_contexts=4, num_actions=6)
    for a, b in zip(jax.tree.leaves(BANDIT), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
    other = bandit_lib.make(seed=2, num_contexts=4, num_actions=6)
    assert not np.array_equal(BANDIT.rewards, other.rewards)
    np.testing.assert_allclose(BANDIT.context_probs.sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="num_actions must be an integer >= 2, got 1"):
        bandit_lib.make(seed=0, num_actions=1)


@pytest.mark.parametrize("beta", [0.2, 1.0])
def test_optimal_value_matches_brute_force_over_the_simplex(beta):
    # One context, three actions: maximise J(π) = Σπr − β·Σπ log(π/π_ref) over a grid of the simplex
    # with spacing 1/600 (float64 NumPy), and compare with β·log Σ π_ref·exp(r/β).
    bandit = bandit_lib.make(seed=3, num_contexts=1, num_actions=3)
    r, logq = _np(bandit.rewards[0]), _log_softmax(_np(bandit.ref_logits[0]))
    n = 600
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = i + j <= n
    pi = np.stack([i[keep], j[keep], n - i[keep] - j[keep]], axis=-1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(pi > 0, pi * np.log(pi), 0.0)
    objective = pi @ r - beta * (plogp.sum(-1) - pi @ logq)
    brute = objective.max()
    closed = float(bandit_lib.optimal_value(bandit, beta))
    assert closed >= brute - 1e-5  # nothing on the grid beats the optimum
    assert closed - brute < 2e-4  # and the grid's best is within its resolution of it
    # The argmax is the Gibbs policy.
    gibbs = np.exp(_np(bandit_lib.optimal_policy(bandit, beta))[0])
    np.testing.assert_allclose(pi[objective.argmax()], gibbs, atol=2 / n)


def test_gibbs_variational_principle_for_random_policies():
    # J_β(π) = J_β(π*_β) − β·E_x KL(π‖π*_β) for every π; KL checked against float64 NumPy.
    beta = 0.4
    logits = jax.random.normal(jax.random.key(0), (32, 4, 6)) * 2.0
    objective = jax.vmap(lambda z: bandit_lib.regularised_objective(BANDIT, z, beta))(logits)
    to_optimum = jax.vmap(lambda z: bandit_lib.kl_to_optimum(BANDIT, z, beta))(logits)
    value = bandit_lib.optimal_value(BANDIT, beta)
    np.testing.assert_allclose(objective, value - beta * to_optimum, atol=2e-5)
    assert np.all(_np(objective) <= float(value) + 1e-5)

    rho, r = _np(BANDIT.context_probs), _np(BANDIT.rewards)
    logq = _log_softmax(_np(BANDIT.ref_logits))
    log_star = _log_softmax(logq + r / beta)
    logp = _log_softmax(_np(logits))
    np.testing.assert_allclose(to_optimum, (_np_kl(logp, log_star) * rho).sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(lambda z: bandit_lib.kl_to_reference(BANDIT, z))(logits),
        (_np_kl(logp, logq) * rho).sum(-1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        jax.vmap(lambda z: bandit_lib.expected_reward(BANDIT, z))(logits),
        ((np.exp(logp) * r).sum(-1) * rho).sum(-1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(value, beta * (rho * np.log((np.exp(logq + r / beta)).sum(-1))).sum(),
                               rtol=1e-5)


def test_frontier_is_monotone_inverts_and_dominates():
    betas = np.logspace(2, -2, 60)  # decreasing β: both KL and reward must grow
    kls, rewards = (_np(v) for v in jax.jit(bandit_lib.frontier)(BANDIT, betas))
    assert np.all(np.diff(kls) >= -1e-6) and np.all(np.diff(rewards) >= -1e-6)
    assert kls[-1] > 10 * kls[0] and rewards[-1] > rewards[0] + 0.5  # a real range was covered

    at_kl = jax.jit(bandit_lib.frontier_reward_at_kl)
    np.testing.assert_allclose(at_kl(BANDIT, kls[::6]), rewards[::6], atol=2e-4)
    ref_reward = float(bandit_lib.expected_reward(BANDIT, BANDIT.ref_logits))
    greedy = float((_np(BANDIT.context_probs) * _np(BANDIT.rewards).max(-1)).sum())
    np.testing.assert_allclose(at_kl(BANDIT, 0.0), ref_reward, atol=1e-5)
    np.testing.assert_allclose(at_kl(BANDIT, 100.0), greedy, atol=1e-5)

    # No policy beats the frontier at its own KL (random policies, some close to the reference).
    scales = jnp.asarray([0.1, 0.5, 1.0, 3.0])[:, None, None, None]
    logits = BANDIT.ref_logits + scales * jax.random.normal(jax.random.key(1), (4, 50, 4, 6))
    logits = logits.reshape(-1, 4, 6)
    metrics = jax.jit(jax.vmap(lambda z: bandit_lib.exact_metrics(BANDIT, z, 0.5)))(logits)
    assert np.all(_np(metrics["frontier_gap"]) >= -1e-5)
    assert np.median(_np(metrics["frontier_gap"])) > 1e-3


# ---------------------------------------------------------------- the Bradley–Terry sampler

SMALL = bandit_lib.make(seed=4, num_contexts=2, num_actions=3, reward_scale=1.5)
NUM_SAMPLES = 400_000


@pytest.mark.parametrize("noise", [0.0, 0.25])
@pytest.mark.parametrize("from_policy", [False, True])
def test_sampler_matches_its_exact_distribution(noise, from_policy):
    # Every (x, y_w, y_l) triple's frequency against exact_preferences' weight, and the labelled
    # preference P(a ≻ b | x) against (1−η)σ(r_a − r_b) + ησ(r_b − r_a). Tolerance: 5 binomial
    # standard errors per cell (a false failure has probability < 1e-5 over all cells).
    policy_logits = jnp.asarray([[1.0, -0.5, 0.3], [0.0, 2.0, -1.0]]) if from_policy else None
    sample = jax.jit(bandit_lib.sample_preferences, static_argnums=2)
    pairs = sample(jax.random.key(7), SMALL, NUM_SAMPLES, noise, policy_logits)
    exact = bandit_lib.exact_preferences(SMALL, noise, policy_logits)
    np.testing.assert_allclose(_np(exact.weight).sum(), 1.0, rtol=1e-6)

    counts = np.zeros((2, 3, 3))
    np.add.at(counts, (np.asarray(pairs.context), np.asarray(pairs.chosen), np.asarray(pairs.rejected)), 1)
    freq = counts.reshape(-1) / NUM_SAMPLES
    w = _np(exact.weight)
    np.testing.assert_array_less(np.abs(freq - w), 5 * np.sqrt(w * (1 - w) / NUM_SAMPLES) + 1e-12)

    r = _np(SMALL.rewards)
    for x in range(2):
        for a in range(3):
            for b in range(a + 1, 3):
                n = counts[x, a, b] + counts[x, b, a]
                sig = 1 / (1 + np.exp(-(r[x, a] - r[x, b])))
                p = (1 - noise) * sig + noise * (1 - sig)
                assert abs(counts[x, a, b] / n - p) < 5 * np.sqrt(p * (1 - p) / n), (x, a, b)


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.3])
def test_label_noise_flips_at_the_stated_rate(noise):
    # Reward gaps of ≥ 40 make σ(Δr) = 1 to 1e-17, so every label with the lower-reward action as
    # chosen is a flip. Tolerance: 5 binomial standard errors (and exactly none without noise).
    bandit = bandit_lib.Bandit(rewards=jnp.asarray([[0.0, 40.0, 80.0]]), ref_logits=jnp.zeros((1, 3)),
                               context_probs=jnp.ones(1))
    pairs = jax.jit(bandit_lib.sample_preferences, static_argnums=2)(jax.random.key(3), bandit, 200_000, noise)
    chosen, rejected = np.asarray(pairs.chosen), np.asarray(pairs.rejected)
    distinct = chosen != rejected
    flipped = (chosen < rejected)[distinct]  # reward increases with the action index
    n = flipped.size
    assert abs(flipped.mean() - noise) <= 5 * np.sqrt(max(noise * (1 - noise), 1e-12) / n)


# ---------------------------------------------------------------- training

def _setup(method, preference_loss="sigmoid", preferences="exact", **kw):
    fields = dict(num_steps=1000, steps_per_eval=500, batch_size=64, group_size=4)
    fields.update(kw)
    return bandit_train.Setup(method=method, preference_loss=preference_loss, preferences=preferences,
                              **fields)


def _np_kl_to(logits, target_logp):
    return (_np_kl(_log_softmax(_np(logits)), target_logp) * _np(BANDIT.context_probs)).sum(-1)


def test_dpo_on_exact_preferences_reaches_the_kl_regularised_optimum():
    # One program: β = 0.5 and 1.0 on clean labels, and β = 0.5 with 20% flipped labels (plain DPO
    # is then biased: it cannot reach π*_β, which the robust loss below does).
    hp = bandit_train.HParams.create(beta=[0.5, 1.0, 0.5], label_noise=[0.0, 0.0, 0.2])
    run = bandit_train.make_sweep(_setup("dpo"))(jax.random.key(0)[None], BANDIT, hp)
    for i, beta in enumerate([0.5, 1.0]):
        target = _np(bandit_lib.optimal_policy(BANDIT, beta))
        kl_star = _np_kl_to(run.logits[i, 0], target)
        assert kl_star < 1e-3, (beta, kl_star)
        np.testing.assert_allclose(run.metrics["kl_to_optimum"][i, 0, -1], kl_star, atol=1e-5)
        assert float(run.metrics["kl_to_reference"][i, 0, -1]) > 0.1  # the policy really moved
        assert abs(float(run.metrics["frontier_gap"][i, 0, -1])) < 1e-3
    assert _np_kl_to(run.logits[2, 0], _np(bandit_lib.optimal_policy(BANDIT, 0.5))) > 1e-2


def test_robust_dpo_on_noisy_exact_preferences_reaches_the_clean_optimum():
    hp = bandit_train.HParams.create(beta=0.5, label_noise=0.2, preference_loss="robust",
                                     preference_knobs=dict(label_smoothing=0.2))
    run = bandit_train.make_train(_setup("dpo", preference_loss="robust"))(jax.random.key(0), BANDIT, hp)
    assert _np_kl_to(run.logits, _np(bandit_lib.optimal_policy(BANDIT, 0.5))) < 1e-3


def test_ipo_on_exact_preferences_reaches_azar_et_al_closed_form():
    # IPO's optimum is π ∝ π_ref·exp(E_{y'~π_ref} p(y ≻ y')/β), not π*_β.
    hp = bandit_train.HParams.create(beta=0.5)
    run = bandit_train.make_train(_setup("dpo", preference_loss="ipo"))(jax.random.key(0), BANDIT, hp)
    ipo_target = _np(bandit_lib.ipo_optimal_policy(BANDIT, 0.5))
    assert _np_kl_to(run.logits, ipo_target) < 1e-4
    assert _np_kl_to(run.logits, _np(bandit_lib.optimal_policy(BANDIT, 0.5))) > 0.1


def test_exact_policy_gradient_with_kl_penalty_reaches_the_optimum():
    # Tolerance: E_x KL(π_θ‖π*_β) < 1e-4 after 2000 Adam steps (lr 0.1, cosine decay), i.e. the
    # regularised objective is within β·1e-4 of its maximum.
    hp = bandit_train.HParams.create(beta=[0.5, 1.0])
    run = bandit_train.make_sweep(_setup("pg_exact", num_steps=2000, steps_per_eval=1000))(jax.random.key(0)[None], BANDIT, hp)
    for i, beta in enumerate([0.5, 1.0]):
        assert _np_kl_to(run.logits[i, 0], _np(bandit_lib.optimal_policy(BANDIT, beta))) < 1e-4
        np.testing.assert_allclose(run.metrics["objective"][i, 0, -1],
                                   bandit_lib.optimal_value(BANDIT, beta), atol=1e-4)


ONLINE = _setup("dpo_online", preferences="sampled", num_steps=60, steps_per_eval=20, batch_size=16)


def test_same_seed_same_numbers_and_vmapped_seeds_equal_separate_runs():
    hp = bandit_train.HParams.create(beta=0.5)
    train = bandit_train.make_train(ONLINE)
    first = train(jax.random.key(5), BANDIT, hp)
    again = train(jax.random.key(5), BANDIT, hp)
    for a, b in zip(jax.tree.leaves(first.metrics), jax.tree.leaves(again.metrics)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.logits, again.logits)
    other = train(jax.random.key(6), BANDIT, hp)
    assert not np.array_equal(first.logits, other.logits)

    swept = bandit_train.make_sweep(ONLINE)(
        jnp.stack([jax.random.key(5), jax.random.key(6)]), BANDIT,
        bandit_train.HParams.create(beta=[0.5]))
    np.testing.assert_allclose(swept.logits[0, 0], first.logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(swept.logits[0, 1], other.logits, rtol=1e-5, atol=1e-6)


def test_mlp_policy_starts_at_the_reference():
    policy = bandit_lib.make_policy(bandit_lib.PolicySpec(kind="mlp", hidden=(16, 2)))
    params = jax.jit(policy.init)(jax.random.key(0), BANDIT)
    np.testing.assert_array_equal(jax.jit(policy.apply)(params, BANDIT), BANDIT.ref_logits)
    grads = jax.jit(jax.grad(lambda p: bandit_lib.expected_reward(BANDIT, policy.apply(p, BANDIT))))(params)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("hparams.learning_rate", -1.0, r"config.hparams.learning_rate = -1.0: must be in \(0, inf\)."),
        ("betas", (0.1, 0.0), r"config.betas = \(0.1, 0.0\): must be a non-empty tuple of finite numbers > 0."),
        ("steps_per_eval", 300, "config.steps_per_eval = 300: must be an integer >= 1 dividing num_steps = 2000."),
        # ORPO is not registered (KTO was the example until it got its own file).
        ("run_specs.dpo.preference_loss", "orpo",
         r"config.run_specs.dpo.preference_loss = 'orpo': must be one of \('sigmoid'"),
        ("run_specs.rdpo_noisy.preference.robust.label_smoothing", 0.5,
         r"config.run_specs.rdpo_noisy.preference.robust.label_smoothing = 0.5: must be in \[0, 0.5\)"),
        ("bandit.num_actions", 1, "config.bandit.num_actions = 1: must be an integer >= 2."),
        ("policy.kind", "transformer", r"config.policy.kind = 'transformer': must be one of \('tabular', 'mlp'\)"),
    ],
)
def test_bad_config_values_are_rejected(key, value, message):
    config = bandit_configs.get_config("default")
    bandit_train.validate(config)  # the preset itself is valid
    target = config
    *path, leaf = key.split(".")
    for part in path:
        target = target[part]
    target[leaf] = value
    with pytest.raises(ValueError, match=message):
        bandit_train.validate(config)


def test_cli_rejects_a_bad_value_before_compiling_and_a_used_workdir(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    base = [sys.executable, "-m", "experiments.bandit_frontier", "--config=configs/bandit.py:quick"]
    fresh = tmp_path / "fresh"
    result = subprocs.run(base + [f"--workdir={fresh}", "--config.hparams.learning_rate=-1"],
                            cwd=root, timeout=120)
    assert result.returncode != 0
    assert "config.hparams.learning_rate = -1.0: must be in (0, inf)." in result.stderr
    assert not fresh.exists()  # nothing was written

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("earlier results\n")
    result = subprocs.run(base + [f"--workdir={used}"], cwd=root, timeout=120)
    assert result.returncode != 0
    assert "is not empty; choose another --workdir or pass --overwrite" in result.stderr
    assert sorted(p.name for p in used.iterdir()) == ["notes.txt"]


def test_ppo_with_a_kl_penalty_to_the_reference_reaches_the_optimum():
    # kltrust.objectives.ppo.loss (clip + fixed β·KL(π‖π_ref)) on 64 contexts × 4 sampled actions per
    # update, 4 epochs, 1000 updates. Tolerance: E_x KL(π_θ‖π*_β) < 5e-3 (measured 1.4e-3 and 2.7e-4;
    # what is left is sampling noise), against KL(π_ref‖π*_β) ≈ 0.5 at the start.
    hp = bandit_train.HParams.create(beta=[0.5, 1.0])
    run = bandit_train.make_sweep(_setup("ppo", preferences="sampled", num_steps=1000))(
        jax.random.key(0)[None], BANDIT, hp)
    for i, beta in enumerate([0.5, 1.0]):
        target = _np(bandit_lib.optimal_policy(BANDIT, beta))
        assert _np_kl_to(BANDIT.ref_logits, target) > 0.1
        assert _np_kl_to(run.logits[i, 0], target) < 5e-3, beta


def test_trpo_keeps_its_reference_budget_and_ends_near_the_constrained_optimum():
    # Budget = KL(π*_β‖π_ref), so the constrained optimum is π*_β. Exact expectations: the KL to the
    # reference never exceeds the budget (measured in float64 from the logits), and the policy ends
    # 1e-4..1e-3 from π*_β: on the budget's boundary the natural-gradient step points outside it, so
    # TRPO stalls there (every later step rejected) instead of sliding along it to π*_β.
    hp = bandit_train.HParams.create(beta=[0.5, 1.0])
    run = bandit_train.make_sweep(_setup("trpo", num_steps=400, steps_per_eval=100))(
        jax.random.key(0)[None], BANDIT, hp)
    for i, beta in enumerate([0.5, 1.0]):
        target = _np(bandit_lib.optimal_policy(BANDIT, beta))
        budget = _np_kl_to(target, _log_softmax(_np(BANDIT.ref_logits)))
        assert np.all(run.metrics["kl_to_reference"][i, 0] <= budget * (1 + 1e-5))
        assert _np_kl_to(run.logits[i, 0], _log_softmax(_np(BANDIT.ref_logits))) <= budget * (1 + 1e-5)
        assert _np_kl_to(run.logits[i, 0], target) < 2e-3, beta
        assert float(run.metrics["frontier_gap"][i, 0, -1]) < 1e-3
