"""The real-model program (`kltrust.train.real_rlhf`, configs/real.py, experiments/real_rlhf) on a
tiny random llama with a word-level tokenizer (the same code path as SmolLM2: only the loaded
weights and the tokenizer differ; `run(..., stack=)` injects them).

What holds:
  * every preset of configs/real.py validates; a bad value is a one-line `ConfigError` naming the
    key, and the CLI exits with status 2 before any model is loaded;
  * the reference pairs are labelled by the gold: each pair's stored gold equals VADER recomputed
    here on the decoded response; the same seed gives the same pairs, bit for bit;
  * the proxy's head is fitted on the pairs and its accuracies are recorded; a root whose stages
    were made with other settings is refused (ConfigError) and nothing in it is overwritten;
  * GRPO and PPO (value head over LoRA) run: the evaluation before any update has exact KL 0.0
    (LoRA B = 0 and the reference is the base: the same logits bit for bit), later ones > 0; the
    adapters are saved without the base; the perplexity recorded for the reference equals
    `perplexity` recomputed here;
  * best-of-n: n = 1 is the reference (KL 0), larger n record log n − (n − 1)/n;
  * the KL guard (off by default; token_config's keys and checks): a run over budget goes back to
    its last passing checkpoint's state, bit for bit, with β × kl_backoff, an events.jsonl row,
    and a resume from the checkpoint after it ends the same.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from word_tokenizer import WordTokenizer

from configs import real as real_configs
from kltrust.errors import ConfigError
from kltrust.models import pretrained
from kltrust.models.pretrained.text import HELD_OUT_ENGLISH, perplexity
from kltrust.models.trunk_reward import TrunkReward
from kltrust.tasks.sentiment import SentimentTask
from kltrust.tasks.sentiment.gold import vader
from kltrust.train import kl_guard, real_config, real_rlhf

PROMPT_LEN, RESPONSE_LEN = 6, 5


def _stack(pooling: str = "mean") -> real_rlhf.Stack:
    tokenizer = WordTokenizer()
    task = SentimentTask.create(tokenizer, prompt_len=PROMPT_LEN, response_len=RESPONSE_LEN)
    base = dataclasses.replace(
        pretrained.tiny("llama", vocab_size=tokenizer.vocab_size, max_len=PROMPT_LEN + RESPONSE_LEN),
        name="tiny-llama", tokenizer=tokenizer)
    return real_rlhf.Stack(base, task, TrunkReward(base, pooling))


def _config(preset: str, **rl):
    c = real_configs.get_config(preset)
    c.pairs.update(num_train=24, num_test=8, batch_size=8)
    c.rm.update(steps=100, l2_grid=(0.1, 10.0), cv_folds=2)
    c.task.num_eval_prompts = 8
    c.rl.update(dict(num_updates=2, updates_per_eval=1, **rl))
    if c.rl.method in ("grpo", "rloo"):
        c.rl.update(batch_prompts=2, group_size=2)
    elif c.rl.method == "ppo":
        c.rl.update(batch_prompts=4, minibatches=1, epochs=1)
    return c


@pytest.mark.parametrize("preset", list(real_configs.PRESETS) + ["grpo_gpu", "ppo_gpu"]
                         + list(real_configs.VARIANTS))
def test_every_preset_validates(preset):
    spec = real_config.spec_from_config(real_configs.get_config(preset))
    assert spec.name == preset and spec.static.policy is None


@pytest.mark.parametrize("key, value, needle", [
    ("model.lora_rank", 0, "config.model.lora_rank = 0"),
    ("model.name", "gpt2", "config.model.name = 'gpt2'"),
    ("pairs.label_noise", 0.5, "config.pairs.label_noise = 0.5"),
    ("rm.pooling", "max", "config.rm.pooling = 'max'"),
    ("rl.kl_placement", "reward", "config.rl.kl_placement = 'reward'"),  # dpo has no reward KL
    # the KL guard's keys: token_config's checks
    ("guards.max_sequence_kl", -1.0,
     "config.guards.max_sequence_kl = -1.0: must be finite and >= 0"),
    ("guards.kl_backoff", 1.0, "config.guards.kl_backoff = 1.0: must be finite and > 1"),
    ("guards.max_rollbacks", -1, "config.guards.max_rollbacks = -1: must be an integer >= 0"),
])
def test_bad_values_are_one_line_errors_naming_the_key(key, value, needle):
    config = real_configs.get_config("dpo")
    node, leaf = config, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(ConfigError) as err:
        real_config.spec_from_config(config)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("flag, needle", [
    ("--config.model.lora_rank=0", "config.model.lora_rank = 0"),
    ("--config.guards.max_sequence_kl=nan", "config.guards.max_sequence_kl = nan: must be finite"),
])
def test_cli_exits_2_before_loading_anything(flag, needle, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.real_rlhf", "--config=configs/real.py:grpo",
         f"--workdir={tmp_path}", flag],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.fixture(scope="module")
def grpo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    stack = _stack()
    result = real_rlhf.run(real_config.spec_from_config(_config("grpo")), root, stack=stack)
    return root, stack, result


def _vader(texts):
    return np.array([vader().polarity_scores(t)["compound"] for t in texts], np.float32)


@pytest.mark.slow  # trains on a tiny model: compiles GRPO/PPO programs
def test_pairs_carry_the_gold_of_their_decoded_responses(grpo_root):
    root, stack, _ = grpo_root
    data = np.load(root / "pairs" / "pairs.npz")
    for side in ("chosen", "rejected"):
        texts = stack.task.response_texts(data[f"train/{side}"], data[f"train/{side}_mask"])
        np.testing.assert_array_equal(data[f"train/gold_{side}"], _vader(texts))
    assert data["train/prompt"].shape == (24, PROMPT_LEN)
    assert data["test/chosen"].shape == (8, RESPONSE_LEN)


@pytest.mark.slow  # trains on a tiny model: compiles GRPO/PPO programs
def test_same_seed_same_pairs(grpo_root, tmp_path):
    root, stack, _ = grpo_root
    spec = real_config.spec_from_config(_config("grpo"))
    ref_params = stack.base.init(jax.random.PRNGKey(0))
    train, test = real_rlhf.reference_pairs(spec, stack, ref_params, tmp_path)
    data = np.load(root / "pairs" / "pairs.npz")
    for k, v in train.items():
        np.testing.assert_array_equal(v, data[f"train/{k}"])


@pytest.mark.slow  # trains on a tiny model: compiles GRPO/PPO programs
def test_reward_model_metrics_and_refusal_of_other_settings(grpo_root):
    root, stack, _ = grpo_root
    metrics = json.loads((root / "reward_model" / "metrics.json").read_text())
    for split in ("train", "test"):
        assert 0.0 <= metrics[split]["accuracy_labels"] <= 1.0
    # 100 Adam steps from w = 0 lower the training BT loss from log 2.
    assert metrics["fit_losses"][-1] < math.log(2)
    assert metrics["l2"] in (0.1, 10.0) and [row["l2"] for row in metrics["cv"]] == [0.1, 10.0]
    before = (root / "pairs" / "pairs.npz").read_bytes()
    config = _config("grpo")
    config.pairs.temperature = 0.5
    with pytest.raises(ConfigError, match="other settings"):
        real_rlhf.run(real_config.spec_from_config(config), root, stack=stack)
    assert (root / "pairs" / "pairs.npz").read_bytes() == before


@pytest.mark.slow  # trains on a tiny model: compiles GRPO/PPO programs
def test_grpo_starts_at_the_reference_and_moves(grpo_root):
    root, stack, result = grpo_root
    rows = [json.loads(line) for line in (root / "grpo" / "eval.jsonl").read_text().splitlines()]
    assert [r["update"] for r in rows] == [0, 1, 2]
    assert rows[0]["kl"] == 0.0  # exactly: the policy's logits are the reference's, bit for bit
    assert rows[-1]["kl"] > 0.0
    ref = perplexity(stack.base, stack.base.init(jax.random.PRNGKey(0)), HELD_OUT_ENGLISH)
    assert result["reference_perplexity"] == pytest.approx(ref, rel=1e-6)
    assert np.isfinite(result["final"][0]["perplexity"])
    saved = flax.serialization.msgpack_restore((root / "grpo" / "adapters.msgpack").read_bytes())
    assert set(saved) == {"lora"}  # the base weights are not saved


@pytest.mark.slow  # trains on a tiny model: compiles GRPO/PPO programs
def test_ppo_with_a_value_head_runs(grpo_root):
    root, stack, _ = grpo_root
    result = real_rlhf.run(real_config.spec_from_config(_config("ppo")), root, stack=stack)
    rows = [json.loads(line) for line in (root / "ppo" / "eval.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0.0
    saved = flax.serialization.msgpack_restore((root / "ppo" / "adapters.msgpack").read_bytes())
    assert set(saved) == {"model", "value"} and set(saved["model"]) == {"lora"}
    assert np.isfinite(result["final"][0]["gold"])


@pytest.mark.slow  # trains on a tiny model: compiles GRPO/PPO programs
def test_best_of_n_records_the_reference_and_the_bound(grpo_root):
    root, stack, _ = grpo_root
    config = _config("best_of_n")
    config.rl.best_of_n = (1, 4)
    result = real_rlhf.run(real_config.spec_from_config(config), root, stack=stack)
    by_n = {row["n"]: row for row in result["final"]}
    assert by_n[1]["kl"] == 0.0
    assert by_n[4]["kl"] == pytest.approx(math.log(4) - 3 / 4, rel=1e-6)
    assert all(np.isfinite(row["gold"]) and np.isfinite(row["proxy"]) for row in by_n.values())


@pytest.mark.slow  # trains on a tiny model
def test_a_bfloat16_base_trains(tmp_path):
    """model.dtype bfloat16: the base (and reference) in bfloat16, adapters and head in float32;
    the exact KL before any update is still 0.0 (B = 0: W + s·A@0 rounds back to W exactly)."""
    stack = _stack()
    base = dataclasses.replace(stack.base, config=dataclasses.replace(stack.base.config,
                                                                      dtype="bfloat16"))
    stack = real_rlhf.Stack(base, stack.task, TrunkReward(base))
    config = _config("grpo")
    config.model.dtype = "bfloat16"
    real_rlhf.run(real_config.spec_from_config(config), tmp_path, stack=stack)
    rows = [json.loads(line) for line in (tmp_path / "grpo" / "eval.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == 0.0 and rows[-1]["kl"] > 0.0
    data = np.load(tmp_path / "pairs" / "pairs.npz")
    assert np.isfinite(data["train/gold_chosen"]).all()


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # trains on a tiny model
def test_the_kl_guard_rolls_the_real_program_back_and_resumes_it(grpo_root, monkeypatch):
    """A KL budget between the unguarded GRPO run's exact KL at evaluations 1 and 2 (a guard whose
    checks pass changes nothing, so the guarded run is that run up to evaluation 2): evaluation 2
    breaks it, and the run goes back to the state of evaluation 1 with β × kl_backoff; that state
    is evaluated again as the final one. The guard's state is checkpointed: a resume from the last
    checkpoint redoes the rollback and ends with the same files."""
    root, stack, _ = grpo_root
    kl = [row["kl"] for row in _lines(root / "grpo" / "eval.jsonl")]
    assert kl[2] > kl[1] > 0.0, kl
    config = _config("grpo")
    config.name = "grpo_guard"  # the same root: the pairs and the proxy are reused
    config.guards.update(max_sequence_kl=(kl[1] + kl[2]) / 2, kl_backoff=4.0)
    spec = real_config.spec_from_config(config)
    checked = []  # (evaluation, state checked, state returned), on the host
    check = kl_guard.KLGuard.check

    def spy(self, state, hp, kls, i, seeds, rows=None, domain_kl=None):
        got = check(self, state, hp, kls, i, seeds, rows, domain_kl)
        checked.append((i, jax.device_get(state), jax.device_get(got[0])))
        return got

    monkeypatch.setattr(kl_guard.KLGuard, "check", spy)
    with pytest.warns(RuntimeWarning, match="KL guard"):
        result = real_rlhf.run(spec, root, stack=stack)
    out = root / "grpo_guard"
    events = _lines(out / "events.jsonl")
    evaluated = _lines(root / "grpo" / "eval.jsonl")[2]  # what the unguarded run evaluated there
    assert [{k: e[k] for k in ("gold", "proxy", "samples")} for e in events] == [
        {k: evaluated[k] for k in ("gold", "proxy", "samples")}]
    assert [{k: v for k, v in e.items() if k not in ("gold", "proxy", "samples")}
            for e in events] == [
        {"evaluation": 2, "seed": 0, "index": 0, "kl": kl[2], "last_passing_kl": kl[1],
         "reason": "budget", "action": "rollback", "rollback": 1}]
    assert [i for i, _, _ in checked] == [1, 2]
    (_, passed, _), (_, broke, rolled) = checked
    # β of the fixed controller: 0.05 × 4 is exact in float32.
    assert broke.controller.beta[0] == np.float32(0.05)
    assert rolled.controller.beta[0] == np.float32(0.05) * np.float32(4.0)
    # The state after the rollback is the last passing checkpoint's (step 1, the older of the two
    # kept), bit for bit; the newest (step 2) holds the state that broke the budget.
    lora = lambda params: params["lora"]  # noqa: E731
    checkpoints = ocp.CheckpointManager(out / "checkpoints",
                                        item_handlers=ocp.StandardCheckpointHandler())
    assert sorted(checkpoints.all_steps()) == [1, 2]
    at = {step: checkpoints.restore(step) for step in (1, 2)}
    checkpoints.close()
    jax.tree.map(np.testing.assert_array_equal, lora(rolled.params), lora(passed.params))
    jax.tree.map(np.testing.assert_array_equal, lora(rolled.params),
                 lora(at[1]["state"]["params"]))
    jax.tree.map(np.testing.assert_array_equal, lora(broke.params), lora(at[2]["state"]["params"]))
    jax.tree.map(np.testing.assert_array_equal, lora(rolled.params),
                 lora(at[2]["guard"]["good"]["params"]))
    assert not np.array_equal(jax.tree.leaves(lora(rolled.params))[0],
                              jax.tree.leaves(lora(broke.params))[0])
    adapters = flax.serialization.msgpack_restore((out / "adapters.msgpack").read_bytes())
    jax.tree.map(np.testing.assert_array_equal, adapters["lora"], lora(rolled.params))
    assert [row["update"] for row in _lines(out / "eval.jsonl")] == [0, 1, 2]
    assert result["final"][0]["kl"] == _lines(out / "eval.jsonl")[-1]["kl"]

    # Resume from the newest checkpoint (step 2): its evaluation is redone with the guard's state
    # restored (last passing state and KL), so the same rollback happens and the files match.
    files = ("metrics.jsonl", "eval.jsonl", "events.jsonl", "adapters.msgpack")
    before = {name: (out / name).read_bytes() for name in files}
    (out / "results.json").unlink()
    (out / "adapters.msgpack").unlink()
    with pytest.warns(RuntimeWarning, match="KL guard"):
        real_rlhf.run(spec, root, stack=stack)
    assert {name: (out / name).read_bytes() for name in files} == before


@pytest.mark.slow  # trains on a tiny model
def test_a_kl_guard_rollback_before_the_last_evaluation_trains_on_with_the_raised_beta(grpo_root):
    """A budget no update can keep (1e-9 nats): both evaluations roll the run back to the start
    (the reference: LoRA B = 0); update 2 trains with β × kl_backoff, and the final evaluation is
    of the reference again (exact KL 0.0)."""
    root, stack, _ = grpo_root
    config = _config("grpo")
    config.name = "grpo_guard_every"
    config.guards.max_sequence_kl = 1e-9
    with pytest.warns(RuntimeWarning, match="KL guard"):
        real_rlhf.run(real_config.spec_from_config(config), root, stack=stack)
    out = root / "grpo_guard_every"
    events = _lines(out / "events.jsonl")
    assert [(e["evaluation"], e["last_passing_kl"], e["rollback"]) for e in events] == [
        (1, 0.0, 1), (2, 0.0, 2)]
    beta = {row["update"]: row["beta"] for row in _lines(out / "metrics.jsonl")}
    assert beta == {1: float(np.float32(0.05)), 2: float(np.float32(0.05) * np.float32(2.0))}
    assert [row["kl"] for row in _lines(out / "eval.jsonl")][::2] == [0.0, 0.0]
