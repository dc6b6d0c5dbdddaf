"""``rl.stats_chunk``: the token trainer with a chunked rollout (`kltrust.models.chunked`, no
[B, L, V] logits kept) computes what the whole-batch trainer computes.

Each case runs the policy stage twice on a tiny random stack — ``stats_chunk = 0`` (whole batch)
and ``stats_chunk = 3`` (not a divisor of the 8-row batch nor of the 16 evaluation prompts:
`chunked.rows_per_chunk` picks 2) — for three updates (two epochs each, so PPO's second epoch
measures a nonzero KL(π_old‖π_θ) from the recomputed π_old, and the KL to the reference grows off
its initial 0) and compares every update's metrics and the initial evaluation. Sampling does not
depend on the setting (the decode path is the same); what differs is how rows are grouped for the
teacher-forced pass, and for PPO that π_old and π_ref are recomputed per minibatch instead of
indexed from the rollout.

Tolerance: the same per-row float32 maths on row blocks of different sizes; XLA CPU may group a
matmul's accumulation by block size, so the two agree to float32 rounding (~1e-6 relative per
logit), carried through three Adam steps (measured: ≤ 1.3e-6 relative on every metric, 2026-11-30).
rtol = 1e-4 leaves ~100× headroom; atol = 1e-6 covers metrics that are 0 up to rounding (the
policy loss at the start, the clip fraction). The later updates sample with parameters that differ
by rounding: a sampled token could flip only where two Gumbel-perturbed logits tie to ~1e-6,
which over the 144 sampled tokens has a probability of order 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest

from kltrust.errors import ConfigError
from kltrust.models import chunked
from kltrust.train import pipeline
from token_helpers import random_models, tiny_token_config

pytestmark = pytest.mark.slow


def _run(preset: str, stats_chunk: int, tmp_path, **rl):
    config = tiny_token_config(preset, num_updates=3, updates_per_eval=3, minibatches=1,
                               epochs=2, stats_chunk=stats_chunk, **rl)
    config.rl.hparams.learning_rate = 3e-3  # the KL to the reference leaves 0 within 3 updates
    pipeline.validate(config)
    spec = pipeline.spec_from_config(config)
    ref_params, rm_params = random_models(spec)
    return pipeline.run_policy(spec, tmp_path, ref_params, rm_params, write=False)


def _compare(whole, chunked_run, skip=()):
    if "kl" in whole.train_metrics:  # sampling methods: the KL compared is not all zeros
        assert np.max(whole.train_metrics["kl"]) > 0.05
    keys = set(whole.train_metrics) - set(skip)
    assert keys <= set(chunked_run.train_metrics), keys - set(chunked_run.train_metrics)
    for key in sorted(keys):
        got, want = chunked_run.train_metrics[key], whole.train_metrics[key]
        if key == "reward_accuracy":
            # DPO's fraction of pairs with margin > 0: at the first update π = π_ref, every
            # margin is 0 exactly in the whole-batch program and ±rounding in the chunked one, so
            # a discontinuous statistic of a tie; compared from the second update on.
            got, want = got[..., 1:], want[..., 1:]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=key)
    first = [(a, b) for a, b in zip(whole.evals, chunked_run.evals) if a["update"] == 0]
    assert first
    for a, b in first:
        assert a["samples"] == b["samples"]  # the same responses: sampling does not change
        for key in ("gold", "proxy", "kl", "kl_k1", "entropy", "length"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("preset,rl,skip", [
    # PPO with the KL in the loss and the exact estimator: π_ref's full distribution enters the
    # loss's gradient, and π_old's the reported kl_old — both recomputed per minibatch when chunked.
    ("ppo", dict(kl_placement="loss", kl_estimator="exact"), ()),
    # GRPO (k3 in the loss): log-probs only; its kl_exact_* diagnostics need the reference's full
    # logits inside the loss and are not computed after a chunked rollout.
    ("grpo", dict(), ("kl_exact_token", "kl_exact_sequence")),
    # Offline DPO: the reference's sequence log-probs of the drawn pairs, chunked.
    ("dpo", dict(), ()),
])
def test_chunked_rollout_matches_the_whole_batch(preset, rl, skip, tmp_path):
    whole = _run(preset, 0, tmp_path / "whole", **rl)
    part = _run(preset, 3, tmp_path / "chunked", **rl)
    if skip:
        assert set(skip) <= set(whole.train_metrics) and not set(skip) & set(part.train_metrics)
    _compare(whole, part, skip)


def test_rows_per_chunk_is_the_largest_divisor_not_above_the_limit():
    assert chunked.rows_per_chunk(3, 8) == 2
    assert chunked.rows_per_chunk(4, 16) == 4
    assert chunked.rows_per_chunk(100, 12) == 12
    assert chunked.rows_per_chunk(5, 7) == 1
    with pytest.raises(ValueError, match="limit"):
        chunked.rows_per_chunk(0, 8)


@pytest.mark.parametrize("method,value,allowed", [
    ("ppo", -1, "an integer >= 0"),
    ("trpo", 2, "0 for method 'trpo'"),
])
def test_bad_stats_chunk_is_one_clear_error(method, value, allowed):
    config = tiny_token_config(method)
    config.rl.stats_chunk = value
    with pytest.raises(ConfigError, match="rl.stats_chunk") as error:
        pipeline.validate(config)
    assert allowed in str(error.value) and str(value) in str(error.value)
