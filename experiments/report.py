"""Tables and plots of a finished sweep, from its ``results.csv`` and the ``report`` entry of ``sweep.json``.

    python -m experiments.report --sweep_dir=runs/NAME [--out_dir=runs/NAME]

Writes PNGs and ``report.md`` to ``--out_dir`` (default: the sweep directory) and prints the
report's path. ``report`` is a dict holding any of these sections, drawn in the order given:

    "curves":      {"x": "env_steps", "ys": ["episode_return", "kl_old"], "by": ["task", "label"],
                    "band": "sem", "logy": ["kl_old"], "title": null}
    "scores":      {"score": "episode_return", "by": "label", "task": "task",
                    "random": {"Pendulum-v1": -1200.0}, "x": "update"}
    "frontier":    {"kl": "kl", "rewards": ["gold", "proxy"], "by": "label", "color_by": "arm",
                    "final_only": true, "sqrt_kl": false, "x": "update"}
    "overopt":     {"kl": "kl", "gold": "gold", "proxy": "proxy", "reference_gold": null,
                    "reference_proxy": null, "reference_by": [], "by": ["arm"],
                    "forms": {"best of n": "bon", "*": "rl"}}
    "final_table": {"by": "label", "metrics": ["gold", "proxy", "kl"], "x": "update"}
    "peaks":       {"metric": "gold", "by": "label", "x": "update", "also": ["kl"]}

``curves`` draws one PNG per task when the table has more than one task. ``x`` (elsewhere) is the
column whose largest value marks a run's final evaluation; runs without it (best-of-n) keep every
row, and ``frontier`` and ``final_table`` then group by ``n`` as well, one point per n. With
``final_only`` false, ``frontier`` draws one point per evaluation (``by`` plus ``x``). In ``overopt``, a null reference reward
is the mean over the reference rows: update == 0, n == 1 or |KL| ≤ 1e-8; ``forms`` maps an arm to
'bon' or 'rl', with "*" the default (arms are looked up only when "arm" is one of ``by``).

The whole spec, and every column it names, is checked before anything is written: a bad flag, spec or
column prints one line and exits with status 2 (`experiments.cli`).
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from absl import flags

from experiments import cli
from kltrust import overoptimization, report
from kltrust.errors import ConfigError, did_you_mean, is_finite
from kltrust.metrics import write_text_atomic

_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "Sweep directory holding results.csv and "
                                 "sweep.json.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write report.md and the PNGs "
                               "(default: --sweep_dir).")

SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "curves": ("x", "ys", "by", "band", "logy", "title"),
    "scores": ("score", "by", "task", "random", "x"),
    "frontier": ("kl", "rewards", "by", "color_by", "final_only", "sqrt_kl", "x"),
    "overopt": ("kl", "gold", "proxy", "reference_gold", "reference_proxy", "reference_by", "by",
                "forms"),
    "final_table": ("by", "metrics", "x"),
    "peaks": ("metric", "by", "x", "also"),
}
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "curves": ("ys",), "scores": ("random",), "final_table": ("metrics",), "peaks": ("metric",),
}
# |KL| below this counts as the reference policy itself (exact KLs carry float rounding).
REFERENCE_KL_TOL = 1e-8


def validate_spec(spec: Mapping[str, object]) -> None:
    """Raises `ConfigError` (a ValueError) naming any unknown section or key (with a
    did-you-mean), a missing required key, or a value of a fixed set (``band``, ``forms``,
    ``random``, the flags) that is not allowed."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"report spec must be a dict, got {type(spec).__name__}")
    for section, item in spec.items():
        if section not in SECTION_KEYS:
            raise ConfigError(f"unknown report section {section!r}; "
                              f"{did_you_mean(section, SECTION_KEYS)}allowed: {sorted(SECTION_KEYS)}")
        if not isinstance(item, Mapping):
            raise ConfigError(f"report[{section!r}] must be a dict, got {type(item).__name__}")
        for key in item:
            if key not in SECTION_KEYS[section]:
                raise ConfigError(f"unknown key {key!r} in report[{section!r}]; "
                                  f"{did_you_mean(key, SECTION_KEYS[section])}allowed: "
                                  f"{list(SECTION_KEYS[section])}")
        for key in REQUIRED_KEYS.get(section, ()):
            if key not in item:
                raise ConfigError(f"report[{section!r}] needs the key {key!r}")
        _validate_values(section, item)


def _validate_values(section: str, item: Mapping) -> None:
    def refuse(key: str, allowed: str) -> None:
        raise ConfigError(f"report[{section!r}][{key!r}] = {item[key]!r}: must be {allowed}")

    if "band" in item and item["band"] not in report.BANDS:
        refuse("band", f"one of {report.BANDS}")
    for key in ("final_only", "sqrt_kl"):
        if key in item and not isinstance(item[key], bool):
            refuse(key, "true or false")
    if "logy" in item and not set(report.as_list(item["logy"])) <= set(report.as_list(item["ys"])):
        refuse("logy", f"a subset of ys = {report.as_list(item['ys'])}")
    if "forms" in item:
        forms = item["forms"]
        if not isinstance(forms, Mapping) or any(f not in overoptimization.FORMS
                                                 for f in forms.values()):
            refuse("forms", f"a dict of arm (or '*') -> one of {overoptimization.FORMS}")
    if "random" in item:
        random = item["random"]
        if not (random == "measure" or (isinstance(random, Mapping)
                                        and all(map(is_finite, random.values())))):
            refuse("random", "a dict of task -> finite random-policy score, or 'measure' (the "
                   "sweep program measures it)")
    for key in ("reference_gold", "reference_proxy"):
        if item.get(key) is not None and not is_finite(item[key]):
            refuse(key, "a finite number or null (the mean over the reference rows)")


def _columns(section: str, item: Mapping) -> list[str]:
    """The columns of the results table that ``section`` needs (as its code reads them)."""
    get = lambda key, default: report.as_list(item.get(key, default))  # noqa: E731
    if section == "curves":
        return [*get("x", "update"), *get("ys", ()), *get("by", ["label"])]
    if section == "scores":
        return [*get("score", "episode_return"), *get("task", "task"), *get("by", "label")]
    if section == "frontier":
        return [*get("kl", "kl"), *get("rewards", ["gold", "proxy"]), *get("by", "label"),
                *get("color_by", "arm")]
    if section == "overopt":
        return [*get("kl", "kl"), *get("gold", "gold"), *get("proxy", "proxy"),
                *get("by", ["arm"]), *get("reference_by", [])]
    if section == "peaks":
        return [*get("metric", ()), *get("by", "label"), *get("x", "update"), *get("also", ())]
    return [*get("by", "label"), *get("metrics", ())]


def check_columns(df: pd.DataFrame, spec: Mapping[str, Mapping]) -> None:
    """Raises `ConfigError` naming the first column a section of ``spec`` needs that ``df`` lacks
    (with a did-you-mean), so that a typo fails before any plot is written."""
    for section, item in spec.items():
        for col in _columns(section, item):
            if col and col not in df.columns:  # an empty name (e.g. proxy "") means none
                raise ConfigError(f"report[{section!r}]: column {col!r} is not in the results "
                                  f"table; {did_you_mean(col, df.columns)}columns: "
                                  f"{list(df.columns)}")


def _final(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """Final rows by ``x``; a table without ``x`` at all (e.g. only best-of-n) is all final."""
    return report.final(df, x) if x in df.columns else df


def _mean_pm(agg: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """Display table: the key columns, n_seeds, and "mean ± sem" per metric (just the mean for one seed)."""
    def cell(mean: float, sem: float) -> str:
        if not np.isfinite(mean):
            return "—"
        return f"{mean:.4g}" if not np.isfinite(sem) else f"{mean:.4g} ± {sem:.2g}"

    out = agg[[*keys, report.COUNT]].copy()
    for m in metrics:
        out[m] = [cell(a, b) for a, b in zip(agg[f"{m}_mean"], agg[f"{m}_sem"])]
    return out


def _per_n(df: pd.DataFrame, by: list[str]) -> list[str]:
    """``by`` plus best-of-n's ``n`` when the table has it: each n is its own policy, not a seed.

    Rows without n (training runs) form one NaN-n group, so they aggregate as before.
    """
    if "n" in df.columns and df["n"].notna().any() and "n" not in by:
        return [*by, "n"]
    return by


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "task"


def _curves(df: pd.DataFrame, item: Mapping, out_dir: pathlib.Path) -> str:
    x, ys = item.get("x", "update"), report.as_list(item["ys"])
    by = report.as_list(item.get("by", ["label"]))
    band, logy = item.get("band", "sem"), report.as_list(item.get("logy", ()))
    report.require_columns(df, [x, *ys, *by])
    per_task = "task" in df.columns and df["task"].fillna("").nunique() > 1
    parts = []
    if per_task:
        line_by = [b for b in by if b != "task"]
        for task, rows in df.groupby(df["task"].fillna(""), sort=True):
            name = f"curves_{_slug(task)}.png"
            report.learning_curves(rows, x, ys, line_by, out_dir / name, band=band,
                                   title=item.get("title") or task, logy=logy)
            parts.append(f"![{task}]({name})\n")
    else:
        report.learning_curves(df, x, ys, by, out_dir / "curves.png", band=band,
                               title=item.get("title"), logy=logy)
        parts.append("![curves](curves.png)\n")
    agg = report.seed_summary(_final(df, x), by, ys)
    table = report.markdown(_mean_pm(agg, by, ys))
    band_text = "min..max" if band == "minmax" else f"± {band}"
    return (f"## Learning curves\n\nSeed mean against `{x}`, band {band_text}. Final values "
            f"(mean ± sem over seeds):\n\n{table}\n" + "\n".join(parts))


def _scores(df: pd.DataFrame, item: Mapping, out_dir: pathlib.Path) -> str:
    score, task = item.get("score", "episode_return"), item.get("task", "task")
    by = report.as_list(item.get("by", "label"))
    rows = _final(df, item.get("x", "update"))
    table = report.normalised_scores(rows, score=score, by=by, task=task, random=item["random"])
    raw = report.seed_summary(rows.assign(**{task: rows[task].fillna("")}), [task, *by], [score])
    return (f"## Normalised scores\n\nFinal `{score}`, mean over seeds, normalised per task as "
            "(s − random) / (best − random): the best configuration scores 1, a random policy 0.\n\n"
            f"{report.markdown(table)}\nRandom-policy scores: "
            + ", ".join(f"{k} {v:.4g}" for k, v in item["random"].items())
            + f".\n\nRaw final `{score}` (mean ± sem over seeds):\n\n"
            f"{report.markdown(_mean_pm(raw, [task, *by], [score]))}")


def _frontier(df: pd.DataFrame, item: Mapping, out_dir: pathlib.Path) -> str:
    kl = item.get("kl", "kl")
    rewards = report.as_list(item.get("rewards", ["gold", "proxy"]))
    by, color_by = report.as_list(item.get("by", "label")), item.get("color_by", "arm")
    sqrt_kl, final_only = bool(item.get("sqrt_kl", False)), bool(item.get("final_only", True))
    x = item.get("x", "update")
    rows = _final(df, x) if final_only else df
    by = _per_n(rows, by)
    if not final_only and x in rows.columns:  # one point per evaluation, not one per config
        by = [*by, x]
    agg = report.frontier(rows, kl=kl, rewards=rewards, by=by, color_by=color_by,
                          path=out_dir / "frontier.png", sqrt_kl=sqrt_kl)
    keys = list(dict.fromkeys([*([color_by] if color_by else []), *by]))
    x_metrics = [kl, f"sqrt_{kl}"] if sqrt_kl else [kl]
    table = report.markdown(_mean_pm(agg, keys, [*x_metrics, *rewards]))
    which = "final evaluations" if final_only else "all evaluations"
    return (f"## Reward–KL frontier\n\n{which.capitalize()}, mean ± sem over seeds per "
            f"{', '.join(keys)}.\n\n{table}\n![frontier](frontier.png)\n")


def _reference_rows(df: pd.DataFrame, kl: str) -> pd.Series:
    mask = df[kl].abs() <= REFERENCE_KL_TOL
    if "update" in df.columns:
        mask |= df["update"] == 0
    if "n" in df.columns:
        mask |= df["n"] == 1
    return mask


def _reference_value(df: pd.DataFrame, mask: pd.Series, col: str, given: float | None) -> float:
    if given is not None:
        return float(given)
    value = df.loc[mask, col].mean()
    if not np.isfinite(value):
        raise ValueError(f"reference_{col} is null and there are no reference rows (update == 0, "
                         f"n == 1 or |kl| <= {REFERENCE_KL_TOL}) with a {col!r} value to take it from")
    return float(value)


def _as_tuple(key) -> tuple:
    """A pandas group key as a tuple (a single grouping column gives a scalar or a 1-tuple)."""
    return key if isinstance(key, tuple) else (key,)


def _overopt(df: pd.DataFrame, item: Mapping, out_dir: pathlib.Path) -> str:
    kl, gold, proxy = item.get("kl", "kl"), item.get("gold", "gold"), item.get("proxy", "proxy")
    by = report.as_list(item.get("by", ["arm"]))
    forms = dict(item.get("forms", {"*": "rl"}))
    report.require_columns(df, [kl, gold, *([proxy] if proxy else []), *by])
    for arm, form in forms.items():
        if form not in overoptimization.FORMS:
            raise ValueError(f"report['overopt']['forms'][{arm!r}] must be one of "
                             f"{overoptimization.FORMS}, got {form!r}")
    reference = _reference_rows(df, kl)
    d_col = f"sqrt_{kl}"
    # Exact KLs carry float rounding: a reference policy can come out at −1e−9.
    data = df.assign(**{d_col: np.sqrt(df[kl].clip(lower=0))})
    # Each pipeline (e.g. each proxy data size) has its own reference and proxy, so the reference
    # values are taken per group of ``reference_by`` columns.
    reference_by = report.as_list(item.get("reference_by", []))
    report.require_columns(df, reference_by)
    givens = {gold: item.get("reference_gold"), **({proxy: item.get("reference_proxy")}
                                                   if proxy else {})}
    gains = {col: f"{col}_gain" for col in givens}
    parts, refs = [], []
    pieces = data.groupby(reference_by, dropna=False, sort=True) if reference_by else [((), data)]
    for key, piece in pieces:
        values = {col: _reference_value(piece, reference.loc[piece.index], col, given)
                  for col, given in givens.items()}
        parts.append(piece.assign(**{gains[c]: piece[c] - v for c, v in values.items()}))
        where = ", ".join(f"{k}={v}" for k, v in zip(reference_by, tuple(_as_tuple(key))))
        refs.append((where, values))
    data = pd.concat(parts).loc[data.index]

    fits, rows = {}, []
    groups = data.groupby(by, dropna=False, sort=True) if by else [((), data)]
    for key, group in groups:
        key = tuple(key)
        labels = dict(zip(by, key))
        arm = labels.get("arm")
        form = forms.get(arm, forms.get("*")) if isinstance(arm, str) else forms.get("*")
        if form is None:
            raise ValueError(f"report['overopt']['forms'] has no form for {labels} and no '*' default")
        points = group.dropna(subset=[d_col, gains[gold]])
        row = {**labels, "form": form}
        try:
            result = overoptimization.fit(points[d_col].to_numpy(float),
                                          points[gains[gold]].to_numpy(float), form)
        except ValueError as e:  # a degenerate group should not sink the rest of the report
            rows.append({**row, "n": len(points), "note": str(e)})
            continue
        fits[(key, gains[gold])] = result
        d_star, r_star = overoptimization.peak(result)
        rows.append({**row, "alpha": result.alpha, "beta": result.beta, "r2": result.r2,
                     "rmse": result.rmse, "n": result.n, "d_peak": d_star,
                     "kl_peak": d_star**2 if math.isfinite(d_star) else math.inf,
                     f"{gold}_gain_peak": r_star})
    columns = [*by, "form", "alpha", "beta", "r2", "rmse", "n", "d_peak", "kl_peak",
               f"{gold}_gain_peak"] + (["note"] if any("note" in r for r in rows) else [])
    table = pd.DataFrame(rows).reindex(columns=columns)
    report.overoptimization_plot(data, d_col, list(gains.values()), by, fits,
                                 out_dir / "overopt.png")
    refs = "; ".join((f"{where}: " if where else "")
                     + ", ".join(f"{col} {ref:.4g}" for col, ref in values.items())
                     for where, values in refs)
    return (f"## Overoptimization (Gao et al. 2022)\n\nd = sqrt({kl}); rewards relative to the "
            f"reference ({refs}). Fits of {gold}: bon R = d(α − βd), rl R = d(α − β log d); "
            "the peak is the d maximising the fitted curve (inf: no peak).\n\n"
            f"{report.markdown(table)}\n![overoptimization](overopt.png)\n")


def _final_table(df: pd.DataFrame, item: Mapping, out_dir: pathlib.Path) -> str:
    by, metrics = report.as_list(item.get("by", "label")), report.as_list(item["metrics"])
    rows = _final(df, item.get("x", "update"))
    by = _per_n(rows, by)
    agg = report.seed_summary(rows, by, metrics)
    return ("## Final evaluation\n\nMean ± sem over seeds of each run's last evaluation.\n\n"
            f"{report.markdown(_mean_pm(agg, by, metrics))}")


def _peaks(df: pd.DataFrame, item: Mapping, out_dir: pathlib.Path) -> str:
    metric, x = item["metric"], item.get("x", "update")
    table = report.peaks(df, metric, item.get("by", "label"), x, item.get("also", ()))
    return (f"## Where {metric} peaks\n\nPer group, the seed-mean curve of {metric} against `{x}`: "
            f"its maximum, where it is reached, and how far it has fallen by the end.\n\n"
            f"{report.markdown(table)}\n")


_SECTIONS: dict[str, Callable[[pd.DataFrame, Mapping, pathlib.Path], str]] = {
    "curves": _curves, "scores": _scores, "frontier": _frontier, "overopt": _overopt,
    "final_table": _final_table, "peaks": _peaks,
}


def write_report(df: pd.DataFrame, spec: Mapping[str, Mapping], out_dir: pathlib.Path,
                 title: str) -> pathlib.Path:
    """Writes one section per ``spec`` entry (tables in ``report.md``, plots as PNGs beside it) to
    ``out_dir`` and returns the path of ``report.md``. The whole spec, and every column it needs,
    is checked before any output."""
    validate_spec(spec)
    check_columns(df, spec)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [_SECTIONS[name](df, item, out_dir) for name, item in spec.items()]
    path = out_dir / "report.md"
    write_text_atomic(path, f"# {title}\n\n" + "\n".join(sections))
    return path


def main(argv: Sequence[str]) -> None:
    del argv
    sweep_dir = pathlib.Path(_SWEEP_DIR.value)
    for name in ("sweep.json", "results.csv"):
        if not (sweep_dir / name).is_file():
            raise ConfigError(f"--sweep_dir = {str(sweep_dir)!r}: has no {name} (it must be the "
                              "--workdir of an experiments.sweep run).")
    try:
        config = json.loads((sweep_dir / "sweep.json").read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"--sweep_dir = {str(sweep_dir)!r}: sweep.json is not JSON ({error}).")
    if not config.get("report"):
        raise ConfigError(f"--sweep_dir = {str(sweep_dir)!r}: sweep.json has no 'report' entry: "
                          "nothing to report.")
    validate_spec(config["report"])
    df = report.load(sweep_dir / "results.csv")
    names = df["sweep"].dropna().unique() if "sweep" in df.columns else []
    title = config.get("name") or (names[0] if len(names) == 1 else sweep_dir.name)
    out_dir = pathlib.Path(_OUT_DIR.value) if _OUT_DIR.value else sweep_dir
    print(write_report(df, config["report"], out_dir, f"Sweep {title}"))


if __name__ == "__main__":
    cli.run(main)
