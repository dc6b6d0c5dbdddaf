"""TRPO: CG and the Fisher-vector product against dense linear algebra, the line search's guarantees
checked with an independent NumPy KL, and the training program end to end."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs import trpo as trpo_configs
from kltrust.models import ActorCritic
from kltrust.objectives import trpo
from kltrust.train import control_config, loop
from kltrust.train import trpo as trpo_train

# ---------------------------------------------------------------- conjugate gradient


def _spd(key, n, condition):
    """A random SPD matrix with eigenvalues spread log-uniformly over [1, condition]."""
    q, _ = jnp.linalg.qr(jax.random.normal(key, (n, n)))
    eig = jnp.logspace(0.0, jnp.log10(condition), n)
    return (q * eig) @ q.T


@pytest.mark.parametrize("n,condition", [(5, 10.0), (12, 100.0)])
def test_cg_matches_dense_solve(n, condition):
    key_a, key_b = jax.random.split(jax.random.PRNGKey(n))
    a = _spd(key_a, n, condition)
    b = jax.random.normal(key_b, (n,))
    # Exact arithmetic converges in n iterations; float32 needs a few more at condition 100.
    solve = jax.jit(lambda a, b: trpo.conjugate_gradient(lambda v: a @ v, b, 3 * n, 1e-12))
    x, residual = solve(a, b)
    expected = np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64))
    np.testing.assert_allclose(x, expected, rtol=2e-4, atol=2e-5)
    true_residual = np.linalg.norm(np.asarray(b) - np.asarray(a) @ np.asarray(x))
    assert residual < 1e-4 and true_residual < 1e-4


def test_cg_stops_early_and_reports_its_residual():
    a = _spd(jax.random.PRNGKey(0), 20, 1000.0)
    b = jnp.ones(20)
    x, residual = trpo.conjugate_gradient(lambda v: a @ v, b, 3, 1e-10)
    # After 3 of 20 iterations the system is not solved: the reported residual must say so, and
    # it must be the actual ‖b − A x‖ (the recurrence equals it up to float32 round-off).
    true_residual = float(jnp.linalg.norm(b - a @ x))
    assert true_residual > 1e-2
    np.testing.assert_allclose(residual, true_residual, rtol=1e-3)
    # A loose tolerance stops at once: x₀ = 0 and residual ‖b‖.
    x0, r0 = trpo.conjugate_gradient(lambda v: a @ v, b, 10, 1e6)
    assert not np.any(x0) and np.isclose(r0, np.sqrt(20.0))


def test_cg_vmaps_over_systems():
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    mats = jax.vmap(lambda k: _spd(k, 6, 20.0))(keys)
    bs = jax.random.normal(jax.random.PRNGKey(4), (3, 6))
    xs, _ = jax.vmap(lambda a, b: trpo.conjugate_gradient(lambda v: a @ v, b, 18, 1e-12))(mats, bs)
    for a, b, x in zip(mats, bs, xs):
        np.testing.assert_allclose(x, np.linalg.solve(np.float64(a), np.float64(b)), rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------- Fisher-vector product on a small net


def _tiny_policy(discrete):
    """A 2-input, 4-hidden actor-critic; returns (policy_fn, flat θ, observations)."""
    model = ActorCritic(action_dim=3 if discrete else 2, discrete=discrete, hidden=(4,))
    obs = jax.random.normal(jax.random.PRNGKey(1), (6, 2))
    params = model.init(jax.random.PRNGKey(2), obs)
    policy, critic = trpo_train.split_params(params)
    flat, unravel = ravel_pytree(policy)
    policy_fn = trpo.flat_policy_fn(model.apply, unravel, critic, trpo_train.merge_params)
    return policy_fn, flat, obs


def _batch_at(policy_fn, flat, obs, advantage=None, key=jax.random.PRNGKey(5), reference=None):
    old = policy_fn(flat, obs)
    action = old.sample(key)
    if advantage is None:
        advantage = jax.random.normal(jax.random.PRNGKey(6), (obs.shape[0],))
    return trpo.Batch(obs=obs, action=action, log_prob=old.log_prob(action), policy=old,
                      advantage=advantage, reference=reference)


@pytest.mark.parametrize("discrete", [True, False])
def test_fvp_equals_explicit_hessian_times_vector(discrete):
    policy_fn, flat, obs = _tiny_policy(discrete)
    batch = _batch_at(policy_fn, flat, obs)
    v = jax.random.normal(jax.random.PRNGKey(7), flat.shape)
    damping = 0.1
    hessian = jax.hessian(lambda p: trpo.mean_kl_to_old(policy_fn, p, batch))
    # At θ_old (where TRPO uses it) and away from it (the FVP is the KL's Hessian everywhere).
    for point in (flat, flat + 0.3 * jax.random.normal(jax.random.PRNGKey(8), flat.shape)):
        fvp = trpo.fisher_vector_product(policy_fn, point, batch, damping)
        expected = np.asarray(hessian(point), np.float64) @ np.asarray(v) + damping * np.asarray(v)
        np.testing.assert_allclose(fvp(v), expected, rtol=1e-4, atol=1e-5)


def test_kl_hessian_at_old_policy_is_the_fisher_matrix():
    """Independent of the KL code: F = E_s Σ_a π(a|s) ∇log π(a|s) ∇log π(a|s)ᵀ for a categorical."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    batch = _batch_at(policy_fn, flat, obs)
    log_probs = lambda p: jax.nn.log_softmax(policy_fn(p, obs).logits)  # [S, A]
    jac = np.asarray(jax.jacobian(log_probs)(flat), np.float64)  # [S, A, P]
    probs = np.exp(np.asarray(log_probs(flat), np.float64))
    fisher = np.einsum("sa,sai,saj->ij", probs, jac, jac) / obs.shape[0]
    v = np.asarray(jax.random.normal(jax.random.PRNGKey(9), flat.shape))
    fvp = trpo.fisher_vector_product(policy_fn, flat, batch, 0.0)
    np.testing.assert_allclose(fvp(jnp.asarray(v, jnp.float32)), fisher @ v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("discrete", [True, False])
def test_gauss_newton_product_is_the_kl_hessian_at_old_policy(discrete):
    """At θ_old (batch.policy = π_θ) the KL's gradient in the distribution's parameters is 0, so
    Jᵀ H J + λI is the Hessian product there; away from θ_old it stays PSD (vᵀFv > 0)."""
    policy_fn, flat, obs = _tiny_policy(discrete)
    batch = _batch_at(policy_fn, flat, obs)
    damping = 0.1
    hessian = trpo.fisher_vector_product(policy_fn, flat, batch, damping)
    gauss_newton = trpo.gauss_newton_vector_product(policy_fn, flat, batch, damping)
    for seed in (7, 8):
        v = jax.random.normal(jax.random.PRNGKey(seed), flat.shape)
        # Both are float32 second derivatives summed over the batch's states: each differs from
        # the exact product by a few ulp per term (~1e-7 relative) times a few hundred terms,
        # so ~1e-5; 1e-4 leaves a 10× margin, far below a wrong matrix's O(1) error.
        np.testing.assert_allclose(gauss_newton(v), hessian(v), rtol=1e-4, atol=1e-6)
    away = flat + 0.3 * jax.random.normal(jax.random.PRNGKey(8), flat.shape)
    v = jax.random.normal(jax.random.PRNGKey(9), flat.shape)
    assert float(jnp.vdot(v, trpo.gauss_newton_vector_product(policy_fn, away, batch, 0.0)(v))) > 0


def test_gauss_newton_step_equals_the_hessian_step():
    """`step` with gauss_newton=True takes the same step at θ_old, up to float32 rounding."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    batch = _batch_at(policy_fn, flat, obs)
    steps = [trpo.step(policy_fn, flat, batch, _coefs(), variant=trpo.Variant(),
                       gauss_newton=gn) for gn in (False, True)]
    # CG is linear in the products, so their ~1e-5 relative difference (above) reaches the step
    # scaled by CG's conditioning, bounded by the damping λ; on a CartPole update the steps
    # differed by 8e-8 relative.
    np.testing.assert_allclose(steps[1][0], steps[0][0], rtol=1e-5, atol=1e-6)
    assert float(steps[1][1]["accepted"]) == float(steps[0][1]["accepted"]) == 1.0


# ---------------------------------------------------------------- the step and its line search


def _np_mean_kl_categorical(logits_p, logits_q):
    lp = np.asarray(jax.nn.log_softmax(np.float64(logits_p)))
    lq = np.asarray(jax.nn.log_softmax(np.float64(logits_q)))
    return float(np.mean(np.sum(np.exp(lp) * (lp - lq), axis=-1)))


_COEFS = dict(kl_budget=1.0, damping=0.1, backtrack_factor=0.8, cg_residual_tol=1e-10)


def _coefs(**overrides):
    return trpo.StepCoefs(**{k: jnp.float32(v) for k, v in ({"delta": 0.01} | _COEFS | overrides).items()})


def test_full_step_lands_on_the_quadratic_models_boundary():
    """s = α·x with ½ sᵀ(F + λI)s = δ, and x solves (F + λI)x = g (checked with dense matrices)."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    batch = _batch_at(policy_fn, flat, obs)
    coefs = _coefs(delta=1e-4, damping=0.1)
    new, metrics = trpo.step(policy_fn, flat, batch, coefs, variant=trpo.Variant(line_search=False),
                             cg_iters=200)
    s = np.asarray(new - flat, np.float64)
    hessian = np.asarray(jax.hessian(lambda p: trpo.mean_kl_to_old(policy_fn, p, batch))(flat), np.float64)
    damped = hessian + 0.1 * np.eye(len(s))
    np.testing.assert_allclose(0.5 * s @ damped @ s, 1e-4, rtol=1e-3)
    a = np.asarray(batch.advantage, np.float64)
    g = np.asarray(jax.grad(lambda p: trpo.surrogate(policy_fn, p, batch.replace(
        advantage=jnp.asarray((a - a.mean()) / (a.std() + 1e-8), jnp.float32))))(flat), np.float64)
    direction = np.linalg.solve(damped, g)
    cosine = s @ direction / (np.linalg.norm(s) * np.linalg.norm(direction))
    assert cosine > 0.9999
    assert metrics["accepted"] == 1 and metrics["step_fraction"] == 1


def test_line_search_backtracks_until_the_exact_kl_is_within_delta():
    """δ so large that the quadratic model's full step overshoots: the search must shrink it, and the
    accepted policy's KL, recomputed in NumPy from the logits, must be ≤ δ. (Small damping: with the
    default 0.1 this tiny network's step stays well inside the model's δ.)"""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    batch = _batch_at(policy_fn, flat, obs)
    delta = 0.5
    coefs = _coefs(delta=delta, damping=1e-3)
    new, metrics = trpo.step(policy_fn, flat, batch, coefs, variant=trpo.Variant(line_search=True))
    npg_new, _ = trpo.step(policy_fn, flat, batch, coefs, variant=trpo.Variant(line_search=False))
    old_logits = policy_fn(flat, obs).logits
    assert _np_mean_kl_categorical(old_logits, policy_fn(npg_new, obs).logits) > delta  # overshoot
    assert metrics["accepted"] == 1 and metrics["backtracks"] >= 1
    kl_accepted = _np_mean_kl_categorical(old_logits, policy_fn(new, obs).logits)
    assert kl_accepted <= delta
    np.testing.assert_allclose(metrics["kl_old"], kl_accepted, rtol=1e-4)
    # The accepted point is the first fraction cᵏ of the full step that qualified.
    fraction = 0.8 ** int(metrics["backtracks"])
    np.testing.assert_allclose(new, flat + fraction * (npg_new - flat), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["step_fraction"], fraction, rtol=1e-6)
    assert metrics["surrogate_improvement"] > 0


def test_forced_rejection_leaves_params_unchanged():
    policy_fn, flat, obs = _tiny_policy(discrete=False)
    # No advantage, no possible improvement: every candidate is refused.
    batch = _batch_at(policy_fn, flat, obs, advantage=jnp.zeros(obs.shape[0]))
    variant = trpo.Variant(normalize_advantages=False)
    new, metrics = trpo.step(policy_fn, flat, batch, _coefs(), variant=variant, max_backtracks=4)
    assert np.array_equal(new, flat)
    assert metrics["accepted"] == 0 and metrics["backtracks"] == 4 and metrics["step_fraction"] == 0
    assert metrics["kl_old"] == 0 and metrics["surrogate_improvement"] == 0

    # A reference budget already spent: the policy may not move, whatever the advantages say.
    reference = policy_fn(flat + 0.5, obs)
    batch = _batch_at(policy_fn, flat, obs, reference=reference)
    spent = float(trpo.mean_kl_to_reference(policy_fn, flat, batch))
    variant = trpo.Variant(kl_anchor="reference")
    new, metrics = trpo.step(policy_fn, flat, batch, _coefs(kl_budget=0.5 * spent), variant=variant)
    assert np.array_equal(new, flat) and metrics["accepted"] == 0
    np.testing.assert_allclose(metrics["kl_ref"], spent, rtol=1e-6)


def test_reference_budget_caps_the_step():
    """With room r = budget − KL_ref left, the accepted step keeps KL(π_θ ‖ π_ref) ≤ budget."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    reference = policy_fn(flat - 0.2, obs)
    batch = _batch_at(policy_fn, flat, obs, reference=reference)
    start = float(trpo.mean_kl_to_reference(policy_fn, flat, batch))
    budget = start + 0.002
    new, metrics = trpo.step(policy_fn, flat, batch, _coefs(delta=0.5, kl_budget=budget),
                             variant=trpo.Variant(kl_anchor="reference"))
    ref_logits = reference.logits
    after = _np_mean_kl_categorical(policy_fn(new, obs).logits, ref_logits)
    assert metrics["accepted"] == 1 and after <= budget
    # The trust region alone (δ = 0.5) would have taken a far bigger step.
    unbudgeted, _ = trpo.step(policy_fn, flat, batch, _coefs(delta=0.5), variant=trpo.Variant())
    assert np.linalg.norm(unbudgeted - flat) > 3 * np.linalg.norm(new - flat)


# ---------------------------------------------------------------- the training program


def _tiny(preset="cartpole_trpo", **overrides):
    config = trpo_configs.get_config(preset)
    config.num_envs, config.num_steps = 4, 128
    config.total_timesteps, config.updates_per_chunk = 4 * 128 * 40, 20
    config.vf_minibatches = 4
    config.update(overrides)
    return config


@functools.lru_cache(maxsize=None)
def _train(preset="cartpole_trpo", num_seeds=1):
    config = _tiny(preset, num_seeds=num_seeds)
    return loop.train(control_config.spec_from_config(config), progress=False)


def test_short_run_improves_return_and_keeps_every_accepted_update_within_delta():
    result = _train(num_seeds=2)
    m = result.metrics
    accepted = m["accepted"] > 0
    assert accepted.mean() > 0.5
    assert np.all(m["kl_old"][accepted] <= m["delta"][accepted])
    assert np.all(m["kl_old"][~accepted] == 0)
    # The ratio π_new/π_old on the batch: 1 where the step was rejected, spread where it was taken.
    np.testing.assert_allclose(m["ratio_max"][~accepted], 1.0, atol=1e-5)
    np.testing.assert_allclose(m["ratio_min"][~accepted], 1.0, atol=1e-5)
    assert np.all(m["ratio_max"][accepted] > 1.0) and np.all(m["ratio_min"][accepted] < 1.0)
    assert np.all(m["cg_residual"] >= 0) and np.all(np.isfinite(m["cg_residual"]))
    # Random CartPole play scores ~20; 40 updates of 512 steps with δ = 0.01 must clearly learn.
    early, late = np.nanmean(m["episode_return"][:, 2]), np.nanmean(m["episode_return"][:, -1])
    assert late > 2 * early and late > 100, (early, late)


def test_same_seed_same_numbers_and_vmapped_seeds_are_independent():
    both = _train(num_seeds=2)  # seeds (0, 1)
    again = loop.train(control_config.spec_from_config(_tiny(num_seeds=2)), progress=False)
    for name in both.metrics:
        np.testing.assert_array_equal(both.metrics[name], again.metrics[name], err_msg=name)
    jax.tree.map(np.testing.assert_array_equal, both.state.params, again.state.params)
    # Independence, exactly: seed 1 runs the same compiled program in the pairs (0, 1) and (1, 2),
    # once as the second run and once as the first. Runs never interact, so its whole 40-update
    # trajectory is the same bit for bit, with no tolerance to argue about.
    shifted = loop.train(control_config.spec_from_config(_tiny(num_seeds=2, seed=1)),
                         progress=False)
    for name in both.metrics:
        np.testing.assert_array_equal(shifted.metrics[name][0], both.metrics[name][1],
                                      err_msg=name)


def test_one_update_alone_equals_the_same_update_vmapped():
    """Seed 1 alone vs seed 1 of a vmapped pair, over ONE update from the same initial state.

    The unbatched program may sum in another order, so the two differ by float32 round-off. Over
    many updates RL amplifies that chaotically (a trajectory-level tolerance held on one CPU and
    failed on another), so the comparison stops after one update, where the difference is bounded:
    the rollout's probabilities agree to ~1e-6 (a sampled action flips with that probability, and
    did not here), and the step is CG's solution, accurate only to CG's residual, which is itself
    round-off with no common value between two reduction orders (as between 1 and 8 devices in
    test_multidevice.py: ~1e-3 relative). Hence rtol 2e-3 on what passes through CG and 1e-4 on
    what does not.
    """
    config = dict(total_timesteps=4 * 128, updates_per_chunk=1)
    pair = loop.train(control_config.spec_from_config(_tiny(num_seeds=2, **config)), progress=False)
    alone = loop.train(control_config.spec_from_config(_tiny(seed=1, **config)), progress=False)
    for name in ("episode_return", "value_loss"):
        np.testing.assert_allclose(alone.metrics[name][0], pair.metrics[name][1], rtol=1e-4,
                                   atol=1e-7, err_msg=name)
    for name in ("kl_old", "step_norm", "surrogate_improvement"):
        np.testing.assert_allclose(alone.metrics[name][0], pair.metrics[name][1], rtol=2e-3,
                                   atol=1e-7, err_msg=name)


def test_delta_is_an_array_so_a_sweep_vmaps_over_it():
    config = _tiny(total_timesteps=4 * 128 * 4, updates_per_chunk=4)
    trainer = trpo_train.make_trainer(control_config.spec_from_config(config).static)
    init, run_chunk = trpo_train.compile_run(trainer)
    hp = control_config.hparams(config)
    deltas = jnp.array([0.001, 0.02])
    hparams = jax.tree.map(lambda x: jnp.broadcast_to(x, (2,)), hp).replace(delta=deltas)
    _, metrics = run_chunk(init(jnp.zeros(2, jnp.int32), hparams), hparams)
    accepted = metrics["accepted"] > 0
    assert np.all((metrics["kl_old"] <= deltas[:, None]) | ~accepted)
    # A 20× larger trust region lets the policy move further on the very same first batch.
    assert metrics["step_norm"][1, 0] > 2 * metrics["step_norm"][0, 0]
    spread = metrics["ratio_max"][:, 0] - metrics["ratio_min"][:, 0]
    assert spread[1] > 2 * spread[0]


def test_npg_takes_the_scaled_step_whatever_its_kl():
    result = _train("cartpole_npg")
    assert np.all(result.metrics["accepted"] == 1) and np.all(result.metrics["backtracks"] == 0)
    assert np.all(result.metrics["step_fraction"] == 1)


def test_workdir_outputs_for_trpo(tmp_path):
    config = _tiny("pendulum_trpo_ref", total_timesteps=4 * 128 * 2, updates_per_chunk=2)
    loop.train(control_config.spec_from_config(config), tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for key in ("kl_old", "kl_ref", "kl_budget", "delta", "accepted", "backtracks", "cg_residual",
                "surrogate_improvement", "step_norm", "episode_return", "value_loss"):
        assert key in records[0], key
    assert records[-1]["kl_ref"] <= records[-1]["kl_budget"]
    assert (tmp_path / "learning_curve.png").stat().st_size > 0


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("hparams.delta", 0.0, r"config.hparams.delta = 0.0: must be in \(0.0, inf\)"),
        ("hparams.backtrack_factor", 1.0, r"config.hparams.backtrack_factor = 1.0: must be in \(0.0, 1.0\)"),
        ("hparams.damping", -0.1, r"config.hparams.damping = -0.1: must be in \[0.0, inf\)"),
        ("vf_minibatches", 3, r"config.vf_minibatches = 3: must be a divisor of num_envs \* num_steps = 512"),
        ("cg_iters", 0, r"config.cg_iters = 0: must be an integer >= 1"),
        ("variant.kl_anchor", "ref", r"config.variant.kl_anchor must be one of \('old', 'reference'\)"),
        ("algorithm", "trpo2", r"config.algorithm = 'trpo2': must be one of \('ppo', 'trpo'\)"),
    ],
)
def test_bad_config_is_rejected_before_compiling(field, value, message):
    config = _tiny()
    parent, _, leaf = field.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
    with pytest.raises(ValueError, match=message):
        loop.train(control_config.spec_from_config(config), progress=False)


def test_kl_budget_checked_only_when_the_reference_anchor_uses_it():
    config = _tiny("cartpole_trpo_ref")
    config.hparams.kl_budget = 0.0
    with pytest.raises(ValueError, match=r"config.hparams.kl_budget = 0.0: must be in \(0.0, inf\)"):
        control_config.validate(config)
    config = _tiny("cartpole_trpo")
    config.hparams.kl_budget = 0.0
    control_config.validate(config)


# ---------------------------------------------------------------- recovery (Achiam et al. 2017)


def _over_budget():
    """A batch whose policy sits over its reference budget: KL_ref(θ_old) = k0, budget = k0/2."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    reference = policy_fn(flat - 0.6 * jnp.sign(flat), obs)
    batch = _batch_at(policy_fn, flat, obs, reference=reference)
    k0 = float(trpo.mean_kl_to_reference(policy_fn, flat, batch))
    return policy_fn, flat, obs, batch, k0


def test_recovery_steps_down_the_reference_kl_within_the_trust_region():
    """Over the budget, plain TRPO rejects every step; the recovery step is accepted, lowers the
    exact reference KL, keeps KL(π_old‖π_θ) ≤ δ, and its full step is −√(2δ/yᵀFy)·y with
    y = (F + λI)⁻¹∇KL_ref (checked with dense matrices)."""
    policy_fn, flat, obs, batch, k0 = _over_budget()
    assert k0 > 0.05
    coefs = _coefs(delta=0.01, kl_budget=k0 / 2)
    _, stalled = trpo.step(policy_fn, flat, batch, coefs, variant=trpo.Variant(kl_anchor="reference"))
    assert stalled["accepted"] == 0
    new, metrics = trpo.step(policy_fn, flat, batch, coefs,
                             variant=trpo.Variant(kl_anchor="reference", recovery=True))
    assert metrics["recovery"] == 1 and metrics["accepted"] == 1
    after = _np_mean_kl_categorical(policy_fn(new, obs).logits, batch.reference.logits)
    assert after < k0 and metrics["kl_old"] <= 0.01
    # The direction, against a dense solve in float64.
    hessian = np.asarray(jax.hessian(lambda p: trpo.mean_kl_to_old(policy_fn, p, batch))(flat),
                         np.float64) + 0.1 * np.eye(flat.size)
    grad_ref = np.asarray(jax.grad(lambda p: trpo.mean_kl_to_reference(policy_fn, p, batch))(flat),
                          np.float64)
    y = np.linalg.solve(hessian, grad_ref)
    full = -np.sqrt(2 * 0.01 / (y @ hessian @ y)) * y
    step = np.asarray(new - flat, np.float64)
    fraction = float(metrics["step_fraction"])
    # CG to a 1e-10 residual on a well-damped system, then float32 steps of size ~0.1: 1e-3 relative.
    np.testing.assert_allclose(step, fraction * full, rtol=1e-3, atol=1e-6)


def test_recovery_changes_nothing_within_the_budget():
    """Within the budget the recovery variant takes the ordinary step, bit for bit."""
    policy_fn, flat, obs, batch, k0 = _over_budget()
    coefs = _coefs(delta=0.01, kl_budget=2 * k0)
    plain, m_plain = trpo.step(policy_fn, flat, batch, coefs, variant=trpo.Variant(kl_anchor="reference"))
    rec, m_rec = trpo.step(policy_fn, flat, batch, coefs,
                           variant=trpo.Variant(kl_anchor="reference", recovery=True))
    np.testing.assert_array_equal(plain, rec)
    assert m_rec["recovery"] == 0 and m_plain["accepted"] == 1
    with pytest.raises(ValueError, match="recovery needs kl_anchor='reference'"):
        trpo.Variant(recovery=True)


# ---------------------------------------------------------------- per-group reference budgets


def _np_kl_per_state(logits_p, logits_q):
    lp = np.asarray(jax.nn.log_softmax(np.float64(logits_p)))
    lq = np.asarray(jax.nn.log_softmax(np.float64(logits_q)))
    return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def _np_group_kl(logits, ref_logits, group, num_groups, weight=None):
    """Per-group Σ w·kl / Σ w in float64 over rows (a row's tokens summed); 0 for a group without
    rows or weight."""
    kl = _np_kl_per_state(logits, ref_logits).reshape(len(group), -1)
    w = np.ones_like(kl) if weight is None else np.float64(weight).reshape(kl.shape)
    return np.array([np.sum((w * kl)[group == g]) / np.sum(w[group == g])
                     if np.sum(w[group == g]) > 0 else 0.0 for g in range(num_groups)])


_GROUPS = np.array([0, 1, 0, 1, 0, 1])


def test_grouped_reference_kl_is_each_groups_weighted_mean():
    """Rows as states (uniform weights) and as 2-token sequences (a mask, and a half weight). Groups
    with no rows, or rows of zero weight (a fully masked sequence): KL 0, and a gradient (which
    recovery's vjp passes through) of 0, not NaN."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    cases = [(obs, np.array([0, 2, 0, 2, 2, 0]), None, [1]),
             (obs.reshape(3, 2, 2), np.array([2, 1, 2]), np.array([[1, 0], [0, 0], [0.5, 1]]),
              [0, 1])]
    for o, group, weight, empty in cases:
        reference = policy_fn(flat - 0.3, o)
        batch = _batch_at(policy_fn, flat, o, reference=reference).replace(
            group=jnp.int32(group), weight=None if weight is None else jnp.float32(weight))
        got = np.asarray(trpo.reference_kl_by_group(policy_fn, flat, batch, 3))
        expected = _np_group_kl(policy_fn(flat, o).logits, reference.logits, group, 3, weight)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
        assert not np.any(got[empty]) and expected[2] > 0
        jacobian = np.asarray(jax.jacobian(
            lambda p: trpo.reference_kl_by_group(policy_fn, p, batch, 3))(flat))
        assert np.all(np.isfinite(jacobian)) and not np.any(jacobian[empty])


def test_groups_and_a_budget_vector_come_together():
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    batch = _batch_at(policy_fn, flat, obs, reference=policy_fn(flat, obs))
    grouped = batch.replace(group=jnp.int32(_GROUPS))
    variant = trpo.Variant(kl_anchor="reference")
    for b, coefs, v, message in [
        (grouped, _coefs(), variant, r"kl_budget must be a vector \[G\]"),
        (batch, _coefs(kl_budget=[1.0, 1.0]), variant, r"per-group budgets need batch.group"),
        (grouped, _coefs(kl_budget=[1.0, 1.0]), trpo.Variant(), r"needs kl_anchor='reference'"),
        (grouped.replace(group=jnp.int32(_GROUPS[:5])), _coefs(kl_budget=[1.0, 1.0]), variant,
         r"shaped like the batch's rows \(6,\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            trpo.step(policy_fn, flat, b, coefs, variant=v)


@pytest.mark.parametrize("over", [False, True])
def test_a_single_group_holding_every_row_is_the_ungrouped_step(over):
    """Within the budget with the cap binding, and over it (recovery). One group's KL is the batch
    KL summed in another order (per row, then per group), so the two programs agree to float32
    round-off, not bit for bit; the search direction and its CG solve are shared, and only the
    cap's k0 and slope (or recovery's gradient, through a second CG solve) carry that round-off."""
    if over:
        policy_fn, flat, obs, batch, k0 = _over_budget()
        budget, delta = k0 / 2, 0.01
    else:
        policy_fn, flat, obs = _tiny_policy(discrete=True)
        batch = _batch_at(policy_fn, flat, obs, reference=policy_fn(flat - 0.2, obs))
        budget, delta = float(trpo.mean_kl_to_reference(policy_fn, flat, batch)) + 0.002, 0.5
    variant = trpo.Variant(kl_anchor="reference", recovery=True)
    plain, m_plain = trpo.step(policy_fn, flat, batch, _coefs(delta=delta, kl_budget=budget),
                               variant=variant)
    new, m = trpo.step(policy_fn, flat, batch.replace(group=jnp.zeros(6, jnp.int32)),
                       _coefs(delta=delta, kl_budget=[budget]), variant=variant)
    np.testing.assert_allclose(new, plain, rtol=1e-4, atol=1e-6)
    assert m_plain["accepted"] == 1 and m_plain["recovery"] == float(over)
    assert set(m) == set(m_plain) - {"kl_budget"} | {"kl_ref_groups", "kl_ref_excess"}
    for name in ("accepted", "backtracks", "recovery"):
        assert m[name] == m_plain[name], name
    for name in set(m_plain) - {"kl_budget"}:
        np.testing.assert_allclose(m[name], m_plain[name], rtol=1e-4, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(m["kl_ref_groups"], [m_plain["kl_ref"]], rtol=1e-5)
    np.testing.assert_allclose(m["kl_ref_excess"], max(m_plain["kl_ref"] - budget, 0), atol=1e-7)


def test_each_group_keeps_its_own_budget():
    """A tight budget on group 0 and a loose one on group 1: the accepted step keeps both, by the
    exact per-group KL recomputed in NumPy, and group 0's budget is what held it back."""
    policy_fn, flat, obs = _tiny_policy(discrete=True)
    reference = policy_fn(flat - 0.2, obs)
    batch = _batch_at(policy_fn, flat, obs, reference=reference).replace(group=jnp.int32(_GROUPS))
    group_kl = lambda p: _np_group_kl(policy_fn(p, obs).logits, reference.logits, _GROUPS, 2)
    start = group_kl(flat)
    budget = np.array([start[0] + 0.002, start[1] + 1.0])
    variant = trpo.Variant(kl_anchor="reference")
    new, m = trpo.step(policy_fn, flat, batch, _coefs(delta=0.5, kl_budget=budget), variant=variant)
    after = group_kl(new)
    assert m["accepted"] == 1 and np.all(after <= budget), (after, budget)
    np.testing.assert_allclose(m["kl_ref_groups"], after, rtol=1e-4)
    assert m["kl_ref_excess"] == 0
    loose, _ = trpo.step(policy_fn, flat, batch, _coefs(delta=0.5, kl_budget=start + 1.0),
                         variant=variant)
    assert group_kl(loose)[0] > budget[0]


def test_recovery_brings_down_only_the_group_over_its_budget():
    """Group 0 over its budget, group 1 within: the recovery step is accepted, lowers group 0's
    exact KL and the total excess, keeps KL(π_old‖π_new) ≤ δ, and its full step is
    −√(2δ/yᵀFy)·y with y = (F + λI)⁻¹∇KL_0: group 1, within budget, is not in the direction."""
    policy_fn, flat, obs, batch, _ = _over_budget()
    batch = batch.replace(group=jnp.int32(_GROUPS))
    ref_logits = batch.reference.logits
    group_kl = lambda p: _np_group_kl(policy_fn(p, obs).logits, ref_logits, _GROUPS, 2)
    start = group_kl(flat)
    budget = np.array([start[0] / 2, start[1] * 2])
    excess = lambda kl: np.sum(np.maximum(kl - budget, 0.0))
    new, m = trpo.step(policy_fn, flat, batch, _coefs(delta=0.01, kl_budget=budget),
                       variant=trpo.Variant(kl_anchor="reference", recovery=True))
    after = group_kl(new)
    assert m["recovery"] == 1 and m["accepted"] == 1
    assert after[0] < start[0] and excess(after) < excess(start)
    assert _np_mean_kl_categorical(policy_fn(flat, obs).logits, policy_fn(new, obs).logits) <= 0.01
    np.testing.assert_allclose(m["kl_ref_excess"], excess(after), rtol=1e-4)
    hessian = np.asarray(jax.hessian(lambda p: trpo.mean_kl_to_old(policy_fn, p, batch))(flat),
                         np.float64) + 0.1 * np.eye(flat.size)
    grad_0 = np.asarray(jax.grad(lambda p: trpo.reference_kl_by_group(policy_fn, p, batch, 2)[0])(
        flat), np.float64)
    y = np.linalg.solve(hessian, grad_0)
    full = -np.sqrt(2 * 0.01 / (y @ hessian @ y)) * y
    np.testing.assert_allclose(np.asarray(new - flat, np.float64),
                               float(m["step_fraction"]) * full, rtol=1e-3, atol=1e-6)
