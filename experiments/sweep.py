"""Run a sweep (grid × seeds, grouped into vmapped programs), then write its report.

    python -m experiments.sweep --sweep=configs/sweeps/ppo_table1.py --workdir=runs/ppo_table1 \
        [--sweep.num_seeds=2] [--set=total_timesteps=102400] [--no_group] [--overwrite]

Running the same command again resumes: finished runs are skipped. ``--set PATH=VALUE`` (repeatable)
overrides a field of every run's config. ``--no_group`` runs every run alone (to time what grouping
saves). Writes ``results.csv``, ``timing.json``, ``runs/*/`` and ``report.md`` with its plots (see
`kltrust.sweep` and `experiments.report`) under ``--workdir``. A bad flag, sweep or run config
(every run's is built and checked first) prints one line and exits with status 2 before anything is
compiled or written (`experiments.cli`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from absl import app, flags, logging

from experiments import cli, distributed
from kltrust import processes
from kltrust import sweep as sweeps

_SWEEP = cli.config_file_flag("sweep", None, "Sweep config (configs/sweeps/NAME.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default runs/SWEEP_NAME).")
_SET = flags.DEFINE_multi_string("set", [], "PATH=VALUE applied to every run's config.")
_GROUP = flags.DEFINE_bool("group", True, "Run groups of runs as one vmapped program each.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Re-run runs whose directory holds another config.")
_REPORT = flags.DEFINE_bool("report", True, "Write report.md and plots after the sweep.")


def parse_sets(items: Sequence[str]) -> dict[str, object]:
    """``--set PATH=VALUE`` items (`kltrust.sweep.parse_overrides`), with ``inf``, ``-inf`` and
    ``nan`` read as floats (Python literals have none), so that the runs' checks name them."""
    out = sweeps.parse_overrides(items)
    special = ("inf", "+inf", "-inf", "nan", "infinity", "+infinity", "-infinity")
    return {path: float(value) if isinstance(value, str) and value.strip().lower() in special
            else value for path, value in out.items()}


def check_sets(sweep, overrides: dict[str, object]) -> None:
    """Refuses a ``--set`` path that is not a field of every arm's base config (a `ConfigError`
    with a did-you-mean); `kltrust.sweep.expand` checks the values."""
    for arm in sweep.arms:
        tasks = tuple(sweep.tasks) if "{task}" in arm["base"] else ("",)
        for task in tasks:
            base = sweeps.load_preset(arm["base"].format(task=task))
            for path, value in overrides.items():
                _, message = cli.lookup(base, "config", path)
                if message is not None:
                    raise cli.ConfigError(f"--set {path}={value!r}: {message.rstrip('.')} (in arm "
                                          f"{arm['name']!r}, base {arm['base'].format(task=task)}).")


def random_scores(runs: Sequence[sweeps.Run], num_episodes: int = 100) -> dict[str, float]:
    """Each task's random-policy score (the zero of normalised scores), measured in its env."""
    from kltrust.train import common

    env_names = {run.task: run.config.env_name for run in runs}
    return {task: common.random_policy_score(env, num_episodes) for task, env in env_names.items()}


def main(argv: Sequence[str]) -> None:
    del argv
    sweep = _SWEEP.value
    if sweep is None:
        raise app.UsageError("--sweep: required, not given (a sweep config, e.g. "
                             "--sweep=configs/sweeps/demo.py).")
    with cli.config_errors():  # bad input: one line, exit status 2, before anything runs
        distributed.initialize()
        overrides = parse_sets(_SET.value)
        sweeps.validate_sweep(sweep)
        check_sets(sweep, overrides)
        sweeps.expand(sweep, overrides)  # every run's config, built and checked (run_sweep again)
        spec = json.loads(sweep.to_json_best_effort()).get("report")
        if _REPORT.value and spec:
            from experiments import report

            report.validate_spec(spec)  # a typo in the report must not wait for the sweep
    logging.set_verbosity(logging.ERROR)  # TFDS warns on every custom data configuration
    workdir = pathlib.Path(_WORKDIR.value or f"runs/{sweep.name}")
    result = sweeps.run_sweep(sweep, workdir, overrides=overrides, group_runs=_GROUP.value,
                              overwrite=_OVERWRITE.value)
    runs_now = sum(g["runs"] for g in result.groups)
    print(f"{sweep.name}: {runs_now} runs in {len(result.groups)} programs, {result.skipped} "
          f"already finished; wall {result.wall_seconds:.1f} s")
    print(f"table: {workdir / 'results.csv'}  timing: {workdir / 'timing.json'}")
    if _REPORT.value and spec and processes.is_primary():
        from kltrust import report as tables

        if spec.get("scores", {}).get("random") == "measure":
            spec["scores"]["random"] = random_scores(result.runs)

        path = report.write_report(tables.load(workdir / "results.csv"), spec, workdir,
                                   title=sweep.get("description", sweep.name))
        print(pathlib.Path(path).read_text())
        print(f"report: {path}  plots: {', '.join(str(p) for p in sorted(workdir.glob('*.png')))}")


if __name__ == "__main__":
    cli.run(main)
