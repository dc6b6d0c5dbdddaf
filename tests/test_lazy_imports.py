"""gymnax's plotting imports are deferred (`kltrust.envs.lazy_imports`), and deferring changes
nothing but when they load; wandb is imported only by a run that switches it on
(`kltrust.tracking`), orbax only by a run that checkpoints (`kltrust.checkpoint`). Each check runs
in a fresh interpreter: what a process has imported is process-wide state that the rest of the
suite has long since filled."""

from __future__ import annotations

import json
import pathlib
import sys

import subprocs

ROOT = pathlib.Path(__file__).resolve().parents[1]

PROBE = """
import json, sys
import kltrust.train.loop, kltrust.train.ppo, kltrust.train.trpo, kltrust.train.control_config
loaded = sorted(m for m in ("seaborn", "pandas", "scipy.stats", "matplotlib.pyplot", "wandb",
                            "orbax.checkpoint")
                if m in sys.modules and type(sys.modules[m]).__name__ != "_Deferred")
from kltrust.train import common
model, _, _ = common.model_and_env("CartPole-v1", (8,), "tanh")
import gymnax.environments.misc.pong as pong        # binds the stand-in as `sns`
palette = [list(c) for c in pong.sns.color_palette("cubehelix", 3)]
import seaborn
import matplotlib.pyplot
real_after = type(sys.modules["seaborn"]).__name__ == "module" and hasattr(seaborn, "heatmap")
figure = type(matplotlib.pyplot.figure()).__name__
print(json.dumps({"loaded": loaded, "discrete": bool(model.discrete), "palette": palette,
                  "real_after": real_after, "figure": figure}))
"""

REFERENCE = """
import json, seaborn
print(json.dumps([list(c) for c in seaborn.color_palette("cubehelix", 3)]))
"""


def _run(code: str):
    result = subprocs.run([sys.executable, "-c", code], cwd=ROOT, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_training_imports_skip_the_plotting_stack_and_it_still_works_when_used():
    probe = _run(PROBE)
    # neither seaborn, pandas, scipy.stats, pyplot, wandb (kltrust.tracking: only when on) nor
    # orbax (kltrust.checkpoint: only when a run checkpoints)
    assert probe["loaded"] == []
    assert probe["discrete"]  # the environments themselves are unaffected
    assert probe["palette"] == _run(REFERENCE)  # first use loads the real seaborn: same values
    assert probe["real_after"]
    assert probe["figure"] == "Figure"  # `import a.b; a.b.f()` reaches the real pyplot
