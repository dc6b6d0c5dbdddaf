"""Reward-model overoptimization curves: the functional forms of Gao, Schulman & Hilton (2022).

With d = sqrt(KL(π‖π_ref)) and R the gold reward minus the reference policy's gold reward (so
R(0) = 0), "Scaling laws for reward model overoptimization" fits

    best-of-n:  R_bon(d) = d (α − β d)
    RL:         R_RL(d)  = d (α − β log d)        (d log d := 0 at d = 0)

Both are linear in (α, β) with no intercept, so a fit is one least-squares solve. Everything here is
host-side NumPy/pandas: no JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

FORMS = ("bon", "rl")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def _design(d: np.ndarray, form: str) -> np.ndarray:
    """Columns multiplying (α, β): R = α·d − β·g(d), with g = d² (bon) or d log d (rl)."""
    if form == "bon":
        g = d * d
    else:
        # d log d → 0 as d → 0; np.where alone would still evaluate log(0) and warn.
        safe = np.where(d > 0, d, 1.0)
        g = np.where(d > 0, d * np.log(safe), 0.0)
    return np.stack([d, -g], axis=-1)


@dataclasses.dataclass(frozen=True)
class Fit:
    """One fitted curve. ``r2`` and ``rmse`` are measured on the ``n`` points it was fitted to."""

    form: str
    alpha: float
    beta: float
    r2: float
    rmse: float
    n: int

    def predict(self, d: np.ndarray) -> np.ndarray:
        """R(d) for the fitted α, β; ``d`` must be ≥ 0 (it is sqrt KL)."""
        d = np.asarray(d, dtype=float)
        return _design(d, self.form) @ np.array([self.alpha, self.beta])


def fit(d: Sequence[float] | np.ndarray, r: Sequence[float] | np.ndarray, form: str) -> Fit:
    """Least-squares (α, β) of ``form`` ('bon' or 'rl') through the points (d, r), no intercept.

    ``d`` is sqrt(KL) and ``r`` the reward relative to the reference's, both 1-D of equal length with
    at least 3 finite points and at least 2 distinct positive d (otherwise α and β are not
    identified). ``r2`` is 1 − SS_res/SS_tot with SS_tot around the mean of r (NaN if r is constant).
    """
    _check_form(form)
    d = np.asarray(d, dtype=float)
    r = np.asarray(r, dtype=float)
    if d.ndim != 1:
        raise ValueError(f"d must be 1-D, got shape {d.shape}")
    if r.shape != d.shape:
        raise ValueError(f"r must have the shape of d {d.shape}, got {r.shape}")
    if d.size < 3:
        raise ValueError(f"d and r need at least 3 points, got {d.size}")
    if not np.all(np.isfinite(d)):
        raise ValueError("d must be finite (sqrt KL), got NaN or inf")
    if not np.all(np.isfinite(r)):
        raise ValueError("r must be finite, got NaN or inf")
    if np.any(d < 0):
        raise ValueError(f"d must be >= 0 (it is sqrt KL), got min {d.min()}")
    if np.unique(d[d > 0]).size < 2:
        raise ValueError("d must hold at least 2 distinct positive values to identify alpha and beta")
    design = _design(d, form)
    (alpha, beta), *_ = np.linalg.lstsq(design, r, rcond=None)
    residual = r - design @ np.array([alpha, beta])
    ss_res = float(residual @ residual)
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return Fit(form=form, alpha=float(alpha), beta=float(beta), r2=r2,
               rmse=math.sqrt(ss_res / d.size), n=int(d.size))


def fit_table(df: pd.DataFrame, d_col: str, r_col: str, by: Sequence[str] = (),
              form: str = "rl") -> pd.DataFrame:
    """One ``fit`` of ``r_col`` against ``d_col`` per group of ``by`` (empty: one fit of everything).

    Rows where either column is NaN are dropped first (e.g. evaluations that did not record KL).
    Columns: the ``by`` columns, form, alpha, beta, r2, rmse, n.
    """
    _check_form(form)
    by = list(by)
    for col in [d_col, r_col, *by]:
        if col not in df.columns:
            raise ValueError(f"column {col!r} is not in the table (columns: {list(df.columns)})")
    data = df.dropna(subset=[d_col, r_col])
    groups = data.groupby(by, dropna=False, sort=True) if by else [((), data)]
    rows = []
    for key, group in groups:
        try:
            result = fit(group[d_col].to_numpy(float), group[r_col].to_numpy(float), form)
        except ValueError as e:
            raise ValueError(f"group {dict(zip(by, key))}: {e}") from e
        rows.append({**dict(zip(by, key)), "form": form,
                     **{f.name: getattr(result, f.name) for f in dataclasses.fields(Fit)
                        if f.name != "form"}})
    return pd.DataFrame(rows, columns=[*by, "form", "alpha", "beta", "r2", "rmse", "n"])


def peak(result: Fit) -> tuple[float, float]:
    """(d*, R(d*)): the d ≥ 0 that maximises the fitted curve, and the reward there.

    For β > 0 the curve has an interior maximum: bon d* = α/(2β), R* = α²/(4β) (clamped to d* = 0,
    R* = 0 when α ≤ 0, since d is a sqrt KL); rl d* = exp(α/β − 1), R* = β·d*. For β < 0, or β = 0
    with α > 0, the reward grows without bound and the result is (inf, inf): the data show no
    overoptimization. For β = 0 and α ≤ 0 the best is the reference itself, (0, 0).
    """
    alpha, beta = result.alpha, result.beta
    if beta < 0 or (beta == 0 and alpha > 0):
        return math.inf, math.inf
    if beta == 0:
        return 0.0, 0.0
    if result.form == "bon":
        if alpha <= 0:
            return 0.0, 0.0
        return alpha / (2 * beta), alpha**2 / (4 * beta)
    # exp overflows to inf for α/β ≳ 710; R* = β·d* is then inf too, which is the honest answer.
    with np.errstate(over="ignore"):
        d_star = float(np.exp(alpha / beta - 1.0))
    return d_star, beta * d_star
