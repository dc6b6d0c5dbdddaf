"""Train one config (all its seeds vmapped in one program).

    python -m experiments.train --config=configs/ppo.py:cartpole_clip --workdir=runs/cartpole_clip \
        [--config.hparams.clip_eps=0.1 --config.num_seeds=3 ...] [--overwrite]

Writes config.json, metrics.jsonl, TensorBoard events, orbax checkpoints and learning_curve.png to
the workdir and prints where they went. The same command on an interrupted run's workdir resumes it
from its last checkpoint (bit-identical on CPU to an uninterrupted run); SIGTERM checkpoints after
the current chunk and exits with status 143. A bad flag or config prints one line and exits with
status 2 before anything is compiled or written (`experiments.cli`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags, logging

from experiments import cli, distributed
from kltrust.train import control_config, loop

_CONFIG = cli.config_file_flag("config", "configs/ppo.py:cartpole_clip", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory.", required=True)
PREEMPTED_EXIT_CODE = cli.EXIT_PREEMPTED  # 143: SIGTERM, checkpoint written (see cli)

_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a workdir that holds a different config.")


def main(argv: Sequence[str]) -> None:
    del argv
    with cli.config_errors():  # bad multi-host flags or mesh: one line, exit status 2
        distributed.initialize()
        spec = control_config.spec_from_config(_CONFIG.value)  # the config is read here, once
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
    result = loop.train(spec, _WORKDIR.value, overwrite=_OVERWRITE.value)
    updates = result.metrics["kl_old"].shape[1]
    if result.resumed_from:
        print(f"resumed after update {result.resumed_from} of {spec.static.num_updates}")
    if result.preempted:
        cli.exit_preempted(f"update {updates}")
    steps = (updates - result.resumed_from) * result.env_steps_per_update * len(result.seeds)
    final = result.metrics["episode_return"][:, -1]
    print(f"final mean episode return per seed: {', '.join(f'{r:.1f}' for r in final)}")
    if steps:
        loaded = " (loaded from the program cache)" if result.program_cached else ""
        print(f"compile {result.compile_seconds:.1f} s{loaded}; run {result.run_seconds:.1f} s "
              f"({steps / result.run_seconds:,.0f} env steps/s over {len(result.seeds)} seed(s))")
    print(f"metrics: {_WORKDIR.value}/metrics.jsonl  plot: {_WORKDIR.value}/learning_curve.png  "
          f"checkpoints: {_WORKDIR.value}/checkpoints  tensorboard: {_WORKDIR.value}/tensorboard")
    if spec.wandb.active:  # W&B prints nothing itself (kltrust.tracking keeps it silent)
        sync = f"  (upload: wandb sync {_WORKDIR.value}/wandb/offline-run-*)" if (
            spec.wandb.mode == "offline") else ""
        print(f"wandb ({spec.wandb.mode}): {_WORKDIR.value}/wandb{sync}")


if __name__ == "__main__":
    cli.run(main)
