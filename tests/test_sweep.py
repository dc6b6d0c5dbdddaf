"""Sweeps: grid expansion, grouping into vmapped programs, equality with one-by-one runs, resume."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pandas as pd
import pytest

from kltrust import sweep as sweeps

TINY_PPO = {"num_envs": 4, "num_steps": 32, "num_epochs": 2, "num_minibatches": 2,
            "total_timesteps": 4 * 32 * 4, "updates_per_chunk": 2}
TINY_TRPO = {"num_envs": 4, "num_steps": 32, "total_timesteps": 4 * 32 * 4,
             "updates_per_chunk": 2, "vf_minibatches": 2, "vf_epochs": 1}


def _sweep(**fields) -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "tiny"
    sweep.num_seeds = 2
    sweep.seed = 3
    sweep.record_every = 1
    sweep.arms = [
        dict(name="fixed", base="configs/ppo.py:cartpole_kl_fixed", set=TINY_PPO,
             grid={"hparams.beta": (0.1, 3.0)}),
        dict(name="clip", base="configs/ppo.py:cartpole_clip", set=TINY_PPO,
             grid={"hparams.clip_eps": (0.1, 0.3), "hparams.learning_rate": (1e-3,)}),
        dict(name="trpo", base="configs/trpo.py:cartpole_trpo", set=TINY_TRPO),
    ]
    for key, value in fields.items():
        sweep[key] = value
    return sweep


def test_grid_expands_arms_points_and_seeds():
    runs = sweeps.expand(_sweep())
    assert len(runs) == (2 + 2 + 1) * 2
    assert [r.run_id for r in runs[:4]] == ["fixed__beta=0.1__seed3", "fixed__beta=0.1__seed4",
                                            "fixed__beta=3__seed3", "fixed__beta=3__seed4"]
    assert runs[2].config.hparams.beta == 3.0 and runs[2].config.seed == 3
    assert runs[2].config.num_envs == 4 and runs[2].config.total_timesteps == 512  # `set`
    clip = [r for r in runs if r.arm == "clip"]
    assert {r.config.hparams.clip_eps for r in clip} == {0.1, 0.3}
    assert all(r.config.hparams.learning_rate == 1e-3 for r in clip)
    assert clip[0].label == "clip clip_eps=0.1, learning_rate=0.001"
    assert runs[-1].label == "trpo" and runs[-1].swept == {}


def test_tasks_and_overrides_reach_every_run():
    sweep = _sweep(tasks=("cartpole", "acrobot"))
    sweep.arms = [dict(name="clip", base="configs/ppo.py:{task}_clip", set=TINY_PPO)]
    runs = sweeps.expand(sweep, overrides={"hparams.ent_coef": 0.0})
    assert [(r.task, r.config.env_name) for r in runs[::2]] == [("cartpole", "CartPole-v1"),
                                                               ("acrobot", "Acrobot-v1")]
    assert all(r.config.hparams.ent_coef == 0.0 for r in runs)


def test_runs_differing_only_in_hparams_and_seed_share_a_program():
    runs = sweeps.expand(_sweep())
    groups = sweeps.group(runs)
    assert [[r.run_id for r in g] for g in groups] == [
        [r.run_id for r in runs if r.arm == arm] for arm in ("fixed", "clip", "trpo")]
    assert [r.group for r in runs] == [0] * 4 + [1] * 4 + [2] * 2
    # A static field in the grid splits the arm: num_epochs changes the compiled program.
    sweep = _sweep()
    sweep.arms = [dict(name="e", base="configs/ppo.py:cartpole_clip", set=TINY_PPO,
                       grid={"num_epochs": (1, 2), "hparams.clip_eps": (0.1, 0.2)})]
    groups = sweeps.group(sweeps.expand(sweep))
    assert [len(g) for g in groups] == [4, 4]
    assert all({r.config.num_epochs for r in g} == {g[0].config.num_epochs} for g in groups)
    assert len(sweeps.group(runs, group_runs=False)) == len(runs)


@pytest.mark.parametrize("change,message", [
    (dict(bogus=1), r"sweep.bogus: unknown key"),
    (dict(num_seeds=0), r"sweep.num_seeds = 0: must be an integer >= 1"),
    (dict(arms=[dict(name="a", base="configs/ppo.py:cartpole_clip", grids={})]),
     r"sweep.arms\[0\].grids: unknown key"),
    (dict(arms=[dict(name="a", base="configs/ppo.py:cartpole_clip",
                     grid={"hparams.clip_epz": (0.1,)})]),
     r"config has no field 'hparams.clip_epz'"),
    (dict(arms=[dict(name="a", base="configs/ppo.py:cartpole_clip",
                     grid={"hparams.clip_eps": ()})]),
     r"grid\['hparams.clip_eps'\] = \(\): must be a non-empty list"),
    (dict(arms=[dict(name="a", base="configs/ppo.py:cartpole_clip", set=TINY_PPO,
                     grid={"hparams.clip_eps": (0.2, -0.1)})]),
     r"grid point \{'hparams.clip_eps': -0.1\}: config.hparams.clip_eps = -0.1: must be in"),
    (dict(arms=[dict(name="a", base="configs/ppo.py:{task}_clip")]), r"sweep.tasks is empty"),
    (dict(arms=[dict(name="a", base="configs/nope.py:x")]), r"base 'configs/nope.py:x'"),
])
def test_bad_sweeps_fail_before_anything_runs(change, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        sweeps.run_sweep(_sweep(**change), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


METRICS = ("episode_return", "kl_old", "policy_loss", "value_loss")


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    result = sweeps.run_sweep(_sweep(), root, progress=False)
    return root, result


def test_grouped_sweep_equals_the_same_runs_one_by_one(grouped, tmp_path):
    root, result = grouped
    assert [g["runs"] for g in result.groups] == [4, 4, 2]  # three programs for ten runs
    one_arm = _sweep()
    one_arm.arms = one_arm.arms[:1]  # the vmapped-hyperparameter group; compiles dominate
    alone = sweeps.run_sweep(one_arm, tmp_path, group_runs=False, progress=False)
    assert [g["runs"] for g in alone.groups] == [1] * 4
    a, b = pd.DataFrame(result.rows), pd.DataFrame(alone.rows)
    a = a[a["arm"] == "fixed"].reset_index(drop=True)
    assert len(a) == len(b) == 4 * 4  # four runs × four updates
    # Runs alone sum in another order than runs vmapped; RL amplifies that round-off chaotically
    # over updates, so only the first update (same initial state; float32 sums over at most
    # 4 × 32 = 128 samples, whose round-off is bounded by 128 ulps ≈ 7.6e-6 relative in any order)
    # is held to a tolerance.
    first_a, first_b = a[a["update"] == 1], b[b["update"] == 1]
    assert len(first_a) == len(first_b) == 4
    for name in METRICS:
        np.testing.assert_allclose(first_a[name].to_numpy(float), first_b[name].to_numpy(float),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    # The hyperparameters really differed inside one program.
    fixed = a[(a["arm"] == "fixed") & (a["seed"] == 3) & (a["update"] == 4)]
    assert fixed["kl_old"].nunique() == 2
    np.testing.assert_allclose(sorted(fixed["beta"]), [0.1, 3.0], rtol=1e-6)


def test_results_table_has_one_row_per_run_and_evaluation(grouped):
    root, result = grouped
    table = pd.read_csv(root / "results.csv")
    assert len(table) == 40 and table["run"].nunique() == 10
    assert {"sweep", "arm", "label", "group", "seed", "hparams.beta", "hparams.clip_eps",
            "update", "env_steps", "episode_return", "kl_old"} <= set(table.columns)
    assert table.loc[table.arm == "trpo", "hparams.beta"].isna().all()
    np.testing.assert_array_equal(table["env_steps"], table["update"] * 128)
    recorded = json.loads((root / "runs" / "fixed__beta=3__seed4" / "config.json").read_text())
    assert recorded["seed"] == 4 and recorded["config"]["hparams"]["beta"] == 3.0


def test_resume_skips_finished_runs_and_refuses_a_changed_config(grouped, tmp_path):
    root, first = grouped
    again = sweeps.run_sweep(_sweep(), root, progress=False)
    assert again.skipped == 10 and again.groups == []
    assert again.rows == first.rows
    # An interrupted group: its runs have no rows.json, so they (and only they) run again.
    (root / "runs" / "clip__clip_eps=0.3__learning_rate=0.001__seed4" / "rows.json").unlink()
    resumed = sweeps.run_sweep(_sweep(), root, progress=False)
    assert resumed.skipped == 9 and [g["runs"] for g in resumed.groups] == [1]
    pd.testing.assert_frame_equal(pd.DataFrame(resumed.rows), pd.DataFrame(first.rows),
                                  rtol=1e-5, atol=1e-7)
    changed = _sweep()
    changed.arms[2]["set"] = dict(TINY_TRPO, vf_epochs=2)
    with pytest.raises(ValueError, match="holds a run of a different config"):
        sweeps.run_sweep(changed, root, progress=False)
    assert (root / "runs" / "trpo__seed3" / "rows.json").exists()  # nothing was lost
    # An unfinished run holds nothing to lose: under a changed config it simply runs again.
    for seed in (3, 4):
        (root / "runs" / f"trpo__seed{seed}" / "rows.json").unlink()
    rerun = sweeps.run_sweep(changed, root, progress=False)
    assert rerun.skipped == 8 and [g["runs"] for g in rerun.groups] == [2]


def test_same_sweep_same_numbers(grouped, tmp_path):
    _, first = grouped
    sweep = _sweep()
    sweep.arms = sweep.arms[1:2]
    second = sweeps.run_sweep(sweep, tmp_path, progress=False)
    clip = [{**row, "group": 0} for row in first.rows if row["arm"] == "clip"]
    assert second.rows == clip


# ---------------------------------------------------------------- token RLHF sweeps

TINY_TOKENS = {
    "task": dict(num_words=10, successors=3, num_good=2, prompt_len=3, response_len=6),
    "data": dict(num_sft=512, num_prompts=64, num_eval_prompts=16, num_pairs=512,
                 num_eval_pairs=128, seq_len=16),
    "model": dict(num_layers=1, width=16, num_heads=2),
    "reward_model": dict(num_layers=1, width=16, num_heads=2),
    "sft": dict(steps=100, batch_size=32, eval_every=50, learning_rate=3e-3),
    "rm": dict(steps=50, batch_size=32, eval_every=50, learning_rate=3e-3),
    "rl": dict(num_updates=2, updates_per_eval=1, batch_prompts=2, group_size=4, minibatches=1),
}


def _token_sweep(betas=(0.0, 1.0), seed=0, num_seeds=2, bon=True) -> ml_collections.ConfigDict:
    sweep = ml_collections.ConfigDict()
    sweep.name = "tokens"
    sweep.num_seeds = num_seeds
    sweep.seed = seed
    sweep.overrides = TINY_TOKENS
    sweep.arms = [dict(name="GRPO", base="configs/rlhf.py:grpo",
                       grid={"rl.hparams.beta": betas})]
    if bon:
        sweep.arms.append(dict(name="bon", base="configs/rlhf.py:best_of_n",
                               set={"rl.best_of_n": (1, 4)}))
    return sweep


@pytest.mark.slow
def test_token_sweep_shares_one_pipeline_and_equals_a_run_alone(tmp_path):
    result = sweeps.run_sweep(_token_sweep(), tmp_path / "a", progress=False)
    assert [g["runs"] for g in result.groups] == [4, 2]
    assert len(list((tmp_path / "a" / "pipelines").iterdir())) == 1  # one reference, one proxy
    table = pd.DataFrame(result.rows)
    grpo = table[table["arm"] == "GRPO"]
    assert sorted(grpo["update"].unique()) == [0, 1, 2] and len(grpo) == 4 * 3
    assert np.allclose(grpo.loc[grpo["update"] == 0, "kl"], 0.0, atol=1e-5)  # starts at π_ref
    bon = table[table["arm"] == "bon"]
    assert sorted(bon["n"]) == [1, 1, 4, 4]
    np.testing.assert_allclose(bon.loc[bon["n"] == 4, "kl"], np.log(4) - 3 / 4, rtol=1e-6)
    evals = (tmp_path / "a" / "runs" / "GRPO__beta=1__seed1" / "eval.jsonl").read_text()
    assert '"samples"' in evals
    # The same run alone, in its own program (and its own, identical, pipeline).
    alone = sweeps.run_sweep(_token_sweep(betas=(1.0,), seed=0, num_seeds=2, bon=False),
                             tmp_path / "b", group_runs=False, progress=False)
    b = pd.DataFrame(alone.rows)
    a = grpo[grpo["hparams.beta" if "hparams.beta" in grpo else "rl.hparams.beta"] == 1.0]
    for name in ("gold", "proxy", "kl", "entropy"):
        np.testing.assert_allclose(a[name].to_numpy(float), b[name].to_numpy(float), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_random_policy_score_matches_the_closed_form_on_mountaincar():
    from kltrust.train import common

    # MountainCarContinuous pays 0.1·a² per step; uniform a in [-1, 1] has E[a²] = 1/3, so 999
    # steps give −33.3 (a random policy never reaches the goal). Per episode the sum has standard
    # deviation sqrt(999 · 0.01 · 4/45) = 0.94, so the mean of 100 episodes is within 0.5 (5σ).
    score = common.random_policy_score("MountainCarContinuous-v0", num_episodes=100, seed=1)
    assert abs(score - (-0.1 * 999 / 3)) < 0.5
    # CartPole: random actions end an episode after about 22 steps (reward 1 per step).
    assert 15 < common.random_policy_score("CartPole-v1", num_episodes=100) < 30


@pytest.mark.parametrize("name", ["demo", "ppo_table1", "ppo_table1:full", "rlhf_frontier",
                                  "overoptimization", "beta_seeds", "kl_matrix_tokens",
                                  "dpo_overoptimization", "online_offline", "reference_refresh"])
def test_every_sweep_config_expands_validates_and_has_a_valid_report(name):
    from experiments import report

    sweep = sweeps.load_preset(f"configs/sweeps/{name.replace(':', '.py:')}"
                              if ":" in name else f"configs/sweeps/{name}.py")
    runs = sweeps.expand(sweep)  # every run's config is validated here, nothing is compiled
    assert len({r.run_id for r in runs}) == len(runs)
    groups = sweeps.group(runs)
    assert len(groups) < len(runs)  # grouping saves programs in every one of them
    report.validate_spec(json.loads(sweep.to_json_best_effort())["report"])


def test_set_flags_parse_values_and_paths():
    parse_sets = sweeps.parse_overrides
    assert parse_sets(["hparams.beta=0.5", "model.hidden=(32, 32)", "env_name=Acrobot-v1"]) == {
        "hparams.beta": 0.5, "model.hidden": (32, 32), "env_name": "Acrobot-v1"}
    with pytest.raises(ValueError, match="PATH=VALUE"):
        parse_sets(["oops"])


def test_bandit_sweep_groups_a_simpo_margin_grid_and_equals_the_runs_alone(tmp_path):
    """A bandit sweep (SimPO's γ × 2 seeds) is one vmapped program whose rows equal the same runs
    trained alone by `bandit.make_train`."""
    import jax

    from kltrust.train import bandit

    sweep = ml_collections.ConfigDict(dict(
        name="bandit", num_seeds=2, seed=0, record_every=25,
        overrides={"num_steps": 50, "steps_per_eval": 25, "betas": (0.5,)},
        arms=[dict(name="simpo", base="configs/bandit.py:quick", set={"runs": ("simpo_exact",)},
                   grid={"run_specs.simpo_exact.preference.simpo.gamma": (0.0, 1.0)})]))
    runs = sweeps.expand(sweep)
    assert len({r.static_key() for r in runs}) == 1  # γ and the seed travel as arrays
    result = sweeps.run_sweep(sweep, tmp_path, progress=False)
    assert len(result.groups) == 1 and result.groups[0]["runs"] == 4
    assert len(result.rows) == 4 * 2  # 4 runs × 2 evaluations × 1 β
    for run in runs:
        spec = bandit.spec_from_config(run.config)
        alone = bandit.make_train(bandit.setup_for(spec, "simpo_exact"))(
            jax.random.key(run.seed), bandit.make_bandit(spec),
            jax.tree.map(lambda x: x[0], bandit.hparams_for(spec, "simpo_exact")))
        final = [r for r in result.rows if r["run"] == run.run_id and r["update"] == 50][0]
        # vmapped and alone are the same float32 programs up to XLA's fusion choices: Adam on
        # logits of size ~1 over 50 steps accumulates a few ulps (1e-7 relative) per step.
        np.testing.assert_allclose(final["kl_to_reference"],
                                   float(alone.metrics["kl_to_reference"][-1]), rtol=1e-4,
                                   atol=1e-6)
    gammas = {r.swept["run_specs.simpo_exact.preference.simpo.gamma"]: r for r in runs}
    kl = {g: [x["kl_to_reference"] for x in result.rows if x["run"] == run.run_id][-1]
          for g, run in gammas.items()}
    assert kl[0.0] != kl[1.0]  # the margin reached the program
