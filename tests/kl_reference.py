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
}


def numpy_estimate(name, logp, logp_ref):
    """The float64 restatement of estimator ``name`` at log p = ``logp``, log p_ref = ``logp_ref``."""
    delta = np.asarray(logp, np.float64) - np.asarray(logp_ref, np.float64)
    return NUMPY_ESTIMATORS[name](delta)
