"""Sweep report: aggregates against NumPy on the raw arrays, Gao et al. fits against known curves,
and the report writer end to end."""

import json
import math
import pathlib
import sys

import numpy as np
import pandas as pd
import pytest

import subprocs
from experiments import report as report_cli
from kltrust import overoptimization as oo
from kltrust import report

TASKS = ("CartPole-v1", "Pendulum-v1")
LABELS = ("adaptive KL", "clip ε=0.1", "clip ε=0.2")
ARMS = ("adaptive KL", "clip", "clip")
SEEDS = (0, 1)
UPDATES = (1, 2, 3)
RANDOM = {"CartPole-v1": 20.0, "Pendulum-v1": -1200.0}


def _returns() -> np.ndarray:
    """[task, label, seed, update] returns; one NaN (no finished episode yet) at the first update."""
    rng = np.random.default_rng(0)
    base = np.array([100.0, -600.0])[:, None, None, None]
    values = base + 50 * rng.standard_normal((len(TASKS), len(LABELS), len(SEEDS), len(UPDATES)))
    values[0, 1, 0, 0] = np.nan
    return values


def _control_df(values: np.ndarray) -> pd.DataFrame:
    rows = []
    for ti, task in enumerate(TASKS):
        for li, (label, arm) in enumerate(zip(LABELS, ARMS)):
            for si, seed in enumerate(SEEDS):
                run = f"{ti}{li}{si}"
                for ui, update in enumerate(UPDATES):
                    rows.append({"sweep": "s", "arm": arm, "task": task, "run": run, "group": li,
                                 "seed": seed, "label": label, "update": update,
                                 "env_steps": 100 * update,
                                 "episode_return": values[ti, li, si, ui],
                                 "kl_old": 0.01 * (1 + li + si + ui)})
    return pd.DataFrame(rows)


def _token_df() -> pd.DataFrame:
    """Two PPO configs × 2 seeds × updates 0..2 (update 0 is the reference), plus best-of-n rows."""
    rows = []
    for li, beta in enumerate((0.1, 0.01)):
        for seed in SEEDS:
            for update in (0, 1, 2):
                kl = update * (1 + li) * (1 + 0.5 * seed)
                rows.append({"arm": "ppo", "label": f"ppo β={beta}", "run": f"p{li}{seed}",
                             "seed": seed, "update": update, "n": np.nan, "kl": kl,
                             "gold": 1.0 + 0.3 * kl - 0.05 * kl**2 + 0.01 * seed,
                             "proxy": 1.0 + 0.5 * kl})
    for seed in SEEDS:
        for n in (1, 2, 4, 8, 16):
            kl = math.log(n) - (n - 1) / n
            rows.append({"arm": "best of n", "label": "best of n", "run": f"b{seed}", "seed": seed,
                         "update": np.nan, "n": n, "kl": kl,
                         "gold": 1.0 + 0.4 * math.sqrt(kl) - 0.1 * kl + 0.01 * seed,
                         "proxy": 1.0 + 0.6 * math.sqrt(kl)})
    return pd.DataFrame(rows)


@pytest.fixture
def values():
    return _returns()


@pytest.fixture
def control(values):
    return _control_df(values)


# ---------------------------------------------------------------- tables


def test_load_keeps_run_ids_as_strings(tmp_path):
    pd.DataFrame({"run": ["007", "010"], "task": ["", "a"], "update": [1, 2]}).to_csv(
        tmp_path / "results.csv", index=False)
    df = report.load(tmp_path / "results.csv")
    assert list(df["run"]) == ["007", "010"] and pd.isna(df["task"][0])


def test_final_picks_last_update_and_keeps_runs_without_x(control, values):
    last = report.final(control)
    assert len(last) == len(TASKS) * len(LABELS) * len(SEEDS) and set(last["update"]) == {3}
    got = last.set_index("run")["episode_return"]
    for ti in range(len(TASKS)):
        for li in range(len(LABELS)):
            for si in range(len(SEEDS)):
                assert got[f"{ti}{li}{si}"] == values[ti, li, si, -1]
    token = report.final(_token_df())
    assert len(token[token["arm"] == "ppo"]) == 4 and set(token.loc[token["arm"] == "ppo", "update"]) == {2}
    assert len(token[token["arm"] == "best of n"]) == 10  # no update: every n is kept
    with pytest.raises(ValueError, match="'env_step'"):
        report.final(control, x="env_step")


def test_seed_summary_matches_numpy(control, values):
    summary = report.seed_summary(report.final(control), ["task", "label"], "episode_return")
    final = values[..., -1]  # [task, label, seed]
    assert list(summary["n_seeds"]) == [len(SEEDS)] * len(TASKS) * len(LABELS)
    for ti, task in enumerate(TASKS):
        for li, label in enumerate(LABELS):
            row = summary[(summary["task"] == task) & (summary["label"] == label)].iloc[0]
            x = final[ti, li]
            std = math.sqrt(((x - x.mean()) ** 2).sum() / (len(x) - 1))
            assert row["episode_return_mean"] == pytest.approx(x.mean(), rel=1e-12)
            assert row["episode_return_std"] == pytest.approx(std, rel=1e-12)
            assert row["episode_return_sem"] == pytest.approx(std / math.sqrt(len(x)), rel=1e-12)
    # NaNs are ignored, one value has no spread, and no grouping is one row.
    first = report.seed_summary(control[control["update"] == 1], ["task", "label"], "episode_return")
    lone = first[(first["task"] == TASKS[0]) & (first["label"] == LABELS[1])].iloc[0]
    assert lone["episode_return_mean"] == values[0, 1, 1, 0] and math.isnan(lone["episode_return_std"])
    everything = report.seed_summary(control, [], "kl_old")
    assert len(everything) == 1 and everything["kl_old_mean"][0] == pytest.approx(
        control["kl_old"].to_numpy().mean())


def test_normalised_scores_match_hand_computation(control, values):
    table = report.normalised_scores(report.final(control), random=RANDOM)
    means = values[..., -1].mean(axis=-1)  # [task, label]
    expected = np.empty_like(means)
    for ti, task in enumerate(TASKS):
        expected[ti] = (means[ti] - RANDOM[task]) / (means[ti].max() - RANDOM[task])
    expected_avg = expected.mean(axis=0)
    order = np.argsort(-expected_avg)
    assert list(table["label"]) == [LABELS[i] for i in order]
    assert list(table.columns) == ["label", *TASKS, "average"]
    for ti, task in enumerate(TASKS):
        np.testing.assert_allclose(table[task], expected[ti, order], rtol=1e-12)
        assert table[task].max() == 1.0
    np.testing.assert_allclose(table["average"], expected_avg[order], rtol=1e-12)
    with pytest.raises(ValueError, match="Pendulum-v1"):
        report.normalised_scores(report.final(control), random={"CartPole-v1": 20.0})
    with pytest.raises(ValueError, match="one row per run"):
        report.normalised_scores(control, random=RANDOM)


def test_markdown_exact():
    df = pd.DataFrame({"label": ["a|b", "c"], "score": [1.23456, np.nan], "n": [2, 3]})
    assert report.markdown(df) == (
        "| label | score | n |\n"
        "|---|---:|---:|\n"
        "| a\\|b | 1.23 | 2 |\n"
        "| c | — | 3 |\n")
    assert report.markdown(df, floatfmt=".1f").splitlines()[2] == "| a\\|b | 1.2 | 2 |"


# ---------------------------------------------------------------- plots


def test_learning_curves_png_and_means(control, values, tmp_path):
    path = tmp_path / "curves.png"
    task0 = control[control["task"] == TASKS[0]]
    agg = report.learning_curves(task0, "env_steps", ["episode_return", "kl_old"], "label", path,
                                 band="sem", title="t", logy=["kl_old"])
    assert path.stat().st_size > 1000
    assert len(agg) == len(LABELS) * len(UPDATES)
    for li, label in enumerate(LABELS):
        rows = agg[agg["label"] == label]
        assert list(rows["env_steps"]) == [100, 200, 300]
        np.testing.assert_allclose(rows["episode_return_mean"], np.nanmean(values[0, li], axis=0),
                                   rtol=1e-12)
    for band in ("std", "minmax"):
        report.learning_curves(task0, "update", "episode_return", ["label"], tmp_path / f"{band}.png",
                               band=band)
    with pytest.raises(ValueError, match="band"):
        report.learning_curves(task0, "update", "episode_return", "label", path, band="iqr")
    with pytest.raises(ValueError, match="'missing'"):
        report.learning_curves(task0, "update", "missing", "label", path)


def test_frontier_png_and_means(tmp_path):
    token = report.final(_token_df())
    path = tmp_path / "frontier.png"
    agg = report.frontier(token, path=path, sqrt_kl=True)
    assert path.stat().st_size > 1000
    row = agg[agg["label"] == "ppo β=0.1"].iloc[0]
    kl = np.array([2 * 1.0, 2 * 1.5])  # update 2, li 0, seeds 0 and 1
    gold = 1.0 + 0.3 * kl - 0.05 * kl**2 + 0.01 * np.array([0, 1])
    assert row["n_seeds"] == 2 and row["kl_mean"] == pytest.approx(kl.mean())
    assert row["gold_mean"] == pytest.approx(gold.mean())
    assert row["gold_sem"] == pytest.approx(np.std(gold, ddof=1) / math.sqrt(2))
    assert row["sqrt_kl_mean"] == pytest.approx(np.sqrt(kl).mean())
    bon = agg[agg["label"] == "best of n"].iloc[0]  # every n pooled under one label
    assert bon["n_seeds"] == 10
    # Within a colour the points are in order of KL.
    ppo = agg[agg["arm"] == "ppo"]
    assert list(ppo["kl_mean"]) == sorted(ppo["kl_mean"])
    # Per-n points: group by (label, n).
    per_n = report.frontier(token[token["arm"] == "best of n"], by=["label", "n"],
                            path=tmp_path / "bon.png")
    np.testing.assert_allclose(per_n["kl_mean"],
                               [math.log(n) - (n - 1) / n for n in (1, 2, 4, 8, 16)], atol=1e-15)


# ---------------------------------------------------------------- overoptimization


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_recovers_noiseless_curve(form):
    alpha, beta = 0.8, 0.3
    d = np.linspace(0.0, 4.0, 50)
    g = d**2 if form == "bon" else np.where(d > 0, d * np.log(np.where(d > 0, d, 1)), 0)
    r = alpha * d - beta * g
    result = oo.fit(d, r, form)
    assert result.alpha == pytest.approx(alpha, abs=1e-8) and result.beta == pytest.approx(beta, abs=1e-8)
    assert result.r2 == pytest.approx(1.0, abs=1e-12) and result.rmse < 1e-10 and result.n == 50
    assert result.form == form
    np.testing.assert_allclose(result.predict(d), r, atol=1e-10)


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fit_with_noise_within_standard_errors(form):
    alpha, beta, sigma = 0.8, 0.3, 0.02
    rng = np.random.default_rng(1)
    d = rng.uniform(0.0, 4.0, 200)
    g = d**2 if form == "bon" else d * np.log(d)
    r = alpha * d - beta * g + sigma * rng.standard_normal(200)
    result = oo.fit(d, r, form)
    # OLS standard errors σ·sqrt(diag((XᵀX)⁻¹)) are ~1e-3 here; 5 of them is a generous bound.
    x = np.stack([d, -g], axis=1)
    se = sigma * np.sqrt(np.diag(np.linalg.inv(x.T @ x)))
    assert se.max() < 0.01
    assert abs(result.alpha - alpha) < 5 * se[0] and abs(result.beta - beta) < 5 * se[1]
    assert result.rmse == pytest.approx(sigma, rel=0.15) and result.r2 > 0.99


@pytest.mark.parametrize(
    "d,r,form,message",
    [
        ([0.1, 0.2, 0.3], [0, 0, 0], "exp", r"form must be one of \('bon', 'rl'\)"),
        ([0.1, 0.2], [0, 0], "rl", r"at least 3 points"),
        ([0.1, 0.2, 0.3], [0, 0], "rl", r"r must have the shape of d"),
        ([[0.1, 0.2, 0.3]], [[0, 0, 0]], "rl", r"d must be 1-D"),
        ([0.1, -0.2, 0.3], [0, 0, 0], "rl", r"d must be >= 0"),
        ([0.1, np.nan, 0.3], [0, 0, 0], "bon", r"d must be finite"),
        ([0.1, 0.2, 0.3], [0, np.inf, 0], "bon", r"r must be finite"),
        ([0.0, 0.5, 0.5], [0, 1, 1], "bon", r"d must hold at least 2 distinct positive"),
    ],
)
def test_fit_rejects_bad_inputs(d, r, form, message):
    with pytest.raises(ValueError, match=message):
        oo.fit(d, r, form)


@pytest.mark.parametrize("form,alpha,beta,d_star,r_star", [
    ("bon", 1.0, 0.5, 1.0, 0.5),                      # α/(2β), α²/(4β)
    ("rl", 1.0, 0.5, math.e, 0.5 * math.e),           # exp(α/β − 1), β·d*
    ("rl", -0.2, 0.4, math.exp(-1.5), 0.4 * math.exp(-1.5)),
])
def test_peak_closed_form_and_grid(form, alpha, beta, d_star, r_star):
    result = oo.Fit(form=form, alpha=alpha, beta=beta, r2=1.0, rmse=0.0, n=3)
    got = oo.peak(result)
    assert got == pytest.approx((d_star, r_star), rel=1e-12)
    grid = np.linspace(0.0, 10.0, 200_001)
    values = result.predict(grid)
    assert grid[np.argmax(values)] == pytest.approx(d_star, abs=1e-4)
    assert values.max() == pytest.approx(r_star, rel=1e-8)


def test_peak_without_overoptimization():
    fit = lambda form, a, b: oo.Fit(form=form, alpha=a, beta=b, r2=1.0, rmse=0.0, n=3)
    assert oo.peak(fit("rl", 1.0, -0.1)) == (math.inf, math.inf)
    assert oo.peak(fit("bon", 1.0, 0.0)) == (math.inf, math.inf)
    assert oo.peak(fit("bon", -1.0, 0.0)) == (0.0, 0.0)
    assert oo.peak(fit("bon", -1.0, 0.5)) == (0.0, 0.0)  # the vertex is at d < 0


def test_fit_table_one_row_per_group():
    d = np.linspace(0.1, 3.0, 20)
    df = pd.DataFrame({"arm": ["a"] * 20 + ["b"] * 20, "d": np.concatenate([d, d]),
                       "r": np.concatenate([d * (1.0 - 0.2 * d), d * (0.5 - 0.1 * d)])})
    df.loc[3, "r"] = np.nan  # dropped, not fatal
    table = oo.fit_table(df, "d", "r", by=["arm"], form="bon")
    assert list(table.columns) == ["arm", "form", "alpha", "beta", "r2", "rmse", "n"]
    np.testing.assert_allclose(table[["alpha", "beta"]].to_numpy(), [[1.0, 0.2], [0.5, 0.1]],
                               atol=1e-10)
    assert list(table["n"]) == [19, 20]
    pooled = oo.fit_table(df, "d", "r", by=[], form="rl")
    assert len(pooled) == 1 and pooled["n"][0] == 39


def test_overoptimization_plot_writes_png(tmp_path):
    d = np.linspace(0.0, 3.0, 30)
    df = pd.DataFrame({"arm": "x", "d": d, "gold": d * (1 - 0.3 * d), "proxy": d})
    fits = {(("x",), "gold"): oo.fit(df["d"], df["gold"], "bon")}
    report.overoptimization_plot(df, "d", ["gold", "proxy"], ["arm"], fits, tmp_path / "o.png")
    assert (tmp_path / "o.png").stat().st_size > 1000


# ---------------------------------------------------------------- report writer


def test_write_report_control(control, values, tmp_path):
    spec = {
        "curves": {"x": "env_steps", "ys": ["episode_return", "kl_old"], "by": ["task", "label"],
                   "band": "sem", "logy": ["kl_old"]},
        "scores": {"score": "episode_return", "by": "label", "task": "task", "random": RANDOM},
    }
    path = report_cli.write_report(control, spec, tmp_path, "Sweep s")
    text = path.read_text()
    assert path == tmp_path / "report.md" and text.startswith("# Sweep s\n")
    for task in TASKS:
        name = f"curves_{task}.png"
        assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in text
    scores = report.normalised_scores(report.final(control), random=RANDOM)
    assert report.markdown(scores) in text
    assert "## Learning curves" in text and "## Normalised scores" in text


def test_write_report_token(tmp_path):
    token = _token_df()
    spec = {
        "frontier": {"kl": "kl", "rewards": ["gold", "proxy"], "by": "label", "color_by": "arm",
                     "final_only": True},
        "overopt": {"kl": "kl", "gold": "gold", "proxy": "proxy", "reference_gold": None,
                    "by": ["arm"], "forms": {"best of n": "bon", "*": "rl"}},
        "final_table": {"by": "label", "metrics": ["gold", "proxy", "kl"]},
    }
    text = report_cli.write_report(token, spec, tmp_path, "tok").read_text()
    for name in ("frontier.png", "overopt.png"):
        assert (tmp_path / name).stat().st_size > 1000 and f"]({name})" in text
    # Reference gold: mean over update == 0 and n == 1 rows (seed offsets 0 and 0.01 → 1.005).
    assert "gold 1.005" in text
    assert "| best of n | bon |" in text and "| ppo | rl |" in text
    final_ppo = token[(token["label"] == "ppo β=0.01") & (token["update"] == 2)]["gold"]
    assert f"| ppo β=0.01 | — | 2 | {final_ppo.mean():.4g} ± " in text
    # Best-of-n: one row per n over its 2 seeds, not every n pooled under the label.
    bon16 = token[token["n"] == 16]["gold"]
    assert f"| best of n | 16 | 2 | {bon16.mean():.4g} ± {bon16.std(ddof=1) / math.sqrt(2):.2g} |" in text


def test_peaks_match_a_hand_computed_curve(tmp_path):
    # Two seeds whose mean gold is 1, 3, 2 at updates 0, 1, 2 (peak 3 at update 1, drop 1), and a
    # second label that only rises (peak at its last update, drop 0); seed 1 misses update 2's
    # gold, so that point's mean is seed 0's alone.
    rows = []
    for seed, golds in ((0, (0.5, 2.5, 2.0)), (1, (1.5, 3.5, np.nan))):
        for update, gold in enumerate(golds):
            rows.append({"label": "a", "run": f"a{seed}", "seed": seed, "update": update,
                         "gold": gold, "kl": update + seed})
            rows.append({"label": "b", "run": f"b{seed}", "seed": seed, "update": update,
                         "gold": float(update), "kl": 2.0 * update})
    df = pd.DataFrame(rows)
    got = report.peaks(df, "gold", "label", "update", also="kl").set_index("label")
    assert got.loc["a", "peak_update"] == 1 and got.loc["a", "gold_peak"] == 3.0
    assert got.loc["a", "gold_final"] == 2.0 and got.loc["a", "gold_drop"] == 1.0
    assert got.loc["a", "kl_at_peak"] == 1.5 and got.loc["a", "kl_final"] == 2.5
    assert got.loc["b", "peak_update"] == 2 and got.loc["b", "gold_drop"] == 0.0
    text = report_cli.write_report(df, {"peaks": {"metric": "gold", "also": ["kl"]}}, tmp_path,
                                   "p").read_text()
    assert "## Where gold peaks" in text and "| a | 1 | 3 | 2 | 1 | 1.5 | 2.5 |" in text
    with pytest.raises(ValueError, match=r"report\['peaks'\] needs the key 'metric'"):
        report_cli.write_report(df, {"peaks": {"by": "label"}}, tmp_path, "p")


def test_overopt_reference_is_taken_per_pipeline(tmp_path):
    # Two pipelines whose proxies differ by a constant: per-pipeline references must cancel it.
    token = _token_df()
    shifted = token.assign(proxy=token["proxy"] + 5.0, pairs=2)
    both = pd.concat([token.assign(pairs=1), shifted], ignore_index=True)
    spec = {"overopt": {"kl": "kl", "gold": "gold", "proxy": "proxy", "by": ["arm", "pairs"],
                        "reference_by": ["pairs"], "forms": {"best of n": "bon", "*": "rl"}}}
    text = report_cli.write_report(both, spec, tmp_path, "tok").read_text()
    reference = token[(token["update"] == 0) | (token["n"] == 1)]["proxy"].mean()
    assert f"pairs=1: gold 1.005, proxy {reference:.4g}" in text
    assert f"pairs=2: gold 1.005, proxy {reference + 5:.4g}" in text


def test_write_report_rejects_bad_specs(control, tmp_path):
    with pytest.raises(ValueError, match=r"unknown report section 'curve'.*'curves'"):
        report_cli.write_report(control, {"curve": {}}, tmp_path, "t")
    with pytest.raises(ValueError, match=r"unknown key 'metric' in report\['final_table'\]"):
        report_cli.write_report(control, {"final_table": {"metric": ["x"]}}, tmp_path, "t")
    with pytest.raises(ValueError, match=r"column 'gold'"):
        report_cli.write_report(control, {"final_table": {"metrics": ["gold"]}}, tmp_path, "t")
    assert not (tmp_path / "report.md").exists()


def test_cli(control, tmp_path):
    control.to_csv(tmp_path / "results.csv", index=False)
    spec = {"final_table": {"by": ["task", "label"], "metrics": ["episode_return"]}}
    (tmp_path / "sweep.json").write_text(json.dumps({"report": spec}))
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocs.run([sys.executable, "-m", "experiments.report", f"--sweep_dir={tmp_path}"],
                            cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "report.md")
    assert "# Sweep s" in (tmp_path / "report.md").read_text()
