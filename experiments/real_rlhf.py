"""RLHF on a real pretrained model: run a preset of configs/real.py and the stages it needs.

    python -m experiments.real_rlhf --config=configs/real.py:grpo --workdir=runs/real \
        [--config.rl.hparams.beta=0.1 --config.model.name=gemma3-270m ...] [--overwrite]

The reference pairs (root/pairs) and the proxy (root/reward_model) are made once per root and
reused by every preset; ``--overwrite`` replaces only the preset's own stage. The same command on
an interrupted stage resumes it from its checkpoint; SIGTERM checkpoints after the current chunk
and exits with status 143. A bad flag or config prints one line and exits with status 2 before
any model is loaded (`experiments.cli`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags, logging

from experiments import cli
from kltrust.train import real_config, real_rlhf

_CONFIG = cli.config_file_flag("config", "configs/real.py:grpo", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root directory of the run's stages.",
                               required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace the preset's own stage directory.")


def main(argv: Sequence[str]) -> None:
    del argv
    spec = real_config.spec_from_config(_CONFIG.value)  # read once; ConfigError: exit status 2
    logging.set_verbosity(logging.ERROR)  # TFDS warns about every custom data config
    result = real_rlhf.run(spec, _WORKDIR.value, overwrite=_OVERWRITE.value)
    out = f"{_WORKDIR.value}/{spec.name}"
    if result.get("preempted"):
        cli.exit_preempted(out)
    for row in result["final"]:
        shown = {k: round(v, 3) for k, v in row.items() if isinstance(v, float) and k in (
            "gold", "proxy", "kl", "distinct_2", "perplexity")}
        print(f"seed {row['seed']}{'' if 'n' not in row else ', n ' + str(row['n'])}: {shown}")
    print(f"reference perplexity {result['reference_perplexity']:.2f}; outputs: {out}")


if __name__ == "__main__":
    cli.run(main)
