"""Two CPU processes on localhost (jax.distributed over gloo) train like one process with two devices.

`tests/multiprocess_worker.py` trains PPO (environments split over the two processes' devices,
gradients all-reduced across processes, orbax checkpoints written by both) and a small
transformer by SFT with FSDP (weights split across the processes, each feeding its own rows).
The same worker alone with two forced devices is the reference.
"""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiprocess_worker.py"
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(xla_flags: str = "") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    multi, single = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one")
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(multi), "2", str(i), port],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i in range(2)]
    logs = [p.communicate(timeout=TIMEOUT)[0].decode() for p in procs]
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"process {i} failed:\n{log[-4000:]}"
    reference = subprocess.run(
        [sys.executable, str(WORKER), str(single), "1", "0", "0"], capture_output=True,
        env=_env("--xla_force_host_platform_device_count=2"), timeout=TIMEOUT)
    assert reference.returncode == 0, reference.stdout.decode()[-2000:] + reference.stderr.decode()[-4000:]
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
