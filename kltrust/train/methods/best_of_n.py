"""Best-of-n: no training; n samples of the reference per prompt, the proxy's favourite kept
(`kltrust.train.rlhf.best_of_n`). Its KL to the reference is the analytic log n − (n−1)/n."""

from __future__ import annotations

from kltrust.train.methods import TokenMethod, register

register("best_of_n", TokenMethod(None, placements=("none",), anchor="none",
                                  doc="best-of-n sampling from the reference against the proxy"))
