"""The estimator-table experiment: values, determinism, validation and the end-to-end CLI."""

import csv
import pathlib
import sys

import numpy as np
import pytest

import subprocs
from configs import kl_table as kl_table_config
from experiments import kl_table
from kltrust import kl


def _small_config(**overrides):
    config = kl_table_config.get_config()
    config.n_samples = 100_000
    config.gaussian_pairs = ((0.0, 1.0, 1.0, 1.0), (0.0, 1.0, 2.0, 1.0))
    config.categorical_scales = (1.0,)
    config.update(overrides)
    return config


def test_rows_reproduce_closed_forms_and_are_deterministic():
    rows = kl_table.compute_rows(_small_config(), progress=False)
    again = kl_table.compute_rows(_small_config(), progress=False)
    assert rows == again  # same seed, same numbers, bit for bit
    mu1, mu2, cat = rows
    assert mu1.true_kl == pytest.approx(0.5, rel=1e-6) and mu2.true_kl == pytest.approx(2.0, rel=1e-6)
    # Closed forms for N(0,1) vs N(μ,1): k2 bias/KL = μ²/4; stdev/KL of k1 = 2/μ (δ = μ²/2 − μx).
    # 0.05 absolute is > 5 standard errors at 1e5 samples for these quantities.
    for row, mu in ((mu1, 1.0), (mu2, 2.0)):
        assert row.bias_over_kl["k2"] == pytest.approx(mu**2 / 4, abs=0.05)
        assert row.std_over_kl["k1"] == pytest.approx(2 / mu, rel=0.02)
        assert abs(row.bias_over_kl["k1"]) < 0.05 and abs(row.bias_over_kl["k3"]) < 0.05
    assert cat.family == "categorical" and abs(cat.bias_over_kl["k3"]) < 0.05
    # Every registered unbiased estimator: bias within 5 standard errors of the mean (std/KL/√n).
    for row in rows:
        for name in kl.estimators(unbiased=True, reward_term=True):
            sem = row.std_over_kl[name] / np.sqrt(_small_config().n_samples)
            assert abs(row.bias_over_kl[name]) < 5 * sem, (row.description, name)
    assert kl_table.compute_rows(_small_config(seed=1), progress=False) != rows


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"n_samples": 1}, r"config.n_samples = 1: must be an integer >= 2"),
        ({"gaussian_pairs": ((0.0, -1.0, 0.0, 1.0),)},
         r"config.gaussian_pairs\[0\] = \(0.0, -1.0, 0.0, 1.0\): must be .* std and std_ref are > 0"),
        ({"gaussian_pairs": ((0.0, 1.0, 0.0, 1.0),)}, r"config.gaussian_pairs\[0\] = .*p != p_ref"),
        ({"gaussian_pairs": ((0.0, float("inf"), 1.0, 1.0),)},
         r"config.gaussian_pairs\[0\] = \(0.0, inf, 1.0, 1.0\): must be .* four finite numbers"),
        ({"categorical_scales": (1.0, 0.0)}, r"config.categorical_scales\[1\] = 0.0: must be finite and > 0"),
        ({"categorical_scales": (float("nan"),)}, r"config.categorical_scales\[0\] = nan: must be finite"),
    ],
)
def test_bad_config_values_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        kl_table.validate(_small_config(**overrides))


def test_cli_writes_table_and_plot(tmp_path):
    workdir = tmp_path / "table"
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocs.run(
        [sys.executable, "-m", "experiments.kl_table", f"--workdir={workdir}",
         "--config.n_samples=20000", "--config.categorical_scales=(0.5,)"],
        cwd=root, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("kl_table.csv", "kl_table.md", "kl_table.png", "config.json"):
        assert (workdir / name).stat().st_size > 0, name
    with open(workdir / "kl_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["family"] for r in rows] == ["gaussian"] * 4 + ["categorical"]
    assert set(rows[0]) == {"family", "pair", "true_kl"} | {
        f"{name}_{stat}_over_kl" for name in kl.estimators(reward_term=True) for stat in ("bias", "std")}
    true_kls = [float(r["true_kl"]) for r in rows[:4]]
    np.testing.assert_allclose(true_kls, [0.005, 0.5, np.log(2) + 1 / 8 - 0.5, 2.0], rtol=1e-4)


def test_cli_bad_override_fails_before_writing(tmp_path):
    workdir = tmp_path / "kept"
    workdir.mkdir()
    (workdir / "kl_table.csv").write_text("earlier result\n")
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocs.run(
        [sys.executable, "-m", "experiments.kl_table", f"--workdir={workdir}", "--config.n_samples=0"],
        cwd=root, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == "error: config.n_samples = 0: must be an integer >= 2."
    assert (workdir / "kl_table.csv").read_text() == "earlier result\n"
