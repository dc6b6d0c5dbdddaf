"""Independent float64 NumPy restatements of the registered KL sample estimators, by name.

Each is a function of the log-ratio δ = log p − log p_ref (float64), written from its formula, not
from `kltrust.kl`. Tests that iterate `kltrust.kl.estimators()` compare against these, and
``tests/test_kl.py::test_every_registered_estimator_has_a_numpy_restatement`` fails when an
estimator is registered without one here.
"""

import numpy as np

NUMPY_ESTIMATORS = {
    "k1": lambda d: d,
    "k2": lambda d: 0.5 * d**2,
    "k3": lambda d: np.exp(-d) - 1 + d,
    "k_half": lambda d: 0.5 * np.expm1(-d) + d,  # λ(r − 1) − log r at λ = ½
    # Corrections change gradients, not values: on-policy (ρ = p/p_old = 1) each equals its base.
    "k1+": lambda d: d,
    "k3+": lambda d: np.exp(-d) - 1 + d,
    "k3_is": lambda d: np.exp(-d) - 1 + d,
}


# Importance-corrected estimators: ρ·k with ρ = p/p_old for samples from p_old.
IMPORTANCE = {"k3_is"}


def numpy_estimate(name, logp, logp_ref, logp_old=None):
    """The float64 restatement of estimator ``name`` at log p = ``logp``, log p_ref = ``logp_ref``
    (and, for an importance-corrected one, log p_old = ``logp_old``; None: on-policy, ρ = 1)."""
    delta = np.asarray(logp, np.float64) - np.asarray(logp_ref, np.float64)
    value = NUMPY_ESTIMATORS[name](delta)
    if name in IMPORTANCE and logp_old is not None:
        value = value * np.exp(np.asarray(logp, np.float64) - np.asarray(logp_old, np.float64))
    return value
