"""The bandit program on the host loop (`kltrust.train.bandit_run`): a workdir's claim, rows,
checkpoints, exact resume after a crash or SIGTERM, and nothing written without a workdir."""

from __future__ import annotations

import json
import os
import pathlib
import signal

import numpy as np
import pytest

from configs import bandit as bandit_configs
from kltrust.errors import ConfigError
from kltrust.train import bandit_config, bandit_run

RUN = "dpo_online"  # samples pairs every step: the rng key and Adam's state must survive a resume


def _spec(**overrides) -> bandit_config.BanditSpec:
    config = bandit_configs.get_config("quick")
    config.runs, config.num_steps, config.steps_per_eval = (RUN,), 40, 10
    config.num_seeds, config.betas, config.batch_size = 2, (0.3, 1.0), 8
    for key, value in overrides.items():
        config[key] = value
    return bandit_config.spec_from_config(config)


class _Crash(Exception):
    pass


def _steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _assert_same(result, reference) -> None:
    assert result.run.metrics.keys() == reference.run.metrics.keys()
    for name, values in reference.run.metrics.items():
        np.testing.assert_array_equal(result.run.metrics[name], values, err_msg=name)
        assert result.run.metrics[name].dtype == values.dtype, name
    np.testing.assert_array_equal(result.run.logits, reference.run.logits)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run with a workdir, and its directory."""
    workdir = tmp_path_factory.mktemp("whole")
    return bandit_run.train(_spec(), RUN, workdir=workdir, checkpoint_every=2), workdir


def test_a_run_writes_its_config_rows_and_checkpoints(whole):
    result, workdir = whole
    assert sorted(p.name for p in workdir.iterdir()) == [
        "checkpoints", "config.json", "eval.jsonl", "metrics.jsonl"]
    assert json.loads((workdir / "config.json").read_text())["run"] == RUN
    assert _steps(workdir) == [20, 40]  # every 2 chunks of 10 steps (2 kept)
    metrics = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 40 * 4  # a row per step and run (2 β × 2 seeds)
    evals = [json.loads(line) for line in (workdir / "eval.jsonl").read_text().splitlines()]
    assert [row["update"] for row in evals] == [u for u in (10, 20, 30, 40) for _ in range(4)]
    assert {(row["seed"], row["beta"]) for row in evals} == {(0, 0.3), (1, 0.3), (0, 1.0),
                                                             (1, 1.0)}
    last = [row for row in evals if row["update"] == 40]
    # The rows hold the very numbers the run returns ([β, seed, evaluation]).
    kl = result.run.metrics["kl_to_reference"][:, :, -1].reshape(-1)
    assert [row["kl_to_reference"] for row in last] == [float(x) for x in kl]
    assert result.run.metrics["step"].shape == (2, 2, 4)
    np.testing.assert_array_equal(result.run.metrics["step"][0, 0], [10, 20, 30, 40])


def test_a_crashed_run_resumes_to_the_uninterrupted_numbers(whole, tmp_path):
    reference, reference_dir = whole
    chunks = []

    def crash_after_three(steps):
        chunks.append(steps)
        if len(chunks) == 3:
            raise _Crash

    with pytest.raises(_Crash):
        bandit_run.train(_spec(), RUN, workdir=tmp_path, checkpoint_every=2,
                         on_chunk=crash_after_three)
    assert _steps(tmp_path) == [20]  # chunk 3's rows were written past the checkpoint
    resumed = bandit_run.train(_spec(), RUN, workdir=tmp_path, checkpoint_every=2)
    assert resumed.resumed_from == 20 and not resumed.preempted
    _assert_same(resumed, reference)
    for name in ("metrics.jsonl", "eval.jsonl"):  # rows past the checkpoint were cut and redone
        assert (tmp_path / name).read_text() == (reference_dir / name).read_text(), name


def test_sigterm_stops_after_a_checkpoint_and_the_run_resumes_exactly(whole, tmp_path):
    reference, reference_dir = whole
    sent = []

    def sigterm_once(steps):
        if not sent:
            sent.append(steps)
            os.kill(os.getpid(), signal.SIGTERM)  # seen after the next chunk, as a real one is

    stopped = bandit_run.train(_spec(), RUN, workdir=tmp_path, checkpoint_every=100,
                               on_chunk=sigterm_once)
    assert stopped.preempted and _steps(tmp_path) == [20]  # the stop's own checkpoint
    assert stopped.run.metrics["step"].shape[-1] == 1  # the evaluation at 20 is not done yet
    resumed = bandit_run.train(_spec(), RUN, workdir=tmp_path, checkpoint_every=100)
    assert resumed.resumed_from == 20
    _assert_same(resumed, reference)
    for name in ("metrics.jsonl", "eval.jsonl"):
        assert (tmp_path / name).read_text() == (reference_dir / name).read_text(), name


def test_a_workdir_of_another_spec_is_refused_untouched_unless_overwrite(whole):
    _, workdir = whole
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    other = _spec(betas=(0.5,))
    with pytest.raises(ConfigError, match=f"workdir {workdir} holds a bandit run of a different "
                                          "spec; choose another --workdir or pass --overwrite"):
        bandit_run.train(other, RUN, workdir=workdir)
    assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before


def test_overwrite_replaces_another_specs_run(tmp_path):
    bandit_run.train(_spec(num_steps=20), RUN, workdir=tmp_path)
    result = bandit_run.train(_spec(betas=(0.5,), num_steps=20), RUN, workdir=tmp_path,
                              overwrite=True)
    assert result.resumed_from == 0
    assert json.loads((tmp_path / "config.json").read_text())["spec"]["betas"] == [0.5]
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == 2 * 2  # 2 evals × 2 seeds


def test_without_a_workdir_nothing_is_written_and_the_numbers_are_the_same(whole, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written to a relative path would land here
    result = bandit_run.train(_spec(), RUN)
    assert list(tmp_path.iterdir()) == []
    _assert_same(result, whole[0])


def test_a_bad_config_is_one_config_error_before_a_spec_exists():
    config = bandit_configs.get_config("quick")
    config.betas = (0.3, -1.0)
    with pytest.raises(ConfigError, match=r"^config.betas = \(0.3, -1.0\): must be a non-empty "
                                          r"tuple of finite numbers > 0.$"):
        bandit_config.spec_from_config(config)
