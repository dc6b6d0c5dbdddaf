"""Token RLHF: run a preset of configs/rlhf.py and whatever stages it needs, under one root.

    python -m experiments.rlhf --config=configs/rlhf.py:ppo --workdir=runs/rlhf \
        [--config.num_seeds=1 --config.rl.hparams.beta=0.1 ...] [--overwrite]

Stages already finished under the root (sft/, reward_model/) are reused; ``--overwrite`` replaces
only the preset's own stage directory. The same command on an interrupted policy stage resumes it
from its last checkpoint; SIGTERM checkpoints after the current chunk and exits with status 143.
A bad flag or config prints one line and exits with status 2
before any stage runs (`experiments.cli`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags, logging

from experiments import cli, distributed
from kltrust.train import pipeline

_CONFIG = cli.config_file_flag("config", "configs/rlhf.py:ppo", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Pipeline root directory.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the preset's own stage directory.")


def main(argv: Sequence[str]) -> None:
    del argv
    config = _CONFIG.value
    with cli.config_errors():  # bad multi-host flags: one line, exit status 2
        distributed.initialize()
    # The config is read once, here: validated (a ConfigError: one line, exit status 2) into the
    # typed spec the library takes.
    spec = pipeline.spec_from_config(config)
    logging.set_verbosity(logging.ERROR)  # TFDS warns about every custom data config
    result = pipeline.run(spec, _WORKDIR.value, overwrite=_OVERWRITE.value)
    out = f"{_WORKDIR.value}/{ {'sft': 'sft', 'reward_model': 'reward_model'}.get(spec.stage, spec.name)}"
    if isinstance(result, pipeline.PolicyResult) and result.preempted:
        updates = next(iter(result.train_metrics.values())).shape[1]
        cli.exit_preempted(f"update {updates} of {out}")
    if isinstance(result, pipeline.PolicyResult):
        for row in result.final:
            shown = {k: round(v, 3) for k, v in row.items()
                     if isinstance(v, float) and k in ("gold", "proxy", "kl", "distinct_2")}
            print(f"seed {row['seed']}: {shown}")
        if result.run_seconds and result.tokens_sampled:
            print(f"compile {result.compile_seconds:.1f} s; run {result.run_seconds:.1f} s "
                  f"({result.tokens_sampled / result.run_seconds:,.0f} sampled tokens/s incl. "
                  "updates)")
    print(f"outputs: {out}")


if __name__ == "__main__":
    cli.run(main)
