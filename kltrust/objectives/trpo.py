"""TRPO (Schulman et al. 2015): a hard KL trust region solved by conjugate gradient and line search.

Each update maximises the surrogate L(θ) = E[π_θ(a|s)/π_old(a|s)·A] subject to a *measured* KL:

    1. g = ∇L(θ_old);  F = ∇²_θ E_s KL(π_old(·|s) ‖ π_θ(·|s)) at θ_old (the Fisher matrix), applied
       as a Fisher-vector product by forward-over-reverse differentiation, never formed;
    2. x ≈ (F + λI)⁻¹ g by `conjugate_gradient` (λ = damping);
    3. full step s = α·x with α = sqrt(2δ / xᵀFx), the step to the boundary of the quadratic model;
    4. backtracking: try θ_old + cᵏ·s for k = 0, 1, …, accept the first candidate whose *exact* KL
       (from `kltrust.kl`) is ≤ δ and whose surrogate improves; if none qualifies, θ stays θ_old
       and the update is reported as rejected.

Recovery (``Variant.recovery``, with the reference anchor; Achiam et al. 2017, "Constrained Policy
Optimization", §6.3): once the batch's KL to the reference exceeds the budget, no step both improves
and satisfies it, and plain TRPO stalls (every update rejected). The recovery step instead moves
along −(F + λI)⁻¹∇KL(π_θ‖π_ref), scaled so that ½sᵀFs = δ, and backtracks until the exact
KL(π_old‖π_θ) ≤ δ and the reference KL has decreased; the surrogate is not asked to improve. When
the budget holds again the ordinary step resumes. Its metric ``recovery`` is 1 on those updates.

``Variant.line_search = False`` gives the natural policy gradient (Kakade 2001) ablation: the scaled
step is taken whatever KL it produces. ``Variant.kl_anchor = "reference"`` adds an RLHF-style budget
on the KL to a frozen reference: KL(π_θ ‖ π_ref) ≤ ``kl_budget`` must hold after every accepted step
too, and the step length is also capped where the quadratic model of that KL (its value and slope
along x, curvature xᵀFx) meets the budget. The per-step trust region KL(π_old ‖ π_θ) ≤ δ stays;
set δ large to constrain the reference KL alone.

Per-group budgets (``Batch.group``, an int id per row, with ``kl_budget`` a vector [G]): the batch
mixes G groups (domains, tasks), each with its own budget on its own KL to the reference,
KL_g = Σ_{i∈g} w_i·kl_i / Σ_{i∈g} w_i (0 for a group without rows or weight in the batch), so that
a group with few rows cannot drift far while the batch-wide mean stays small. A step is feasible
only when KL_g ≤ b_g for every g; the quadratic-model cap is the smallest of the groups' caps (each
from its own k0_g and slope_g along x, all with the curvature xᵀFx). Recovery runs while any group
is over: it descends Σ_g [k0_g > b_g]·KL_g (the over-budget groups only, the indicator held at its
θ_old value) and accepts once KL(π_old‖π_θ) ≤ δ and the total excess Σ_g max(KL_g − b_g, 0) has
decreased.

Defaults (δ = 0.01, 10 CG iterations, damping 0.1, 10 backtracking steps × 0.8) are those of
OpenAI Spinning Up's TRPO (Achiam 2018), which follow Schulman et al. 2015 (δ = 0.01).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kltrust.distributions import Distribution
from kltrust.objectives.reduce import weighted_mean

KL_ANCHORS = ("old", "reference")


@dataclasses.dataclass(frozen=True)
class Variant:
    """The static choices of a TRPO variant (they change the compiled program)."""

    line_search: bool = True  # False: natural policy gradient, no KL check
    kl_anchor: str = "old"  # "reference": also keep KL(π_θ ‖ π_ref) ≤ kl_budget
    normalize_advantages: bool = True
    # With kl_anchor="reference": when the batch's KL to the reference is over the budget, step
    # along −F⁻¹∇KL_ref instead (a second CG solve; Achiam et al. 2017's recovery), see `step`.
    recovery: bool = False

    def __post_init__(self):
        if self.kl_anchor not in KL_ANCHORS:
            raise ValueError(f"variant.kl_anchor must be one of {KL_ANCHORS}, got {self.kl_anchor!r}.")
        if self.recovery and not self.uses_reference:
            raise ValueError("variant.recovery needs kl_anchor='reference' (it recovers the "
                             "budget on the KL to the reference).")

    @property
    def uses_reference(self) -> bool:
        return self.kl_anchor == "reference"


@flax.struct.dataclass
class StepCoefs:
    """The numeric knobs of one TRPO step, as arrays so that sweeps vmap over them."""

    delta: jax.Array  # trust region: KL(π_old ‖ π_θ) ≤ δ
    kl_budget: jax.Array  # only with kl_anchor="reference": KL(π_θ ‖ π_ref) ≤ kl_budget
    # (a vector [G], one budget per group, exactly when ``Batch.group`` is given)
    damping: jax.Array  # λ in (F + λI)
    backtrack_factor: jax.Array  # c in the step fractions cᵏ
    cg_residual_tol: jax.Array  # CG stops once rᵀr < this


@flax.struct.dataclass
class Batch:
    """Flat [B] policy batch. ``reference`` is π_ref's distribution, or None when unused."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array  # log π_old(a|s)
    policy: Distribution  # π_old(·|s)
    advantage: jax.Array
    reference: Distribution | None
    # Optional non-negative weights shaped like ``action``'s batch axes, normalised by their sum:
    # probabilities for exact expectations over an enumerated batch (every (context, action) of a
    # bandit with weight ρ(x)·π_old(a|x)), or a token mask. None = uniform.
    weight: jax.Array | None = None
    # Optional int32 group id in [0, G) per row of the leading axis [B] (a row is a sequence when
    # ``action`` is [B, L]); with it ``kl_budget`` is one budget per group. A row whose id is
    # outside [0, G) counts in no group (but still in the batch-wide ``kl_ref``).
    group: jax.Array | None = None


def _mean(values: jax.Array, batch: Batch) -> jax.Array:
    return weighted_mean(values, batch.weight)


PolicyFn = Callable[[jax.Array, jax.Array], Distribution]  # (flat policy params, obs) -> π(·|obs)


def conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array], b: jax.Array, iters: int, residual_tol: jax.Array | float
) -> tuple[jax.Array, jax.Array]:
    """Solves A x = b for symmetric positive-definite A given only x ↦ A x; returns (x, ‖b − A x‖).

    Hestenes–Stiefel CG from x₀ = 0, at most ``iters`` iterations, stopping once rᵀr <
    ``residual_tol`` (the TRPO convention). The residual returned is the recurrence's r, which
    equals b − A x in exact arithmetic. A `lax.while_loop`, so it jits and vmaps (a vmapped batch
    runs until every member has stopped). Written here rather than taken from
    `jax.scipy.sparse.linalg.cg` because that reports neither the residual nor allows the rᵀr rule.
    """
    x = jnp.zeros_like(b)
    r = b
    p = b
    rr = jnp.vdot(r, r)

    def cond(carry):
        i, _, _, _, rr = carry
        return (i < iters) & (rr >= residual_tol)

    def body(carry):
        i, x, r, p, rr = carry
        ap = matvec(p)
        # A zero curvature pᵀAp (only possible at an exact solution, rr = 0) must not make NaNs.
        alpha = rr / jnp.maximum(jnp.vdot(p, ap), jnp.finfo(b.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * ap
        new_rr = jnp.vdot(r, r)
        p = r + (new_rr / jnp.maximum(rr, jnp.finfo(b.dtype).tiny)) * p
        return i + 1, x, r, p, new_rr

    _, x, _, _, rr = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), x, r, p, rr))
    return x, jnp.sqrt(rr)


def mean_kl_to_old(policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch) -> jax.Array:
    """E_s KL(π_old(·|s) ‖ π_θ(·|s)), exact (`kltrust.kl`); its Hessian at θ_old is the Fisher."""
    return _mean(batch.policy.kl(policy_fn(flat_params, batch.obs)), batch)


def mean_kl_to_reference(policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch) -> jax.Array:
    """E_s KL(π_θ(·|s) ‖ π_ref(·|s)), exact (`kltrust.kl`), over the whole batch (every group)."""
    return _mean(policy_fn(flat_params, batch.obs).kl(batch.reference), batch)


def reference_kl_by_group(policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch,
                          num_groups: int) -> jax.Array:
    """[G] per-group KL_g = Σ_{i∈g} w_i·KL(π_θ‖π_ref)(s_i) / Σ_{i∈g} w_i, exact (`kltrust.kl`).

    Rows i are the leading axis, grouped by ``batch.group``; a row's w·KL sums over its trailing
    axes (tokens, masked by ``batch.weight``; uniform when None). A group with no rows (or zero
    weight) has KL_g = 0.
    """
    return _group_means(policy_fn(flat_params, batch.obs).kl(batch.reference), batch, num_groups)


def _group_means(values: jax.Array, batch: Batch, num_groups: int) -> jax.Array:
    weight = jnp.ones_like(values) if batch.weight is None else batch.weight
    rows = lambda x: jnp.sum(x.reshape(x.shape[0], -1), axis=1)  # [B, ...] -> [B]
    # A scatter-add, not a one-hot matmul: accelerators may run an f32 matmul at reduced precision
    # (TF32), too coarse for budgets ~1e-3. Ids outside [0, G) are dropped.
    total = jax.ops.segment_sum(rows(weight * values), batch.group, num_groups)
    mass = jax.ops.segment_sum(rows(weight), batch.group, num_groups)
    # A group without weight (no rows, or masked ones) has KL 0; the inner where also keeps its
    # 0/0 out of the gradient, which would otherwise carry NaN to its masked rows.
    return jnp.where(mass > 0, total / jnp.where(mass > 0, mass, 1.0), 0.0)


def _reference_kls(policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch,
                   num_groups: int) -> tuple[jax.Array, jax.Array]:
    """(batch-wide KL_ref, per-group KL_g [G]) from one forward pass."""
    kl = policy_fn(flat_params, batch.obs).kl(batch.reference)
    return _mean(kl, batch), _group_means(kl, batch, num_groups)


def _excess(kl_groups: jax.Array, budget: jax.Array) -> jax.Array:
    """Σ_g max(KL_g − b_g, 0): how far the groups are over their budgets in all."""
    return jnp.sum(jnp.maximum(kl_groups - budget, 0.0))


def _num_groups(batch: Batch, coefs: StepCoefs, variant: Variant) -> int | None:
    """G for a grouped batch, None otherwise; checks (at trace time) that group and budget agree."""
    budget_shape = jnp.shape(coefs.kl_budget)
    if batch.group is None:
        if budget_shape != ():
            raise ValueError(f"kl_budget has shape {budget_shape}: per-group budgets need "
                             "batch.group (a group id per row); without groups it is a scalar.")
        return None
    if not variant.uses_reference:
        raise ValueError("batch.group needs kl_anchor='reference' (the groups' budgets are on the "
                         "KL to the reference).")
    if len(budget_shape) != 1 or budget_shape[0] < 1:
        raise ValueError(f"batch.group is given, so kl_budget must be a vector [G] with one budget "
                         f"per group; got shape {budget_shape}.")
    rows = jnp.shape(batch.action)[:1]
    if jnp.shape(batch.group) != rows or not jnp.issubdtype(batch.group.dtype, jnp.integer):
        raise ValueError(f"batch.group must be integer ids shaped like the batch's rows {rows}; "
                         f"got {batch.group.dtype} {jnp.shape(batch.group)}.")
    return budget_shape[0]


def fisher_vector_product(
    policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch, damping: jax.Array | float
) -> Callable[[jax.Array], jax.Array]:
    """v ↦ (F + λI) v with F = ∇² E_s KL(π_old ‖ π_θ) at ``flat_params``, by forward-over-reverse.

    ``batch`` may be a sub-sample of the training batch (fewer states make each product cheaper; the
    gradient and line search still use the full batch). One product costs about two backward passes.
    """
    grad_kl = jax.grad(lambda p: mean_kl_to_old(policy_fn, p, batch))

    def fvp(v: jax.Array) -> jax.Array:
        return jax.jvp(grad_kl, (flat_params,), (v,))[1] + damping * v

    return fvp


def gauss_newton_vector_product(
    policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch, damping: jax.Array | float
) -> Callable[[jax.Array], jax.Array]:
    """v ↦ (Jᵀ H J + λI) v: the KL's Gauss–Newton matrix, J = ∂π_θ(·|s)/∂θ (the distribution's
    parameters, e.g. logits) at ``flat_params`` and H = ∇² E_s KL(π_old ‖ π) in those parameters.

    Where ``batch.policy`` is π at ``flat_params`` (θ_old, where TRPO takes its step) the KL's
    gradient in the distribution's parameters is zero, so this is `fisher_vector_product`'s Hessian
    there, up to rounding; elsewhere it leaves out the KL's curvature through the network
    (Σ ∂KL/∂π · ∇²π), and it is positive semi-definite everywhere. The network is linearised
    once, here; each product is then one tangent pass forward and one transposed pass back (about
    two thirds of the forward-over-reverse product's matrix multiplications).
    """
    dist, jvp = jax.linearize(lambda p: policy_fn(p, batch.obs), flat_params)
    vjp = jax.linear_transpose(jvp, flat_params)
    grad_kl = jax.grad(lambda d: _mean(batch.policy.kl(d), batch))

    def fvp(v: jax.Array) -> jax.Array:
        h_jv = jax.jvp(grad_kl, (dist,), (jvp(v),))[1]
        return vjp(h_jv)[0] + damping * v

    return fvp


def surrogate(policy_fn: PolicyFn, flat_params: jax.Array, batch: Batch) -> jax.Array:
    """L(θ) = E[exp(log π_θ(a|s) − log π_old(a|s))·A]; equals E[A] at θ_old."""
    new_log_prob = policy_fn(flat_params, batch.obs).log_prob(batch.action)
    return _mean(jnp.exp(new_log_prob - batch.log_prob) * batch.advantage, batch)


def _normalized(batch: Batch, variant: Variant) -> Batch:
    if not variant.normalize_advantages:
        return batch
    a = batch.advantage
    mean = _mean(a, batch)
    std = jnp.sqrt(_mean(jnp.square(a - mean), batch))
    return batch.replace(advantage=(a - mean) / (std + 1e-8))


def step(
    policy_fn: PolicyFn,
    flat_params: jax.Array,
    batch: Batch,
    coefs: StepCoefs,
    *,
    variant: Variant,
    cg_iters: int = 10,
    max_backtracks: int = 10,
    fvp_subsample: int = 1,
    gauss_newton: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One TRPO (or NPG) policy update of ``flat_params``; returns (new flat params, metrics).

    ``fvp_subsample`` = k uses every k-th state of the batch for the Fisher-vector products.
    ``gauss_newton`` takes them as `gauss_newton_vector_product` (the same matrix when
    ``batch.policy`` is π at ``flat_params``, up to rounding, and cheaper) instead of by
    forward-over-reverse differentiation of the KL (`fisher_vector_product`).
    Metrics (scalars): ``kl_old`` (exact KL(π_old ‖ π_new) after the step, 0 if rejected),
    ``kl_ref`` (reference anchor only), ``delta``, ``accepted`` (1/0), ``backtracks`` (line-search
    steps taken: 0 = the full step; ``max_backtracks`` when rejected), ``step_fraction`` (cᵏ, 0 if
    rejected), ``step_norm`` (‖θ_new − θ_old‖), ``cg_residual``, ``cg_relative_residual``
    (‖r‖/‖g‖), ``surrogate_improvement`` (actual), ``expected_improvement`` (gᵀs of the full step),
    ``grad_norm``. With ``batch.group`` (and ``kl_budget`` a vector [G]) the budget holds per group
    (module docstring); ``kl_ref`` stays batch-wide, ``kl_budget`` is not reported (no one scalar is
    the budget), and ``kl_ref_groups`` ([G], after the step) and ``kl_ref_excess`` (Σ_g max(KL_g −
    b_g, 0), after the step) are added. Without groups the program is exactly the ungrouped one.
    """
    num_groups = _num_groups(batch, coefs, variant)
    grouped = num_groups is not None  # static: the ungrouped program is left untouched
    batch = _normalized(batch, variant)
    surrogate_fn = lambda p: surrogate(policy_fn, p, batch)
    old_surrogate, g = jax.value_and_grad(surrogate_fn)(flat_params)
    if fvp_subsample > 1:
        fvp_batch = jax.tree.map(lambda x: x[::fvp_subsample], batch)
    else:
        fvp_batch = batch
    fvp = (gauss_newton_vector_product if gauss_newton else fisher_vector_product)(
        policy_fn, flat_params, fvp_batch, coefs.damping)
    direction, residual = conjugate_gradient(fvp, g, cg_iters, coefs.cg_residual_tol)

    curvature = jnp.maximum(jnp.vdot(direction, fvp(direction)), jnp.finfo(g.dtype).tiny)
    scale = jnp.sqrt(2.0 * coefs.delta / curvature)
    if variant.uses_reference:
        # Largest α with k₀ + α·b + ½α²·xᵀFx ≤ budget (the quadratic model of the reference KL along x,
        # its curvature approximated by the Fisher); 0 when the budget is already spent. Grouped,
        # k0, slope and budget are [G] (one jvp of the vector KL) and the tightest group's α caps.
        if grouped:
            kl_ref_fn = lambda p: reference_kl_by_group(policy_fn, p, batch, num_groups)
        else:
            kl_ref_fn = lambda p: mean_kl_to_reference(policy_fn, p, batch)
        k0, slope = jax.jvp(kl_ref_fn, (flat_params,), (direction,))
        room = jnp.maximum(coefs.kl_budget - k0, 0.0)
        budget_scale = (-slope + jnp.sqrt(slope**2 + 2.0 * curvature * room)) / curvature
        scale = jnp.minimum(scale, jnp.min(budget_scale) if grouped else budget_scale)
    full_step = scale * direction
    recovering = jnp.array(False)
    if variant.recovery:
        # Over the budget (k0 > budget) no improving step qualifies, so take the one that most
        # reduces the reference KL within the trust region: y = (F + λI)⁻¹∇KL_ref by a second CG
        # solve, the step −y scaled to the quadratic model's boundary ½sᵀFs = δ.
        if grouped:
            # ∇ Σ_g [k0_g > b_g]·KL_g, the indicator fixed at θ_old: a vjp with the indicator as
            # cotangent. Groups within budget are not pushed down (they may use their room), but
            # acceptance counts every group's excess, so none may be pushed over either.
            k0, pullback = jax.vjp(kl_ref_fn, flat_params)
            over = k0 > coefs.kl_budget
            recovering = jnp.any(over)
            (grad_ref,) = pullback(over.astype(k0.dtype))
            excess0 = _excess(k0, coefs.kl_budget)
        else:
            k0, grad_ref = jax.value_and_grad(kl_ref_fn)(flat_params)
            recovering = k0 > coefs.kl_budget
        down, _ = conjugate_gradient(fvp, grad_ref, cg_iters, coefs.cg_residual_tol)
        down_curvature = jnp.maximum(jnp.vdot(down, fvp(down)), jnp.finfo(g.dtype).tiny)
        full_step = jnp.where(recovering, -jnp.sqrt(2.0 * coefs.delta / down_curvature) * down,
                              full_step)
    expected = jnp.vdot(g, full_step)

    def evaluate(fraction):
        candidate = flat_params + fraction * full_step
        kls = {"kl_old": mean_kl_to_old(policy_fn, candidate, batch)}
        feasible = kls["kl_old"] <= coefs.delta
        if grouped:
            kls["kl_ref"], kls["kl_ref_groups"] = _reference_kls(policy_fn, candidate, batch,
                                                                 num_groups)
            kls["kl_ref_excess"] = _excess(kls["kl_ref_groups"], coefs.kl_budget)
            feasible = feasible & jnp.all(kls["kl_ref_groups"] <= coefs.kl_budget)
        elif variant.uses_reference:
            kls["kl_ref"] = mean_kl_to_reference(policy_fn, candidate, batch)
            feasible = feasible & (kls["kl_ref"] <= coefs.kl_budget)
        improvement = surrogate_fn(candidate) - old_surrogate
        ok = feasible & (improvement > 0) & jnp.isfinite(improvement)
        if variant.recovery:  # recovering: accepted once inside the trust region and closer
            if grouped:  # closer = less total excess (a group's excess may trade against another's)
                excess = kls["kl_ref_excess"]
                closer = (kls["kl_old"] <= coefs.delta) & (excess < excess0) & jnp.isfinite(excess)
                ok = jnp.where(recovering, closer, ok)
            else:
                closer = (kls["kl_old"] <= coefs.delta) & (kls["kl_ref"] < k0)
                ok = jnp.where(recovering, closer & jnp.isfinite(kls["kl_ref"]), ok)
        return candidate, kls, improvement, ok

    if variant.line_search:
        def cond(carry):
            k, accepted = carry
            return (k < max_backtracks) & ~accepted

        def body(carry):
            k, _ = carry
            accepted = evaluate(coefs.backtrack_factor**k)[3]
            return jnp.where(accepted, k, k + 1), accepted

        backtracks, accepted = jax.lax.while_loop(
            cond, body, (jnp.zeros((), jnp.int32), jnp.array(False))
        )
        fraction = jnp.where(accepted, coefs.backtrack_factor**backtracks, 0.0)
    else:
        backtracks, accepted, fraction = jnp.zeros((), jnp.int32), jnp.array(True), jnp.ones(())

    # Re-evaluating the accepted fraction (rather than carrying candidates through the loop) keeps
    # the loop state small; with fraction 0 the "candidate" is θ_old itself.
    new_params, kls, improvement, _ = evaluate(fraction)
    new_params = jnp.where(accepted, new_params, flat_params)
    metrics = {
        **kls,
        "delta": coefs.delta,
        "accepted": accepted.astype(jnp.float32),
        "backtracks": backtracks.astype(jnp.float32),
        "step_fraction": fraction,
        "step_norm": jnp.linalg.norm(new_params - flat_params),
        "cg_residual": residual,
        "cg_relative_residual": residual / jnp.maximum(jnp.linalg.norm(g), jnp.finfo(g.dtype).tiny),
        "surrogate_improvement": jnp.where(accepted, improvement, 0.0),
        "expected_improvement": expected,
        "grad_norm": jnp.linalg.norm(g),
    }
    if variant.uses_reference and not grouped:
        metrics["kl_budget"] = coefs.kl_budget
    if variant.recovery:
        metrics["recovery"] = recovering.astype(jnp.float32)
    return new_params, metrics


def flat_policy_fn(apply_fn: Callable[[Any, jax.Array], Any], unravel: Callable[[jax.Array], Any],
                   rest: Any, merge: Callable[[Any, Any], Any]) -> PolicyFn:
    """Adapts a model's ``apply_fn(params, obs) -> (dist, value)`` to flat policy parameters.

    ``merge(policy_params, rest)`` rebuilds the full parameter tree (``rest`` holds what the policy
    step does not touch, e.g. the critic); the unused value output is removed by XLA.
    """

    def policy_fn(flat_params: jax.Array, obs: jax.Array) -> Distribution:
        return apply_fn(merge(unravel(flat_params), rest), obs)[0]

    return policy_fn
