"""Two CPU processes on localhost (jax.distributed over gloo) train like one process with two devices.

`tests/multiprocess_worker.py` trains PPO (environments split over the two processes' devices,
gradients all-reduced across processes, orbax checkpoints written by both) and a small
transformer by SFT with FSDP (weights split across the processes, each feeding its own rows).
The same worker alone with two forced devices is the reference.

Then the ways a peer goes wrong (a stale view of the workdir, a dead peer, a hung peer, SIGTERM while
blocked in a collective): each must end every process with a clear error within a bound set by the
peer timeout, never hang. Children that outlive their deadline are stack-dumped and killed
(`tests/subprocs.py`).
"""

from __future__ import annotations

import pathlib
import signal
import socket
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from subprocs import Children, child_env

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiprocess_worker.py"
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# The peer timeout of the failure-mode tests: every bound below is a small multiple of it.
PEER_TIMEOUT = 20


def _env(xla_flags: str = "", peer_timeout: float | None = None) -> dict[str, str]:
    extra = {"PYTHONPATH": str(ROOT)}
    if xla_flags:
        extra["XLA_FLAGS"] = xla_flags
    if peer_timeout is not None:
        extra["KLTRUST_PEER_TIMEOUT"] = str(peer_timeout)
    return child_env(extra, drop=("XLA_FLAGS", "KLTRUST_PEER_TIMEOUT"))


def _two(out: pathlib.Path, mode: str = "train", timeout: float = TIMEOUT,
         peer_timeout: float | None = None, during=None):
    """Runs the worker as two processes; ``during(children, procs)`` runs while they do."""
    port = str(_free_port())
    with Children() as children:
        procs = [children.start([sys.executable, str(WORKER), str(out), "2", str(i), port, mode],
                                env=_env(peer_timeout=peer_timeout)) for i in range(2)]
        if during is not None:
            during(children, procs)
        return children.wait(timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    multi, single = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one")
    for i, result in enumerate(_two(multi)):
        assert result.returncode == 0, f"process {i} failed:\n{result.stderr[-4000:]}"
    with Children() as children:
        children.start([sys.executable, str(WORKER), str(single), "1", "0", "0"],
                       env=_env("--xla_force_host_platform_device_count=2"))
        reference = children.wait(TIMEOUT)[0]
    assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-4000:]
    return multi, single


def test_both_processes_end_identical_and_match_one_process(runs):
    multi, single = runs
    p0, p1 = np.load(multi / "final_0.npz"), np.load(multi / "final_1.npz")
    ref = np.load(single / "final_0.npz")
    assert sorted(p0.files) == sorted(p1.files) == sorted(ref.files)
    assert len([k for k in p0.files if k.startswith("ppo/['params']")]) == 12
    for name in p0.files:
        np.testing.assert_array_equal(p0[name], p1[name], err_msg=name)
        # Same mesh shape, same devices' work, same reductions: bit-identical to one process.
        np.testing.assert_array_equal(p0[name], ref[name], err_msg=name)
    # FSDP really split the transformer's weights over both processes' devices.
    assert bool(p0["sft/fsdp_split"]) and int(p0["sft/embedding_devices"]) == 2
    assert np.all(np.isfinite(p0["sft/train_loss"]))


def test_process_zero_writes_files_and_both_write_the_checkpoint(runs):
    multi, _ = runs
    lines = (multi / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 * 2  # 4 updates × 2 seeds, written once
    assert (multi / "ppo" / "learning_curve.png").exists()
    assert (multi / "sft" / "params.msgpack").exists()
    step = multi / "ppo" / "checkpoints" / "4" / "default"
    assert (step / "ocdbt.process_0").exists() and (step / "ocdbt.process_1").exists()

    # The checkpoint the two processes wrote restores in one process to the parameters they held.
    checkpointer = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            checkpointer.metadata(step).item_metadata)
    state = checkpointer.restore(step, abstract)
    final = np.load(multi / "final_0.npz")
    for layer in ("Dense_0", "Dense_2"):
        np.testing.assert_array_equal(np.asarray(state["params"]["params"]["actor"][layer]["kernel"]),
                                      final[f"ppo/['params']['actor']['{layer}']['kernel']"])


# ---------------------------------------------------------------- failure modes
# Bounds: start-up and imports take up to ~30 s on a loaded 2-core machine; a failure is then
# detected within one peer timeout (a barrier or an exchange, or the coordination service's
# heartbeat for a dead peer), and shutting down waits at most one more (JAX's shutdown barrier).
BOUND = 60 + 3 * PEER_TIMEOUT


def test_a_stale_view_of_the_workdir_stops_both_processes_with_a_clear_error(tmp_path):
    results = _two(tmp_path, "stale", timeout=BOUND, peer_timeout=PEER_TIMEOUT)
    for i, result in enumerate(results):
        assert result.returncode != 0, f"process {i} should have failed:\n{result.stdout}"
        assert "PeerDisagreement: the processes disagree at 'loop.workdir'" in result.stderr, (
            result.stderr[-3000:])
        assert "process 0 sees 'fresh'; process 1 sees 'resume'" in result.stderr
    # Nothing was written: the decision came before any write.
    assert not (tmp_path / "view_0").exists()
    assert sorted(p.name for p in (tmp_path / "view_1").iterdir()) == ["config.json",
                                                                       "metrics.jsonl"]


def test_a_dead_peer_ends_the_run_within_the_peer_timeout(tmp_path):
    results = _two(tmp_path, "dead", timeout=BOUND, peer_timeout=PEER_TIMEOUT)
    assert results[1].returncode == 3
    assert results[0].returncode != 0
    assert ("stopped sending heartbeats" in results[0].stderr
            or "PeerError" in results[0].stderr), results[0].stderr[-3000:]


def test_a_hung_peer_ends_the_run_within_the_peer_timeout(tmp_path):
    results = _two(tmp_path, "hang", timeout=BOUND, peer_timeout=PEER_TIMEOUT)
    assert results[0].returncode != 0
    assert (f"PeerError: process 0: not every one of the 2 processes reached 'loop.workdir' "
            f"within {PEER_TIMEOUT} s") in results[0].stderr, results[0].stderr[-3000:]
    assert results[1].returncode != 0  # the sleeper is ended too: its coordinator is gone


def test_a_peer_hung_mid_run_is_found_from_inside_a_collective(tmp_path):
    """Process 1 stops between chunks; process 0 is then blocked in the next chunk's all-reduce,
    where no barrier can time out. The progress watchdog ends it: stuck for one peer timeout,
    then process 1 seen at an earlier step for another."""
    results = _two(tmp_path, "stall", timeout=BOUND + PEER_TIMEOUT, peer_timeout=PEER_TIMEOUT)
    from kltrust.processes import EXIT_PEER_HUNG

    assert results[0].returncode == EXIT_PEER_HUNG, results[0].stderr[-3000:]
    assert "for process 1, which has not moved from 'loop.chunk'" in results[0].stderr
    assert "it is hung" in results[0].stderr and "Stacks follow" in results[0].stderr
    assert results[1].returncode != 0  # the sleeper is ended too: its coordinator is gone


def test_sigterm_ends_a_process_blocked_in_a_collective(tmp_path):
    sent = {}

    def signal_when_blocked(children, procs):
        deadline = time.monotonic() + 120
        while "in a collective" not in children.output(procs[0])[0]:
            assert time.monotonic() < deadline and procs[0].poll() is None, children.output(
                procs[0])
            time.sleep(0.2)
        time.sleep(1)
        sent["at"] = time.monotonic()
        procs[0].send_signal(signal.SIGTERM)
        procs[0].wait(timeout=30)  # grace_s = 3 in the worker
        sent["took"] = time.monotonic() - sent["at"]

    results = _two(tmp_path, "sigterm", timeout=BOUND, peer_timeout=PEER_TIMEOUT,
                   during=signal_when_blocked)
    assert results[0].returncode == 143, results[0].stderr[-3000:]
    assert "SIGTERM not handled within 3 s" in results[0].stderr
    assert "multiprocess_worker.py" in results[0].stderr  # the Python stack was dumped
    assert sent["took"] < 3 + 10  # the grace period, plus scheduling slack on a loaded machine
