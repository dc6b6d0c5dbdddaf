"""The workdir claim (`kltrust.workdir`): refuse, resume, overwrite, reuse, and what each leaves on
disk. Single process, so the agreement steps are no-ops; tests/test_multiprocess.py covers those."""

from __future__ import annotations

import pytest

from kltrust import workdir as wd
from kltrust.errors import ConfigError

CONFIG = '{\n  "beta": 0.1\n}\n'
OTHER = '{\n  "beta": 0.2\n}\n'
RULES = wd.Rules(different="workdir {path} holds a run of a different config; pass --overwrite.",
                 outputs=("metrics.jsonl", "checkpoints"))


def _listing(path):
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))


def _earlier_run(path, config=CONFIG):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(config)
    (path / "metrics.jsonl").write_text('{"update": 1}\n')
    (path / "checkpoints" / "2").mkdir(parents=True)
    (path / "notes.txt").write_text("the user's own file")


def test_an_empty_or_missing_directory_is_claimed_fresh_and_the_config_recorded(tmp_path):
    out = tmp_path / "new" / "run"
    assert wd.claim_workdir("t", out, CONFIG, RULES) is wd.Claim.FRESH
    assert _listing(out) == ["config.json"]
    assert (out / "config.json").read_text() == CONFIG


def test_outputs_of_another_config_are_refused_and_left_untouched(tmp_path):
    _earlier_run(tmp_path, OTHER)
    before = {p: (tmp_path / p).read_bytes() for p in _listing(tmp_path)
              if (tmp_path / p).is_file()}
    with pytest.raises(ConfigError, match=f"^workdir {tmp_path} holds a run of a different"):
        wd.claim_workdir("t", tmp_path, CONFIG, RULES)
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert _listing(tmp_path) == ["checkpoints", "checkpoints/2", "config.json", "metrics.jsonl",
                                  "notes.txt"]


def test_outputs_with_no_recorded_config_are_refused(tmp_path):
    _earlier_run(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ConfigError, match="different config"):
        wd.claim_workdir("t", tmp_path, CONFIG, RULES)
    assert not (tmp_path / "config.json").exists()


def test_outputs_of_this_config_resume_with_everything_kept(tmp_path):
    _earlier_run(tmp_path)
    # The same JSON value with other spacing is the same config.
    assert wd.claim_workdir("t", tmp_path, '{"beta": 0.1}', RULES) is wd.Claim.RESUME
    assert _listing(tmp_path) == ["checkpoints", "checkpoints/2", "config.json", "metrics.jsonl",
                                  "notes.txt"]
    assert (tmp_path / "config.json").read_text() == CONFIG  # not rewritten


def test_overwrite_clears_only_the_outputs_and_records_the_new_config(tmp_path):
    _earlier_run(tmp_path, OTHER)
    assert wd.claim_workdir("t", tmp_path, CONFIG, RULES, overwrite=True) is wd.Claim.FRESH
    assert _listing(tmp_path) == ["config.json", "notes.txt"]  # not ours: kept
    assert (tmp_path / "config.json").read_text() == CONFIG


def test_another_config_with_nothing_to_lose_is_replaced(tmp_path):
    (tmp_path / "config.json").write_text(OTHER)
    assert wd.claim_workdir("t", tmp_path, CONFIG, RULES) is wd.Claim.FRESH
    assert (tmp_path / "config.json").read_text() == CONFIG


def test_finished_runs_are_reused_or_refused_and_unresumable_ones_start_again(tmp_path):
    stage = wd.Rules(different="{path}: another config", config_file="stage_config.json",
                     finished=lambda p: (p / "params.msgpack").exists(), resumable=False)
    (tmp_path / "stage_config.json").write_text(CONFIG)
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    # Unfinished and not resumable: a fresh start clears everything but the config file.
    assert wd.claim_workdir("t", tmp_path, CONFIG, stage) is wd.Claim.FRESH
    assert _listing(tmp_path) == ["stage_config.json"]
    (tmp_path / "params.msgpack").write_bytes(b"done")
    assert wd.claim_workdir("t", tmp_path, CONFIG, stage) is wd.Claim.DONE
    assert _listing(tmp_path) == ["params.msgpack", "stage_config.json"]
    with pytest.raises(ConfigError, match="another config"):
        wd.decide(tmp_path, OTHER, stage)
    refusing = wd.Rules(different="x", config_file="stage_config.json", finished=stage.finished,
                        refuse_finished="{path} already holds results")
    with pytest.raises(ConfigError, match=f"^{tmp_path} already holds results$"):
        wd.claim_workdir("t", tmp_path, CONFIG, refusing)
    assert wd.claim_workdir("t", tmp_path, CONFIG, refusing, overwrite=True) is wd.Claim.FRESH
    assert _listing(tmp_path) == ["stage_config.json"]
