"""Bad input as a user meets it on the command line (`experiments.cli`): one line on stderr naming
the key, the value and what is allowed, exit status 2, no traceback, and the workdir untouched.

A few representative invocations only (each is a fresh Python with JAX, ~5 s): a non-finite
hyperparameter, an unknown ``--config.KEY`` (refused while the flags are parsed), a token-RLHF
string option no method reads before training, and a sweep's ``--set``. What each program refuses
is tested in-process in tests/test_config_errors.py.
"""

from __future__ import annotations

import pathlib
import sys

import pytest

from kltrust.objectives import preference
import subprocs

ROOT = pathlib.Path(__file__).resolve().parents[1]
EARLIER = "earlier results\n"

CASES = [
    pytest.param(
        ["experiments.train", "--config=configs/ppo.py:cartpole_clip",
         "--config.hparams.learning_rate=inf"],
        "error: config.hparams.learning_rate = inf: must be in (0.0, inf).",
        id="train-inf"),
    pytest.param(
        ["experiments.train", "--config.hparams.learnign_rate=1e-3"],
        "error: config.hparams.learnign_rate: unknown key; did you mean 'learning_rate'? the keys "
        "here are ['beta', 'clip_eps', ",
        id="train-unknown-key"),
    pytest.param(
        ["experiments.train", "--config.logging.wandb.enabled=True",
         "--config.logging.wandb.mode=ofline"],
        "error: config.logging.wandb.mode = 'ofline': must be one of ('offline', 'online', "
        "'disabled'); did you mean 'offline'?",
        id="train-wandb-mode"),
    pytest.param(
        ["experiments.rlhf", "--config=configs/rlhf.py:dpo", "--config.rl.preference_loss=foo"],
        f"error: config.rl.preference_loss = 'foo': must be one of {preference.LOSSES.names()}.",
        id="rlhf-dpo-variant"),
    pytest.param(
        ["experiments.sweep", "--sweep=configs/sweeps/demo.py", "--set=hparams.gamma=nan"],
        "config.hparams.gamma = nan: must be in [0.0, 1.0].",
        id="sweep-set-nan"),
    pytest.param(
        ["experiments.kl_matrix", "--betas=0.1,0"],
        "error: --betas = '0.1,0': must be comma-separated finite numbers > 0 (e.g. 0.1,0.3,1.0).",
        id="kl-matrix-betas"),
    pytest.param(
        ["experiments.train", "--compilation_cache=setup.cfg"],
        "error: --compilation_cache='setup.cfg': exists and is not a directory; must be 'off', "
        "'user' or a directory",
        id="train-compilation-cache-file"),
]


@pytest.mark.parametrize("args,message", CASES)
def test_bad_input_is_one_line_and_exit_status_2(args, message, tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text(EARLIER)
    result = subprocs.run([sys.executable, "-m", *args, f"--workdir={workdir}"], cwd=ROOT,
                          timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert result.stdout == ""
    assert [p.name for p in workdir.iterdir()] == ["metrics.jsonl"]
    assert (workdir / "metrics.jsonl").read_text() == EARLIER


def test_a_workdir_of_another_config_is_refused_in_one_line(tmp_path):
    """The workdir decision (`kltrust.processes.claim`) refuses with a `ConfigError` too."""
    other = '{"another": "config"}\n'
    (tmp_path / "config.json").write_text(other)
    (tmp_path / "metrics.jsonl").write_text(EARLIER)
    result = subprocs.run([sys.executable, "-m", "experiments.train", f"--workdir={tmp_path}"],
                          cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"error: workdir {tmp_path} holds a run of a different config; choose another --workdir "
        "or pass --overwrite to replace it."]
    assert (tmp_path / "config.json").read_text() == other
    assert (tmp_path / "metrics.jsonl").read_text() == EARLIER
