"""The library's PNG plots leave the user's matplotlib alone: no backend switch, no pyplot (a
notebook's inline backend stopped showing figures once a stage had called matplotlib.use("Agg"))."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import pathlib, sys, tempfile
import matplotlib
matplotlib.use("svg")  # the user's choice (in a notebook: the inline backend)
from kltrust.train import policy_outputs
out = pathlib.Path(tempfile.mkdtemp())
evals = [dict(seed=s, kl=k, gold=0.1 * k, proxy=0.2 * k, kl_d0=k, gold_d0=k, proxy_d0=k,
              kl_d1=k, gold_d1=-k, proxy_d1=k) for s in (0, 1) for k in (0.0, 1.0, 2.0)]
policy_outputs.plot_gold_proxy_vs_kl(evals, out / "a.png", "a")
policy_outputs.plot_domains(evals, out / "b.png", "b")
assert all((out / n).read_bytes()[:8] == b"\\x89PNG\\r\\n\\x1a\\n" for n in ("a.png", "b.png"))
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""


def test_plots_write_pngs_without_touching_the_backend():
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-2:] == ["svg", "False"], proc.stdout
