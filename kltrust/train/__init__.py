"""Training programs that tie rollout, objective and controller together.

Each control program module (`ppo`, `trpo`) exposes the same surface: ``Static``, ``HParams`` (its
knobs, declared with `kltrust.components.knob`), ``make_trainer(static, mesh)`` and
``compile_run``; `program(algorithm)` picks one by name. They take specs, never a config: the config
layer that reads one (defaults, validation, `control_config.spec_from_config`) is
`kltrust.train.control_config`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from kltrust.errors import check_choice

ALGORITHMS = ("ppo", "trpo")


def program(algorithm: str) -> ModuleType:
    """The training-program module for ``algorithm`` ("ppo" or "trpo"); a clear error otherwise."""
    check_choice(algorithm, ALGORITHMS, "algorithm")  # a ConfigError
    return importlib.import_module(f"kltrust.train.{algorithm}")
