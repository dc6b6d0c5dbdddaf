"""Wall time of one PPO program over 1 seed vs N seeds vmapped (CartPole clip preset by default).

    python -m benchmarks.ppo_seeds [--preset=cartpole_clip --seeds=1,8 --repeats=3]

Prints a Markdown table: compile time, run time (median of repeats), env steps/s in total and per seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from configs import ppo as ppo_configs
from kltrust.train import control_config, loop

_PRESET = flags.DEFINE_string("preset", "cartpole_clip", "PPO preset.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "8"], "Numbers of vmapped seeds to time.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per setting; the median is reported.")


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = ["| seeds | compile+init s | run s (median) | run s (min..max) | env steps/s | per seed |",
            "|---|---|---|---|---|---|"]
    for num_seeds in map(int, _SEEDS.value):
        config = ppo_configs.get_config(_PRESET.value)
        config.num_seeds = num_seeds
        # Interleave nothing else: each setting's repeats run back to back on an idle machine.
        spec = control_config.spec_from_config(config)  # the config is read here, once
        results = [loop.train(spec, progress=False) for _ in range(_REPEATS.value)]
        runs = np.array([r.run_seconds for r in results])
        steps = results[0].metrics["kl_old"].shape[1] * results[0].env_steps_per_update * num_seeds
        median = float(np.median(runs))
        rows.append(f"| {num_seeds} | {results[0].compile_seconds:.1f} | {median:.2f} | "
                    f"{runs.min():.2f}..{runs.max():.2f} | {steps / median:,.0f} | "
                    f"{steps / median / num_seeds:,.0f} |")
    print(f"preset {_PRESET.value}")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
