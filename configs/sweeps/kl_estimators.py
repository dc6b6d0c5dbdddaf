"""KL estimator table (every registered estimator, `kltrust.kl.estimators()`): bias/true KL and
stdev/true KL of one-sample estimates.

    python -m experiments.kl_table --config=configs/sweeps/kl_estimators.py --workdir=runs/kl_table

The first two Gaussian pairs reproduce the setting of Schulman's "Approximating KL divergence"
(2020) table; the rest widen it (a scale change, a far shift, categorical pairs). Recorded in
docs/concepts/kl-core.md with the published numbers beside ours.
"""

from configs.kl_table import get_config  # noqa: F401  (one definition, two entry names)
