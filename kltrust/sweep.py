"""Sweeps: a grid over config fields × seeds, run as few compiled programs as the grid allows.

A sweep config (``configs/sweeps/*.py``) lists *arms*. Each arm is a base preset, fixed settings
(``set``) and a grid (``grid``: dotted config path → values, crossed with each other)::

    sweep.arms = [dict(name="clip", base="configs/ppo.py:{task}_clip",
                       grid={"hparams.clip_eps": (0.1, 0.2, 0.3)}), ...]

`expand` turns a sweep into runs (arm × task × grid point × seed), each a full config of its family.
Families (control, token RLHF, bandit: `kltrust.families`) say how a config of theirs is checked
and run. `group` puts runs that differ only in their family's array subtree (``hparams`` for control
and the bandit, ``rl.hparams`` for token RLHF) and seed into one group: one compiled program, vmapped over the
group's runs. `run_sweep` executes the groups in order, skips runs already finished in the output
directory, and assembles one long table (``results.csv``: one row per run × evaluation).

Output directory::

    sweep.json            the sweep config
    runs/RUN_ID/          config.json, rows.json (written last: the run is finished), eval.jsonl
                          (token runs: every evaluation with decoded samples)
    results.csv           every finished run of this sweep, one row per evaluation
    timing.json           per group: runs, compile and run seconds
    pipelines/HASH/       token sweeps: data, reference and proxy, shared by every run needing them
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import itertools
import json
import pathlib
import re
import time
from collections.abc import Sequence
from typing import Any

import ml_collections

from kltrust import families, processes, tracking
from kltrust import workdir as workdirs
from kltrust.errors import ConfigError
from kltrust.metrics import rows_to_csv, write_text_atomic

SWEEP_KEYS = ("name", "description", "num_seeds", "seed", "tasks", "arms", "overrides",
              "record_every", "group_runs", "report")
ARM_KEYS = ("name", "base", "set", "grid")


# ---------------------------------------------------------------- expansion and grouping


@dataclasses.dataclass
class Run:
    """One run of a sweep: a full config of its family, plus where it sits in the grid."""

    arm: str
    task: str
    swept: dict[str, Any]  # dotted path -> value, the grid point
    seed: int
    config: ml_collections.ConfigDict
    family: Any
    run_id: str
    label: str
    group: int = -1

    def static_key(self) -> str:
        """Equal for runs that one compiled program can run side by side."""
        if hasattr(self.family, "static_key"):
            return self.family.name + self.family.static_key(self.config)
        config = self.config.to_dict()
        node = config
        *parents, leaf = self.family.dynamic.split(".")
        for part in parents:
            node = node[part]
        node.pop(leaf)
        for key in self.family.ignored:
            config.pop(key, None)
        return self.family.name + json.dumps(config, sort_keys=True, default=str)

    def record(self) -> dict:
        """What the run directory's config.json holds (compared on resume): the config less its
        ``logging`` options, as a run's own workdir claim (`kltrust.tracking.identity_json`)."""
        return {"arm": self.arm, "task": self.task, "seed": self.seed,
                "swept": {k: _jsonable(v) for k, v in self.swept.items()},
                "config": json.loads(tracking.identity_json(self.config))}


def load_preset(spec: str) -> ml_collections.ConfigDict:
    """``FILE.py:PRESET`` (or ``FILE.py`` for its default) → that config file's get_config."""
    path, _, preset = spec.partition(":")
    if not path.endswith(".py") or not pathlib.Path(path).is_file():
        raise ValueError(f"base {spec!r}: must be FILE.py:PRESET with an existing config file.")
    module_spec = importlib.util.spec_from_file_location(f"kltrust_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def set_field(config: ml_collections.ConfigDict, path: str, value: Any, where: str) -> None:
    """Sets a dotted ``path`` that must already exist in ``config``, with a clear error if not."""
    node = config
    *parents, leaf = path.split(".")
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ValueError(f"{where}: config has no field {'.'.join(parents[:i + 1])!r} "
                             f"(setting {path!r}).")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ValueError(f"{where}: config has no field {path!r}.")
    if isinstance(value, list):
        value = tuple(value)
    try:
        node[leaf] = value
    except TypeError as error:
        raise ValueError(f"{where}: {path} = {value!r} has the wrong type ({error}).") from None


def validate_sweep(sweep: ml_collections.ConfigDict) -> None:
    """Checks the sweep's own keys (the runs' configs are checked by `expand`)."""
    unknown = sorted(set(sweep.keys()) - set(SWEEP_KEYS))
    if unknown:
        raise ValueError(f"sweep.{unknown[0]}: unknown key; allowed keys: {SWEEP_KEYS}.")
    for key in ("name", "arms"):
        if key not in sweep:
            raise ValueError(f"sweep.{key}: required.")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", sweep.name):
        raise ValueError(f"sweep.name = {sweep.name!r}: must be letters, digits, '_', '.', '-'.")
    num_seeds = sweep.get("num_seeds", 1)
    if not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"sweep.num_seeds = {num_seeds!r}: must be an integer >= 1.")
    record_every = sweep.get("record_every", 1)
    if not isinstance(record_every, int) or record_every < 1:
        raise ValueError(f"sweep.record_every = {record_every!r}: must be an integer >= 1.")
    if not sweep.arms:
        raise ValueError("sweep.arms: must list at least one arm.")
    names = [arm.get("name") for arm in sweep.arms]
    for i, arm in enumerate(sweep.arms):
        where = f"sweep.arms[{i}]"
        bad = sorted(set(arm) - set(ARM_KEYS))
        if bad:
            raise ValueError(f"{where}.{bad[0]}: unknown key; allowed keys: {ARM_KEYS}.")
        if not arm.get("name") or not arm.get("base"):
            raise ValueError(f"{where}: needs a 'name' and a 'base' (FILE.py:PRESET).")
        if names.count(arm["name"]) > 1:
            raise ValueError(f"{where}.name = {arm['name']!r}: arm names must be unique.")
        if "{task}" in arm["base"] and not sweep.get("tasks"):
            raise ValueError(f"{where}.base = {arm['base']!r} uses {{task}} but sweep.tasks is "
                             "empty.")
        for path, values in dict(arm.get("grid") or {}).items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"{where}.grid[{path!r}] = {values!r}: must be a non-empty "
                                 "list of values.")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=0.1", "c=(1, 2)"]`` → {"a.b": 0.1, "c": (1, 2)} (``--set``); strings may go
    unquoted."""
    out = {}
    for item in items:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--set {item!r}: must be PATH=VALUE.")
        try:
            out[path] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[path] = text
    return out


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings → {dotted path: leaf} (``sweep.overrides`` nests; ConfigDict keys hold no
    dots)."""
    if not hasattr(tree, "keys"):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key in tree.keys():
        flat.update(_flatten(tree[key], f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in flat.items()}


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "-".join(_format(v) for v in value)
    return str(value)


def _short_names(paths: Sequence[str]) -> dict[str, str]:
    """The last path component where that is unambiguous, else the whole path."""
    lasts = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (last if lasts.count(last) == 1 else p) for p, last in zip(paths, lasts)}


def expand(sweep: ml_collections.ConfigDict, overrides: dict[str, Any] | None = None) -> list[Run]:
    """Every run of ``sweep`` with its config built and validated (nothing is compiled).

    ``overrides`` (dotted path → value) apply to every run after the sweep's own ``overrides``
    and before each arm's ``set`` and grid.
    """
    validate_sweep(sweep)
    common = _flatten(sweep.get("overrides") or {})
    common.update(overrides or {})
    seeds = range(sweep.get("seed", 0), sweep.get("seed", 0) + sweep.get("num_seeds", 1))
    runs: list[Run] = []
    for i, arm in enumerate(sweep.arms):
        where = f"sweep.arms[{i}] ({arm['name']})"
        tasks = tuple(sweep.tasks) if "{task}" in arm["base"] else ("",)
        grid = dict(arm.get("grid") or {})
        short = _short_names(list(grid))
        for task in tasks:
            base = load_preset(arm["base"].format(task=task))
            family = families.of(base)
            for path, value in common.items():
                set_field(base, path, value, f"override {path}")
            for path, value in dict(arm.get("set") or {}).items():
                set_field(base, path, value, f"{where}.set")
            for point in itertools.product(*grid.values()):
                swept = dict(zip(grid, point))
                config = copy.deepcopy(base)
                for path, value in swept.items():
                    set_field(config, path, value, f"{where}.grid")
                if family.shared_seed:
                    config.seed = sweep.get("seed", 0)  # the shared prerequisites' seed
                    config.name = arm["name"]
                config.num_seeds = 1
                try:
                    family.validate(config)
                except ValueError as error:
                    raise ValueError(f"{where}, grid point {swept}: {error}") from None
                values = ", ".join(f"{short[p]}={_format(v)}" for p, v in swept.items())
                label = f"{arm['name']} {values}".strip()
                for seed in seeds:
                    run_config = copy.deepcopy(config)
                    if not family.shared_seed:
                        run_config.seed = seed
                    parts = [task, arm["name"]] + [f"{short[p]}={_format(v)}"
                                                   for p, v in swept.items()] + [f"seed{seed}"]
                    run_id = re.sub(r"[^A-Za-z0-9._=-]+", "_", "__".join(p for p in parts if p))
                    runs.append(Run(arm["name"], task, swept, seed, run_config, family, run_id,
                                    label))
    ids = [r.run_id for r in runs]
    duplicated = next((i for i in ids if ids.count(i) > 1), None)
    if duplicated:
        raise ValueError(f"sweep: two runs would share the directory {duplicated!r}; give their "
                         "arms different names or grid values.")
    return runs


def group(runs: Sequence[Run], group_runs: bool = True) -> list[list[Run]]:
    """Runs with equal static parts, in order of first appearance; one group per run if
    ``group_runs`` is off (to time a sweep run one by one). Sets each run's ``group``."""
    groups: dict[str, list[Run]] = {}
    for i, run in enumerate(runs):
        key = run.static_key() if group_runs else str(i)
        groups.setdefault(key, []).append(run)
    for g, members in enumerate(groups.values()):
        for run in members:
            run.group = g
    return list(groups.values())


# ---------------------------------------------------------------- execution


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _run_dir(root: pathlib.Path, run: Run) -> pathlib.Path:
    return root / "runs" / run.run_id


# A run directory is finished once rows.json is written (last); an unfinished one has nothing to
# keep and runs again from the start.
RUN_RULES = workdirs.Rules(
    different="{path} holds a run of a different config; use another --workdir or pass "
              "--overwrite to replace it.",
    outputs=("rows.json", "eval.jsonl"), finished=lambda d: (d / "rows.json").exists(),
    resumable=False)


def _record_text(run: Run) -> str:
    return json.dumps(run.record(), indent=1) + "\n"


def is_finished(root: pathlib.Path, run: Run, overwrite: bool = False) -> bool:
    """True if ``run`` finished under ``root`` with the same config. Finished results of a
    different config in its directory are refused unless ``overwrite``, which replaces only those
    (a finished run of the same config is still skipped); an unfinished run holds nothing to lose
    and is simply run again."""
    try:
        claim = workdirs.decide(_run_dir(root, run), _record_text(run), RUN_RULES)
    except ConfigError:
        if overwrite:
            return False
        raise
    return claim is workdirs.Claim.DONE


def _write_run(root: pathlib.Path, run: Run, rows: list[dict]) -> None:
    directory = _run_dir(root, run)
    directory.mkdir(parents=True, exist_ok=True)
    if any(_is_samples(row) for row in rows):
        write_text_atomic(directory / "eval.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    table_rows = [_table_row(row) for row in rows]
    write_text_atomic(directory / "rows.json", json.dumps(table_rows))  # last: marks it finished


def _prepare_run(root: pathlib.Path, run: Run) -> None:
    """Process 0 claims an unfinished run's directory: earlier rows removed, config recorded."""
    workdirs.take(_run_dir(root, run), _record_text(run), RUN_RULES, workdirs.Claim.FRESH)


def table(root: pathlib.Path, sweep_name: str, runs: Sequence[Run]) -> list[dict]:
    """The long results table of every finished run in ``runs`` (one row per evaluation)."""
    rows = []
    for run in runs:
        path = _run_dir(root, run) / "rows.json"
        if not path.exists():
            continue
        identity = {"sweep": sweep_name, "arm": run.arm, "task": run.task, "label": run.label,
                    "run": run.run_id, "group": run.group, "seed": run.seed}
        swept = {k: _format(v) if isinstance(v, (tuple, list)) else v
                 for k, v in run.swept.items()}
        rows += [{**identity, **swept, **_table_row(row)} for row in json.loads(path.read_text())]
    return rows


def _is_samples(row: dict) -> bool:
    """Whether an evaluation row holds decoded samples (lists of text: ``samples``, and
    ``samples_dD`` per prompt domain), which go to eval.jsonl, not the table."""
    return any(isinstance(v, list) for v in row.values())


def _table_row(row: dict) -> dict:
    """A row of the results table: its numbers, without samples, ``index`` and ``seed``."""
    return {k: v for k, v in row.items()
            if k not in ("index", "seed") and not isinstance(v, list)}


@dataclasses.dataclass
class SweepResult:
    runs: list[Run]  # every run of the sweep, finished before or now
    rows: list[dict]  # the results table
    groups: list[dict]  # per group run now: size, compile and run seconds
    skipped: int  # runs found finished
    wall_seconds: float


def run_sweep(sweep: ml_collections.ConfigDict, root: str | pathlib.Path, *,
              overrides: dict[str, Any] | None = None, group_runs: bool | None = None,
              overwrite: bool = False, progress: bool = True) -> SweepResult:
    """Expands, validates and groups ``sweep``, then runs every unfinished group under ``root``.

    Finished runs (same config, ``rows.json`` present) are skipped, so an interrupted sweep resumes
    by running the same command again; a run directory holding a different config is refused
    unless ``overwrite``. Everything is checked before anything is compiled.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    root = pathlib.Path(root)
    runs = expand(sweep, overrides)
    groups = group(runs, sweep.get("group_runs", True) if group_runs is None else group_runs)
    # Across processes (a shared workdir, as orbax needs too) every process decides what to run
    # from the files it sees and the processes agree on it, before process 0, the only writer,
    # changes any of them.
    unfinished = processes.claim(
        "sweep.todo",
        lambda: [[r.run_id for r in members if not is_finished(root, r, overwrite)]
                 for members in groups], root)
    todo = [[r for r in members if r.run_id in ids] for members, ids in zip(groups, unfinished)]
    skipped = len(runs) - sum(map(len, todo))
    primary = processes.is_primary()
    if primary:
        root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(root / "sweep.json", sweep.to_json_best_effort(indent=1, sort_keys=True))
    timing_path = root / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    total = sum(r.family.units(r.config) for members in todo for r in members)
    bar = tqdm(total=total, unit="update", disable=not (progress and primary), desc=sweep.name)
    done_now = []
    for members in todo:
        if not members:
            continue
        bar.set_postfix_str(f"group {members[0].group}: {members[0].label} ×{len(members)}")
        if primary:
            for run in members:
                _prepare_run(root, run)
        rows, seconds = members[0].family.run_group(members, root, sweep.get("record_every", 1),
                                                    bar.update)
        entry = {"runs": len(members), "first": members[0].run_id, **seconds}
        done_now.append(entry)
        if primary:
            for run, run_rows in zip(members, rows):
                _write_run(root, run, run_rows)
            timing[str(members[0].group)] = entry
            write_text_atomic(timing_path, json.dumps(timing, indent=1))
            write_text_atomic(root / "results.csv", rows_to_csv(table(root, sweep.name, runs)))
    bar.close()
    processes.sync("sweep.done")
    rows = table(root, sweep.name, runs)
    if primary:
        write_text_atomic(root / "results.csv", rows_to_csv(rows))
    return SweepResult(runs, rows, done_now, skipped, time.perf_counter() - start)
