"""Tables and plots over a sweep's ``results.csv``: pure functions of a long DataFrame.

The table has one row per run × evaluation. Identity columns: ``sweep``, ``arm``, ``task`` (may be
empty), ``run`` (unique id), ``group``, ``seed``, ``label`` (arm plus its swept values; all seeds
of one configuration share it within a task) and one column per swept config field named by its
dotted path. x-axis columns: ``update`` / ``env_steps`` (training runs) or ``n`` (best-of-n).
Metric columns: e.g. ``episode_return``, ``kl_old`` (control) or ``gold``, ``proxy``, ``kl``
(token RLHF).

Aggregates over seeds use the sample standard deviation (ddof=1, NaN for a single seed) and
sem = std / sqrt(number of non-NaN values); NaNs are ignored throughout. Plots are drawn on bare
``matplotlib.figure.Figure`` objects (Agg canvas), so nothing here touches pyplot's global state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from kltrust import overoptimization

IDENTITY_STR_COLUMNS = ("sweep", "arm", "task", "run", "label")
BANDS = ("sem", "std", "minmax")
# Not "n": that is best-of-n's x column, which one may well group by.
COUNT = "n_seeds"
_LINESTYLES = ("-", "--", ":", "-.")


def as_list(cols: str | Sequence[str] | None) -> list[str]:
    """A column argument as a list: one name, a sequence of names, or None (no columns)."""
    if cols is None:
        return []
    return [cols] if isinstance(cols, str) else list(cols)


def require_columns(df: pd.DataFrame, cols: Sequence[str]) -> None:
    """Raises ValueError naming the first of ``cols`` that ``df`` lacks."""
    for col in cols:
        if col not in df.columns:
            raise ValueError(f"column {col!r} is not in the results table "
                             f"(columns: {list(df.columns)})")


def _unique(cols: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(cols))


def load(path: str | os.PathLike) -> pd.DataFrame:
    """Reads ``results.csv``; identity columns stay strings (run ids like "007" must not become 7)."""
    header = pd.read_csv(path, nrows=0).columns
    dtype = {col: str for col in IDENTITY_STR_COLUMNS if col in header}
    return pd.read_csv(path, dtype=dtype)


def final(df: pd.DataFrame, x: str = "update", run: str = "run") -> pd.DataFrame:
    """The last evaluation (largest ``x``) of each run.

    Runs whose ``x`` is missing on every row (e.g. best-of-n runs, which have ``n`` but no
    ``update``) have no trajectory to take the end of, so all their rows are kept.
    """
    require_columns(df, [x, run])
    last = df.groupby(run, dropna=False)[x].transform("max")
    return df[(df[x] == last) | last.isna()]


def seed_summary(df: pd.DataFrame, by: str | Sequence[str],
                 metrics: str | Sequence[str]) -> pd.DataFrame:
    """Per group of ``by`` (empty: one group of everything): ``n_seeds`` and, per metric,
    ``{m}_mean``, ``{m}_std`` (ddof=1), ``{m}_sem``, ``{m}_min``, ``{m}_max``.

    ``n_seeds`` counts the rows in the group, which is the number of seeds when there is one row per
    run (as from ``final``) or per run and x (as in ``learning_curves``).

    NaNs are ignored, so a metric's sem divides by its own count of non-NaN values.
    """
    by, metrics = as_list(by), as_list(metrics)
    require_columns(df, [*by, *metrics])
    if COUNT in by or COUNT in metrics:
        raise ValueError(f"{COUNT!r} is the name of the count column; rename that column")
    grouped = df.groupby(by, dropna=False, sort=True) if by else df.groupby(lambda _: 0)
    out = grouped.size().rename(COUNT).to_frame()
    for m in metrics:
        values = grouped[m]
        std = values.std(ddof=1)
        out[f"{m}_mean"] = values.mean()
        out[f"{m}_std"] = std
        out[f"{m}_sem"] = std / np.sqrt(values.count())
        out[f"{m}_min"] = values.min()
        out[f"{m}_max"] = values.max()
    return out.reset_index(drop=not by)


def peaks(df: pd.DataFrame, metric: str, by: str | Sequence[str], x: str = "update",
          also: str | Sequence[str] = ()) -> pd.DataFrame:
    """Where the seed-mean curve of ``metric`` peaks, per group of ``by``: a run that overoptimises
    rises, peaks and falls along ``x``. The curve is the mean over the group's rows at each ``x``
    (NaNs ignored); the peak is its largest value (the first ``x`` on ties), the final value is at
    the largest ``x``.

    Returns one row per group: ``by``, ``peak_{x}``, ``{metric}_peak``, ``{metric}_final``,
    ``{metric}_drop`` (peak − final, ≥ 0) and, per column of ``also``, its mean at the peak and at
    the end (``{a}_at_peak``, ``{a}_final``).
    """
    by, also = as_list(by), as_list(also)
    require_columns(df, [*by, x, metric, *also])
    curve = df.groupby([*by, x], dropna=False, sort=True)[[metric, *also]].mean().reset_index()
    rows = []
    for key, g in _groups(curve, by):
        g = g.dropna(subset=[metric]).sort_values(x)
        if g.empty:
            continue
        top, last = g.loc[g[metric].idxmax()], g.iloc[-1]
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row.update({f"peak_{x}": top[x], f"{metric}_peak": top[metric],
                    f"{metric}_final": last[metric], f"{metric}_drop": top[metric] - last[metric]})
        for a in also:
            row.update({f"{a}_at_peak": top[a], f"{a}_final": last[a]})
        rows.append(row)
    return pd.DataFrame(rows)


def _group_label(by: Sequence[str], key: tuple) -> str:
    parts = ["" if pd.isna(v) else str(v) for v in key]
    return ", ".join(p for p in parts if p) or "all"


def _band(agg: pd.DataFrame, y: str, band: str) -> tuple[np.ndarray, np.ndarray]:
    if band == "minmax":
        return agg[f"{y}_min"].to_numpy(float), agg[f"{y}_max"].to_numpy(float)
    mean, width = agg[f"{y}_mean"].to_numpy(float), agg[f"{y}_{band}"].to_numpy(float)
    return mean - width, mean + width


def _figure(ncols: int, width: float = 5.5, height: float = 4.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str | os.PathLike) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _groups(agg: pd.DataFrame, by: list[str]):
    return agg.groupby(by, dropna=False, sort=True) if by else [((), agg)]


def learning_curves(df: pd.DataFrame, x: str, ys: str | Sequence[str], by: str | Sequence[str],
                    path: str | os.PathLike, band: str = "sem", title: str | None = None,
                    logy: Sequence[str] = ()) -> pd.DataFrame:
    """One panel per y, one line per ``by`` group: the seed mean at each ``x``, with a shaded band
    (mean ± sem, mean ± std, or min..max over seeds). Writes a PNG to ``path``.

    Returns the plotted aggregate: ``seed_summary`` over ``by + [x]``, sorted by x within groups.
    """
    ys, by, logy = as_list(ys), as_list(by), as_list(logy)
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    if not ys:
        raise ValueError("ys must name at least one metric column")
    for y in logy:
        if y not in ys:
            raise ValueError(f"logy entry {y!r} is not one of ys {ys}")
    require_columns(df, [x, *ys, *by])
    agg = seed_summary(df.dropna(subset=[x]), [*by, x], ys).sort_values([*by, x], kind="stable")
    agg = agg.reset_index(drop=True)
    fig, axes = _figure(len(ys))
    for ax, y in zip(axes, ys):
        for i, (key, group) in enumerate(_groups(agg, by)):
            xs = group[x].to_numpy(float)
            # Past ten lines the default colour cycle repeats; a line style tells them apart.
            (line,) = ax.plot(xs, group[f"{y}_mean"].to_numpy(float), lw=1.2,
                              ls=_LINESTYLES[(i // 10) % len(_LINESTYLES)],
                              label=_group_label(by, key))
            lo, hi = _band(group, y, band)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xlabel(x)
        ax.set_title(f"{y} (seed mean, band = {'min..max' if band == 'minmax' else '± ' + band})",
                     fontsize=9)
        if y in logy:
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)
    return agg


def frontier(df: pd.DataFrame, kl: str = "kl", rewards: str | Sequence[str] = ("gold", "proxy"),
             by: str | Sequence[str] = "label", color_by: str | None = "arm",
             path: str | os.PathLike = "frontier.png", sqrt_kl: bool = False,
             title: str | None = None) -> pd.DataFrame:
    """Reward against KL to the reference: each ``by`` group is one point (mean ± sem over its
    rows, i.e. seeds when given final rows), and the points of each ``color_by`` value are joined
    in order of KL. Rewards are told apart by line style (the first solid, the second dashed).

    With ``sqrt_kl`` the x-axis is sqrt(KL) (taken per row, then averaged), Gao et al.'s d; the
    aggregate then has a ``sqrt_{kl}_*`` column family. Writes a PNG; returns the aggregate,
    sorted by ``color_by`` then mean KL.
    """
    rewards, by = as_list(rewards), as_list(by)
    if not rewards:
        raise ValueError("rewards must name at least one reward column")
    keys = _unique([*([color_by] if color_by else []), *by])
    require_columns(df, [kl, *rewards, *keys])
    data = df
    x = kl
    if sqrt_kl:
        # Exact KLs come back from float arithmetic as tiny negatives at the reference.
        x = f"sqrt_{kl}"
        data = df.assign(**{x: np.sqrt(df[kl].clip(lower=0))})
    agg = seed_summary(data, keys, _unique([kl, x, *rewards]))
    agg = agg.sort_values([*([color_by] if color_by else []), f"{x}_mean"], kind="stable")
    agg = agg.reset_index(drop=True)
    fig, axes = _figure(1, width=7.0, height=4.5)
    ax = axes[0]
    colour_groups = _groups(agg, [color_by] if color_by else [])
    for i, (key, group) in enumerate(colour_groups):
        colour = f"C{i % 10}"
        for j, reward in enumerate(rewards):
            ax.errorbar(group[f"{x}_mean"], group[f"{reward}_mean"], xerr=group[f"{x}_sem"],
                        yerr=group[f"{reward}_sem"], color=colour,
                        ls=_LINESTYLES[j % len(_LINESTYLES)], marker="os^v"[j % 4], ms=4, lw=1.1,
                        capsize=2, label=f"{_group_label([color_by], key)} · {reward}")
    ax.set_xlabel(f"sqrt({kl})" if sqrt_kl else kl)
    ax.set_ylabel("reward (mean ± sem)")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    _save(fig, path)
    return agg


def normalised_scores(df: pd.DataFrame, score: str = "episode_return",
                      by: str | Sequence[str] = "label", task: str = "task",
                      random: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The PPO paper's (Schulman et al. 2017, Table 1) normalised score per configuration and task.

    ``df`` must hold one row per run (use ``final``): a config's score on a task is its mean over
    seeds, and it is normalised as (s − random[task]) / (best − random[task]), where best is the
    best config's mean on that task (so the best scores exactly 1) and random[task] the score of a
    random policy. A missing or empty task is the task "" (so ``random={"": ...}`` addresses it).
    Columns: the ``by`` columns, one per task (sorted), then ``average`` over tasks (NaN if a config
    lacks a task); rows sorted by average, best first.
    """
    by = as_list(by)
    require_columns(df, [score, task, *by])
    if "run" in df.columns and df["run"].duplicated().any():
        raise ValueError("normalised_scores needs one row per run; pass final(df) rather than every "
                         "evaluation")
    data = df.assign(**{task: df[task].fillna("").astype(str)})
    tasks = sorted(data[task].unique())
    random = dict(random or {})
    missing = [t for t in tasks if t not in random]
    if missing:
        raise ValueError(f"random has no score for task(s) {missing}: give the mean return of a "
                         "random policy for every task")
    means = data.groupby([*by, task], dropna=False)[score].mean().unstack(task)
    means = means.reindex(columns=tasks)
    out = pd.DataFrame(index=means.index)
    for t in tasks:
        best = means[t].max()
        if not np.isfinite(best) or best == random[t]:
            raise ValueError(f"task {t!r}: the best config's mean score {best} equals the random "
                             f"score {random[t]} (or is not finite); normalisation is undefined")
        out[t] = (means[t] - random[t]) / (best - random[t])
    out["average"] = out[tasks].mean(axis=1, skipna=False)
    out = out.sort_values("average", ascending=False, kind="stable", na_position="last")
    out.columns.name = None
    return out.reset_index()


def _cell(value: object, floatfmt: str) -> str:
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value)
                         and pd.isna(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format(float(value), floatfmt)
    # A literal | would end the cell; newlines would end the row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(df: pd.DataFrame, floatfmt: str = ".3g", index: bool = False) -> str:
    """A GitHub Markdown table of ``df`` (numeric columns right-aligned, NaN as "—").

    With ``index`` the index becomes the leading column(s).
    """
    if index:
        df = df.reset_index()
    headers = [_cell(c, floatfmt) for c in df.columns]
    align = ["---:" if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
             else "---" for c in df.columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_cell(v, floatfmt) for v in row) + " |")
    return "\n".join(lines) + "\n"


FitKey = tuple[tuple, str]


def overoptimization_plot(df: pd.DataFrame, d_col: str, r_cols: str | Sequence[str],
                          by: str | Sequence[str], fits: Mapping[FitKey, overoptimization.Fit],
                          path: str | os.PathLike, title: str | None = None) -> None:
    """One panel per reward column: the points (d, r) of each ``by`` group, and over them the fitted
    curve ``fits[(group_key, r_col)]`` on a dense grid of d, where group_key is the tuple of the
    group's ``by`` values (``()`` when ``by`` is empty). Groups without a fit are drawn as points only.
    """
    r_cols, by = as_list(r_cols), as_list(by)
    if not r_cols:
        raise ValueError("r_cols must name at least one reward column")
    require_columns(df, [d_col, *r_cols, *by])
    fig, axes = _figure(len(r_cols))
    for ax, r_col in zip(axes, r_cols):
        data = df.dropna(subset=[d_col, r_col])
        for i, (key, group) in enumerate(_groups(data, by)):
            colour = f"C{i % 10}"
            name = _group_label(by, key)
            ax.scatter(group[d_col], group[r_col], s=9, alpha=0.5, color=colour, label=name)
            result = fits.get((tuple(key), r_col))
            if result is not None:
                grid = np.linspace(0.0, float(group[d_col].max()) * 1.05, 200)
                ax.plot(grid, result.predict(grid), color=colour, lw=1.3,
                        label=f"{name}: {result.form} α={result.alpha:.3g} β={result.beta:.3g}")
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.set_xlabel(d_col)
        ax.set_ylabel(r_col)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)
