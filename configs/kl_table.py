"""KL estimator table: bias and spread of every registered sample estimator (k1, k2, k3, ...; see
`kltrust.kl.estimators()`) against the exact KL.

Run: python -m experiments.kl_table --config=configs/kl_table.py --workdir=runs/kl_table

The first two Gaussian pairs are the setting of Schulman's "Approximating KL divergence" (2020)
table (samples from N(0, 1), reference N(0.1, 1) and N(1, 1)), so the numbers can be compared
with the published ones.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.n_samples = 1_000_000
    # Each pair is (mean, std, mean_ref, std_ref) for 1-D Gaussians p and p_ref.
    config.gaussian_pairs = (
        (0.0, 1.0, 0.1, 1.0),
        (0.0, 1.0, 1.0, 1.0),
        (0.0, 1.0, 0.0, 2.0),
        (0.0, 1.0, 2.0, 1.0),
    )
    # Categorical pairs: p = softmax(z), p_ref = softmax(z + scale·u) with z, u ~ N(0, I) fixed by
    # the seed, so a larger scale moves the reference further away.
    config.num_classes = 16
    config.categorical_scales = (0.1, 0.5, 1.0, 2.0)
    return config
