"""Training programs that tie rollout, objective and controller together.

Each program module (`ppo`, `trpo`) exposes the same surface: ``HParams.from_config(config)`` (the
whole config: PPO's controller knobs depend on ``config.variant``), ``validate``, ``make_trainer``
and ``compile_run``; `program(config)` picks one by ``config.algorithm``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kltrust.errors import check_choice

ALGORITHMS = ("ppo", "trpo")


def program(config) -> ModuleType:
    """The training-program module for ``config.algorithm``; a clear error for anything else."""
    algorithm = config.get("algorithm", "ppo")
    check_choice(algorithm, ALGORITHMS, "algorithm")  # a ConfigError
    return importlib.import_module(f"kltrust.train.{algorithm}")
