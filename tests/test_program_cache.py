"""The program cache (`kltrust.program_cache`): warm starts that load a run's compiled chunk and
initial state instead of tracing, initialising and compiling.

What is checked: the key changes with each thing the chunk or the state depends on (static,
seeds, a hyperparameter's value, the algorithm, a source file's content) and is the same for the
same inputs; that interactive code (``python -c``, as in a notebook) turns the cache off. And,
with separate processes of `experiments.train` (the failure guarded against, an
executable missing functions, shows only when another process loads it): after JAX's own cache
already holds the chunk (that executable must not be the one stored), a first run stores an entry
and a second loads it and writes byte-identical metrics; a damaged entry is reported in one line,
compiled again and replaced, and still gives the same metrics.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

import jax
import numpy as np
import pytest

import subprocs
from configs import ppo as ppo_configs
from kltrust import compile_cache, program_cache, sharding
from kltrust.errors import ConfigError
from kltrust.train import control_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/ppo.py:cartpole_clip", "--config.num_steps=16",
        "--config.total_timesteps=128", "--config.updates_per_chunk=2",
        "--config.num_minibatches=2", "--config.num_epochs=1"]


def _spec():
    config = ppo_configs.get_config("cartpole_clip")
    config.total_timesteps = config.num_envs * config.num_steps * config.updates_per_chunk
    return control_config.spec_from_config(config)


def _key(spec, seeds=(0,), mesh=None, hparams=None):
    seeds = np.asarray(seeds, np.int32)
    hparams = spec.hparams if hparams is None else hparams
    hp = jax.tree.map(lambda x: np.broadcast_to(x, (len(seeds),) + np.shape(x)), hparams)
    mesh = mesh or sharding.mesh_from_sizes(dict(spec.mesh))
    return program_cache.key(spec.algorithm, spec.static, mesh, seeds, hp)


def test_the_key_follows_what_the_program_and_state_depend_on():
    spec = _spec()
    base = _key(spec)
    assert _key(spec) == base  # deterministic
    lr = spec.hparams.learning_rate
    variants = {
        "static": _key(dataclasses.replace(spec, static=dataclasses.replace(
            spec.static, num_epochs=spec.static.num_epochs + 1))),
        "seed": _key(spec, seeds=(1,)),
        "two seeds": _key(spec, seeds=(0, 1)),
        "a hyperparameter's value": _key(spec, hparams=dataclasses.replace(
            spec.hparams, learning_rate=np.nextafter(np.float32(lr), np.float32(1)))),
        "the algorithm": program_cache.key(
            "trpo", spec.static, sharding.mesh_from_sizes(dict(spec.mesh)),
            np.zeros(1, np.int32),
            jax.tree.map(lambda x: np.broadcast_to(x, (1,) + np.shape(x)), spec.hparams)),
    }
    for what, other in variants.items():
        assert other != base, what
    assert len(set(variants.values())) == len(variants)


def test_the_key_follows_source_content_and_the_kltrust_sources_are_in_it(tmp_path):
    files = program_cache.source_files()
    names = {p.name for p in files}
    assert {"program_cache.py", "ppo.py", "loop.py"} <= names  # kltrust's own
    assert any(p.parts[-2:] == ("configs", "ppo.py") for p in files)  # imported from the repo
    assert not any("site-packages" in p.parts for p in files)  # versions stand for those
    component = tmp_path / "my_objective.py"
    component.write_text("BETA = 0.1\n")
    before = program_cache.digest_files([*files, component])
    component.write_text("BETA = 0.2\n")
    assert program_cache.digest_files([*files, component]) != before


def test_the_environment_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(program_cache.SWITCH, raising=False)
    assert program_cache.switched_on()
    monkeypatch.setenv(program_cache.SWITCH, "on")
    assert program_cache.switched_on()
    monkeypatch.setenv(program_cache.SWITCH, "off")
    assert not program_cache.switched_on() and program_cache.directory() is None
    monkeypatch.setenv(program_cache.SWITCH, "0")
    with pytest.raises(ConfigError, match=r"^KLTRUST_PROGRAM_CACHE='0': must be 'on' or 'off'$"):
        program_cache.switched_on()
    with pytest.raises(ConfigError, match=r"^KLTRUST_PROGRAM_CACHE='0'"):
        compile_cache.configure(str(tmp_path))  # refused before JAX's cache is moved there


WHERE = """
import sys
from kltrust import compile_cache, program_cache
if sys.argv[1] != "off":
    compile_cache.enable(sys.argv[1])
print(program_cache.directory())
"""


def test_a_script_gets_the_directory_and_interactive_code_or_no_cache_none(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(WHERE)
    cache = tmp_path / "xla"
    outputs = {}
    for how, command in (("script", [str(script), str(cache)]), ("-c", ["-c", WHERE, str(cache)]),
                         ("no cache", [str(script), "off"])):
        result = subprocs.run([sys.executable, *command], cwd=ROOT, timeout=300, env=_env())
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[how] = result.stdout.strip().splitlines()[-1]
    assert outputs == {"script": str(cache / program_cache.SUBDIR), "-c": "None",
                       "no cache": "None"}


def _env() -> dict[str, str]:
    """A child's environment with the program cache on and JAX's cache as the child sets it."""
    return subprocs.child_env(drop=[program_cache.SWITCH, "JAX_COMPILATION_CACHE_DIR"])


def _train(workdir: pathlib.Path, cache: pathlib.Path):
    result = subprocs.run([sys.executable, "-m", "experiments.train", f"--workdir={workdir}",
                           f"--compilation_cache={cache}", *ARGS], cwd=ROOT, timeout=600,
                           env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# The same run with JAX's persistent cache on and the program cache off: fills JAX's cache only.
FILL_JAX_CACHE = """
import sys
from absl import flags
from kltrust import compile_cache, program_cache
from experiments import train
compile_cache.enable(sys.argv[1])
program_cache.directory = lambda: None
flags.FLAGS(["train", *sys.argv[2:]])
train.main([])
"""


def test_a_second_process_loads_the_run_and_writes_the_same_metrics(tmp_path):
    cache = tmp_path / "xla"
    filled = subprocs.run([sys.executable, "-c", FILL_JAX_CACHE, str(cache),
                           f"--workdir={tmp_path / 'jax_only'}", *ARGS], cwd=ROOT, timeout=600,
                           env=_env())
    assert filled.returncode == 0, filled.stderr[-3000:]
    assert not (cache / program_cache.SUBDIR).exists() and any(cache.glob("*-cache"))

    first = _train(tmp_path / "a", cache)
    assert "loaded from the program cache" not in first.stdout
    entries = list((cache / program_cache.SUBDIR).iterdir())
    assert len(entries) == 1 and {p.name for p in entries[0].iterdir()} == {
        "program.pkl", "state.pkl"}

    second = _train(tmp_path / "b", cache)
    assert "(loaded from the program cache)" in second.stdout, second.stdout
    metrics = (tmp_path / "jax_only" / "metrics.jsonl").read_bytes()
    assert metrics and (tmp_path / "a" / "metrics.jsonl").read_bytes() == metrics
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes() == metrics

    (entries[0] / "program.pkl").write_bytes(b"damaged")
    third = _train(tmp_path / "c", cache)
    assert "loaded from the program cache" not in third.stdout
    assert f"program cache entry {entries[0]} unreadable" in third.stderr, third.stderr[-2000:]
    assert (tmp_path / "c" / "metrics.jsonl").read_bytes() == metrics
    assert (entries[0] / "program.pkl").read_bytes() != b"damaged"  # replaced
    assert [p.name for p in (cache / program_cache.SUBDIR).iterdir()] == [entries[0].name]
