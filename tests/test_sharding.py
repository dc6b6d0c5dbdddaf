"""The mesh and layout rules of `kltrust.sharding` (one device; 8-device runs: test_multidevice.py)."""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import PartitionSpec

from configs import ppo as ppo_configs
from kltrust import processes, sharding
from kltrust.train import control_config, loop


def test_mesh_shape_resolves_the_free_axis():
    assert sharding.mesh_shape({"runs": 2, "data": -1, "fsdp": 2}, 8) == {
        "runs": 2, "data": 2, "fsdp": 2}
    assert sharding.mesh_shape({"runs": -1, "data": 1, "fsdp": 1}, 8)["runs"] == 8
    assert sharding.mesh_shape({}, 4) == {"runs": 1, "data": 1, "fsdp": 1}  # fixed sizes: 1 device
    assert sharding.mesh_shape({"data": 3}, 8)["data"] == 3  # the first 3 of 8 devices


@pytest.mark.parametrize("sizes,message", [
    ({"data": -1, "fsdp": -1}, r"config.mesh.fsdp = -1: at most one mesh axis may be -1"),
    ({"runs": 3, "data": -1}, r"config.mesh.data = -1: the other axes' product 3 must divide the "
                              r"number of devices \(8\)"),
    ({"runs": 4, "data": 4}, r"config.mesh = .*: needs 16 devices, only 8 are available"),
    ({"data": 0}, r"config.mesh.data = 0: must be an integer >= 1, or -1"),
    ({"data": 2.5}, r"config.mesh.data = 2.5: must be an integer >= 1, or -1"),
    ({"model": 2}, r"config.mesh.model: unknown mesh axis; the axes are \('runs', 'data', 'fsdp'\)"),
])
def test_bad_mesh_settings_name_the_key(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(sizes, 8)


def test_a_bad_mesh_fails_before_anything_is_written(tmp_path):
    config = ppo_configs.get_config("cartpole_clip")
    config.mesh.data = 2  # this process has one device
    with pytest.raises(ValueError, match=r"config.mesh = .*: needs 2 devices, only 1"):
        loop.train(control_config.spec_from_config(config), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_fsdp_spec_splits_the_largest_divisible_axis():
    fsdp = sharding.FSDP_AXIS
    assert sharding.fsdp_spec((16, 64), 8) == PartitionSpec(None, fsdp)
    assert sharding.fsdp_spec((64, 12), 4) == PartitionSpec(fsdp, None)
    assert sharding.fsdp_spec((6, 8, 3), 4) == PartitionSpec(None, fsdp, None)
    assert sharding.fsdp_spec((64,), 8) == PartitionSpec()  # vectors stay whole
    assert sharding.fsdp_spec((3, 5), 2) == PartitionSpec()  # nothing divisible
    assert sharding.fsdp_spec((16, 64), 1) == PartitionSpec()  # no fsdp axis


def test_padded_run_index_repeats_the_last_run():
    mesh = sharding.make_mesh(1)
    np.testing.assert_array_equal(sharding.padded_run_index(3, mesh), [0, 1, 2])


def test_initialize_without_a_coordinator_is_single_process(monkeypatch):
    for name in (processes.ENV_COORDINATOR, processes.ENV_NUM_PROCESSES, processes.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    assert processes.initialize() is False
    with pytest.raises(ValueError, match=r"num_processes = 2 needs a coordinator address"):
        processes.initialize(num_processes=2)
    with pytest.raises(ValueError, match=r"process_id = 2: must be in \[0, 1\]"):
        processes.initialize("localhost:1", 2, 2)
    monkeypatch.setenv(processes.ENV_COORDINATOR, "localhost:1")
    monkeypatch.setenv(processes.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(processes.ENV_PROCESS_ID, "5")
    with pytest.raises(ValueError, match=r"process_id = 5: must be in \[0, 1\]"):
        processes.initialize()


def test_a_sweep_with_a_bad_mesh_fails_before_writing(tmp_path):
    from kltrust import sweep as sweeps

    sweep = sweeps.load_preset("configs/sweeps/demo.py")
    overrides = sweeps.parse_overrides(["mesh.runs=8", "mesh.data=1"])
    with pytest.raises(ValueError, match=r"sweep.arms\[0\] .*config.mesh = .*needs 8 devices"):
        sweeps.run_sweep(sweep, tmp_path / "out", overrides=overrides, progress=False)
    assert not (tmp_path / "out").exists()


def test_peer_timeout_must_be_finite(monkeypatch):
    for name in (processes.ENV_COORDINATOR, processes.ENV_NUM_PROCESSES, processes.ENV_PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    for bad in (float("inf"), float("nan"), 0.5):
        with pytest.raises(ValueError, match=r"peer_timeout = .*: must be a finite number of "
                                             r"seconds >= 1"):
            processes.initialize("localhost:1", 2, 0, timeout_s=bad)


def test_single_process_agreement_is_the_local_answer():
    assert processes.claim("x", lambda: [1, "a"]) == [1, "a"]
    assert processes.agree("y", {"k": 2}) == {"k": 2}
    assert processes.any_process(True) and not processes.any_process(False)
    with pytest.raises(KeyError):  # the process's own error, unchanged
        processes.claim("z", lambda: {}["missing"])
