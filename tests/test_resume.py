"""Exact resume: a run killed part-way (SIGKILL) or stopped (SIGTERM) and restarted with the same
command ends bit-identical to one that was never interrupted; unreadable checkpoints are set aside.

Each run is a subprocess of `experiments.train` (the command a user runs): adaptive-KL PPO on
CartPole, 40 updates in 20 chunks, so that the controller's β moves and must survive the restart.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import subprocs
from token_helpers import random_models, tiny_token_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
UPDATES = 40
ARGS = ["--config=configs/ppo.py:cartpole_kl_adaptive", "--config.num_steps=32",
        f"--config.total_timesteps={4 * 32 * UPDATES}", "--config.updates_per_chunk=2",
        "--config.num_minibatches=2", "--config.keep_checkpoints=3"]


def _command(workdir, *extra):
    return [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *ARGS, *extra]


def _run(workdir, *extra):
    return subprocs.run(_command(workdir, *extra), cwd=ROOT, timeout=600)


def _steps(workdir) -> list[int]:
    directory = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def _start_and_wait(children, workdir, ready, *extra) -> subprocess.Popen:
    """Starts a run and returns once ``ready()`` holds (polled every 10 ms)."""
    proc = children.start(_command(workdir, *extra), cwd=ROOT)
    deadline = time.time() + 300
    while not ready():
        assert proc.poll() is None, children.output(proc)[1][-3000:]
        assert time.time() < deadline, "the run never got going"
        time.sleep(0.01)
    return proc


def _final_params(workdir) -> dict[str, np.ndarray]:
    step = pathlib.Path(workdir) / "checkpoints" / str(UPDATES) / "default"
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            checkpointer.metadata(step).item_metadata)
    state = checkpointer.restore(step, abstract)
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run(workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    betas = [json.loads(line)["beta"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert len(set(betas)) > 3  # the controller moves, so its state must survive a restart
    return workdir


def _assert_same_run(workdir, reference):
    assert (workdir / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    mine, theirs = _final_params(workdir), _final_params(reference)
    assert mine.keys() == theirs.keys()
    for name in mine:  # params, Adam state, β controller, rng, environments: bit for bit
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_sigkill_then_the_same_command_resumes_bit_identically(reference, tmp_path, children):
    proc = _start_and_wait(children, tmp_path,
                           lambda: len(_steps(tmp_path)) >= 1 and _steps(tmp_path)[-1] >= 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _steps(tmp_path)[-1] < UPDATES  # really killed part-way
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed after update" in resumed.stdout
    _assert_same_run(tmp_path, reference)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(reference, tmp_path, children):
    # Checkpoints only at the end, so the one found after SIGTERM is the one SIGTERM wrote.
    only_final = "--config.checkpoint_every_chunks=1000"
    metrics = tmp_path / "metrics.jsonl"
    proc = _start_and_wait(children, tmp_path,
                           lambda: metrics.exists() and len(metrics.read_text()) > 0,
                           only_final)
    proc.send_signal(signal.SIGTERM)
    stopped = children.wait(300)[0]
    stdout, stderr = stopped.stdout, stopped.stderr
    assert stopped.returncode == 143, stderr[-3000:]
    assert "stopped by SIGTERM" in stdout and "Traceback" not in stderr
    (step,) = _steps(tmp_path)
    assert 0 < step < UPDATES
    assert len(metrics.read_text().splitlines()) == step  # one seed: a row per update
    resumed = _run(tmp_path, only_final)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed after update {step} of {UPDATES}" in resumed.stdout
    _assert_same_run(tmp_path, reference)


def test_an_unreadable_latest_checkpoint_is_set_aside_and_the_one_before_used(reference, tmp_path,
                                                                            children):
    proc = _start_and_wait(children, tmp_path, lambda: len(_steps(tmp_path)) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = _steps(tmp_path)
    latest = steps[-1]
    for path in (tmp_path / "checkpoints" / str(latest)).rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * path.stat().st_size)  # a disk error: every byte zeroed
    resumed = _run(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {tmp_path / 'checkpoints' / str(latest)} is unreadable" in resumed.stderr
    assert f"resumed after update {steps[-2]} of {UPDATES}" in resumed.stdout
    assert (tmp_path / "unreadable_checkpoints" / str(latest)).is_dir()  # kept, not deleted
    _assert_same_run(tmp_path, reference)


def test_a_checkpoint_of_another_state_layout_is_refused_and_kept(tmp_path):
    """A step written with another state layout (here: the β controller state as an older kltrust
    stored it, every kind's fields side by side) is not "unreadable": resuming refuses with one
    line naming the step and what differs, and moves nothing aside (setting aside every step would
    silently start the run over). --overwrite starts over."""
    from configs import ppo as ppo_configs
    from kltrust.checkpoint import LayoutMismatch
    from kltrust.train import control_config, loop

    config = ppo_configs.get_config("cartpole_kl_pid")
    config.num_steps, config.num_minibatches, config.updates_per_chunk = 32, 2, 1
    config.total_timesteps = 4 * 32 * 2
    loop.train(control_config.spec_from_config(config), tmp_path, progress=False)
    assert _steps(tmp_path) == [1, 2]
    item = tmp_path / "checkpoints" / "2" / "default"
    checkpointer = ocp.StandardCheckpointer()
    old = checkpointer.restore(item)  # the stored tree as plain arrays
    new = old["controller"]
    zero = np.zeros_like(new["beta"])
    old["controller"] = {"beta": new["beta"], **new["hparams"], "horizon": zero, "gain": zero,
                         **new["memory"]}
    shutil.rmtree(item)
    checkpointer.save(item, old)
    checkpointer.wait_until_finished()

    with pytest.raises(LayoutMismatch) as info:
        loop.train(control_config.spec_from_config(config), tmp_path, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"checkpoint {tmp_path / 'checkpoints' / '2'} was written with a "
                              "different state layout")
    assert "stored only: controller.gain, controller.horizon, controller.integral" in message
    assert "expected only: controller.hparams.kd" in message and "--overwrite" in message
    assert _steps(tmp_path) == [1, 2] and not (tmp_path / "unreadable_checkpoints").exists()
    result = loop.train(control_config.spec_from_config(config), tmp_path, progress=False,
                        overwrite=True)
    assert result.metrics["beta"].shape == (1, 2) and _steps(tmp_path) == [1, 2]


# ---------------------------------------------------------------- the token policy stage


class _Crash(Exception):
    pass


def test_a_token_policy_stage_resumes_mid_run_bit_identically(tmp_path):
    """A PPO stage (KL guard on, so its carried state is checkpointed too) dies after 2 of 4 chunks;
    the same call resumes it and ends with the uninterrupted run's rows and parameters."""
    from kltrust.train import pipeline
    from kltrust.train import tokens as tok

    config = tiny_token_config("ppo_adaptive", num_seeds=2, num_updates=8, updates_per_eval=2)
    config.guards.max_sequence_kl = 100.0
    pipeline.validate(config)
    ref_params, rm_params = random_models(config)

    whole = pipeline.run_policy(pipeline.spec_from_config(config),
                                tmp_path / "whole", ref_params, rm_params)
    chunks = []

    def crash_after_two(updates):
        chunks.append(updates)
        if len(chunks) == 2:
            raise _Crash

    with pytest.raises(_Crash):
        pipeline.run_policy(pipeline.spec_from_config(config),
                            tmp_path / "cut", ref_params, rm_params,
                            on_chunk=crash_after_two)
    stage = tmp_path / "cut" / config.name
    assert not tok.is_done(stage) and _steps(stage) == [2, 4]
    resumed = pipeline.run_policy(pipeline.spec_from_config(config),
                                  tmp_path / "cut", ref_params, rm_params)

    for name in ("metrics.jsonl", "eval.jsonl"):
        assert (stage / name).read_text() == (tmp_path / "whole" / config.name / name).read_text()
    for name, values in whole.train_metrics.items():
        np.testing.assert_array_equal(resumed.train_metrics[name], values, err_msg=name)
    beta = whole.train_metrics["beta"]
    assert len(np.unique(beta)) > 2  # the adaptive controller's β moved, and resumed exactly
    jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
    # A finished stage is not run again without --overwrite.
    with pytest.raises(ValueError, match="already holds results of this finished stage"):
        pipeline.run_policy(pipeline.spec_from_config(config),
                            tmp_path / "cut", ref_params, rm_params)


@pytest.mark.filterwarnings("ignore:KL guard")
def test_sigterm_stops_a_token_policy_stage_after_a_checkpoint_and_it_resumes_exactly(tmp_path):
    """SIGTERM during a policy stage (the KL guard rolling back at every evaluation, so its state
    matters): the stage checkpoints after the chunk it is in, returns ``preempted`` with no results
    written, and the same call then finishes it with an uninterrupted run's files."""
    from kltrust.train import pipeline
    from kltrust.train import tokens as tok

    config = tiny_token_config("ppo_adaptive", num_seeds=2, num_updates=8, updates_per_eval=2)
    config.rl.hparams.learning_rate = 3e-3
    config.guards.max_sequence_kl, config.guards.max_rollbacks = 0.02, 100
    pipeline.validate(config)
    ref_params, rm_params = random_models(config)
    whole = pipeline.run_policy(pipeline.spec_from_config(config),
                                tmp_path / "whole", ref_params, rm_params)
    assert len(whole.guard_events) >= 4  # rollbacks before and after the stop

    signals = []

    def sigterm_once(updates):
        if not signals:
            signals.append(updates)
            os.kill(os.getpid(), signal.SIGTERM)  # seen after the next chunk, as a real one would be

    stopped = pipeline.run_policy(pipeline.spec_from_config(config),
                                  tmp_path / "cut", ref_params, rm_params,
                                  on_chunk=sigterm_once)
    stage = tmp_path / "cut" / config.name
    assert stopped.preempted and next(iter(stopped.train_metrics.values())).shape[1] == 4
    assert _steps(stage) == [2, 4] and not tok.is_done(stage)
    assert not (stage / "results.json").exists()
    resumed = pipeline.run_policy(pipeline.spec_from_config(config),
                                  tmp_path / "cut", ref_params, rm_params)
    assert not resumed.preempted
    for name in ("metrics.jsonl", "eval.jsonl", "events.jsonl", "results.json"):
        expected = (tmp_path / "whole" / config.name / name).read_text()
        if name == "results.json":  # timings differ
            expected, got = (json.loads(expected)["final"],
                             json.loads((stage / name).read_text())["final"])
            assert got == expected
        else:
            assert (stage / name).read_text() == expected, name
    jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
