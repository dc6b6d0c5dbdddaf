"""One process of the multi-process tests (`tests/test_multiprocess.py`), also run alone as the
single-process reference.

    python tests/multiprocess_worker.py OUT_DIR NUM_PROCESSES PROCESS_ID PORT [MODE]

MODE ``train`` (the default) trains PPO (environments split over the processes' devices, orbax
checkpoints written by all of them) and then a small transformer by SFT with FSDP (weights split
over the devices, each process feeding its own rows of every batch), and writes what this process
ends with to OUT_DIR/final_PROCESS_ID.npz. The other modes make process 1 misbehave:

    stale     process 1 sees a workdir holding a run of the same config (a stale copy), process 0
              an empty one: the processes must stop at their first decision, not hang
    dead      process 1 exits abruptly before training
    hang      process 1 sleeps instead of training
    stall     process 1 sleeps after the first training chunk, while process 0 waits for it inside
              the second chunk's collectives
    sigterm   process 1 sleeps; process 0 blocks in a cross-process collective with SIGTERM handling
              on (the test sends the SIGTERM)
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np


def _tiny_ppo():
    from configs import ppo as ppo_configs

    config = ppo_configs.get_config("cartpole_clip")
    config.num_envs, config.num_steps, config.num_seeds = 4, 32, 2
    config.num_epochs, config.num_minibatches = 2, 2
    config.total_timesteps, config.updates_per_chunk = 4 * 32 * 4, 2
    return config


def misbehave(out: pathlib.Path, process_id: int, mode: str) -> None:
    """The failure modes: process 0 runs normally as far as it can, process 1 misbehaves."""
    import os
    import time

    from kltrust import processes
    from kltrust.train import control_config, loop

    config = _tiny_ppo()
    if mode == "stale":
        workdir = out / f"view_{process_id}"
        if process_id == 1:
            workdir.mkdir(parents=True)
            # This config's own run (the JSON a workdir is claimed with), seen by process 1 only.
            (workdir / "config.json").write_text(
                control_config.spec_from_config(config).config_json)
            (workdir / "metrics.jsonl").write_text("")
        loop.train(control_config.spec_from_config(config), workdir, progress=False)
    elif process_id == 1 and mode == "dead":
        os._exit(3)
    elif mode == "stall":
        def stall(updates):
            if process_id == 1:
                print("process 1 stalling after a chunk", flush=True)
                time.sleep(3600)

        config.total_timesteps = 4 * 32 * 6  # three chunks: the stall is mid-run
        loop.train(control_config.spec_from_config(config), out / "ppo", progress=False,
                   on_chunk=stall)
    elif process_id == 1:
        print("process 1 sleeping", flush=True)
        time.sleep(3600)
    elif mode == "sigterm":
        from jax.experimental import multihost_utils

        with processes.StopOnSigterm(enabled=True, grace_s=3):
            print("process 0 in a collective", flush=True)
            multihost_utils.process_allgather(np.ones(3))
    else:
        loop.train(control_config.spec_from_config(config), out / "ppo", progress=False)
    print(f"process {process_id} returned", flush=True)


def main(out: pathlib.Path, num_processes: int, process_id: int, port: int,
         mode: str = "train") -> None:
    from kltrust import processes

    if num_processes > 1:
        processes.initialize(f"localhost:{port}", num_processes, process_id)
    if mode != "train":
        return misbehave(out, process_id, mode)
    import jax

    from kltrust import sharding
    from kltrust.models.transformer import TransformerConfig
    from kltrust.train import control_config, loop, sft
    from kltrust.train import tokens as tok

    result = loop.train(control_config.spec_from_config(_tiny_ppo()), out / "ppo", progress=False)
    final = {f"ppo/{jax.tree_util.keystr(path)}": value for path, value in
             jax.tree_util.tree_leaves_with_path(sharding.to_host(result.state.params))}
    final["ppo/episode_return"] = result.metrics["episode_return"]

    policy = tok.Policy(TransformerConfig(vocab_size=16, num_layers=1, width=16, num_heads=2,
                                          max_len=8, critic="none"))
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 16, size=(64, 8)).astype(np.int32)
    mask = np.ones((64, 7), np.float32)
    mesh = sharding.make_mesh(fsdp=jax.device_count())
    params, rows = sft.train(policy, tokens, mask, steps=4, batch_size=8, learning_rate=1e-3,
                             seed=0, eval_every=2, eval_fn=lambda p: {}, mesh=mesh)
    embedding = jax.tree.leaves(params)[0]
    final["sft/fsdp_split"] = np.asarray(
        [not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params)]).any()
    final["sft/embedding_devices"] = np.asarray(len(embedding.sharding.device_set))
    final["sft/train_loss"] = np.asarray([r["train_loss"] for r in rows])
    final.update({f"sft/{jax.tree_util.keystr(path)}": value for path, value in
                  jax.tree_util.tree_leaves_with_path(sharding.to_host(params))})
    tok.save_params(out / "sft", params)
    np.savez(out / f"final_{process_id}.npz", **final)


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    main(pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
         *sys.argv[5:])
