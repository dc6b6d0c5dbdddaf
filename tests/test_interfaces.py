"""The token-task and language-model interfaces, and their first implementations.

`SyntheticTask` (the synthetic language) must be a `TokenTask` whose prompts, data sets and gold
reward are exactly what the existing functions (and so the pipeline) give; `TransformerLM` (the
small decoder, also `tokens.Policy`) must be a `LanguageModel`; and a trainer that reads only the
interfaces must be able to sample, score and evaluate with them.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import rollout, sharding
from kltrust.models.interface import LanguageModel, Tokenizer
from kltrust.models.transformer import TransformerConfig, TransformerLM
from kltrust.tasks import interface, text, text_data
from kltrust.tasks.interface import TokenTask
from kltrust.tasks.synthetic.task import SyntheticTask
from kltrust.train import tokens as tok

SPEC = text.LanguageSpec(num_words=12, successors=3, num_good=2, prompt_len=3, response_len=6, seed=4)
# One size for every split, so each sampler compiles once.
SIZES = dict(seed=3, num_prompts=16, num_eval_prompts=16, num_sft=16, num_eval_sft=16, num_pairs=16,
             num_eval_pairs=16, label_noise=0.1, bt_temperature=0.5)


@pytest.fixture(scope="module")
def task():
    return SyntheticTask.create(SPEC, **SIZES)


@pytest.fixture(scope="module")
def model(task):
    config = TransformerConfig(vocab_size=task.vocab_size, num_layers=1, width=16, num_heads=2,
                               max_len=task.prompt_len + task.response_len, critic="shared")
    return TransformerLM(config, tokenizer=task.tokenizer)


def _methods(protocol) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(value) for name, value in vars(protocol).items()
            if inspect.isfunction(value) and not name.startswith("_")}


def _properties(protocol) -> list[str]:
    return [name for name, value in vars(protocol).items() if isinstance(value, property)]


def _check_implements(obj, protocol) -> None:
    """isinstance (presence of every member) plus the shape of each: properties are values, not
    methods, and each method takes the protocol's parameters by the same names."""
    assert isinstance(obj, protocol)
    for name in _properties(protocol):
        assert not inspect.ismethod(getattr(obj, name)), name
    for name, signature in _methods(protocol).items():
        expected = [p for p in signature.parameters if p != "self"]
        assert list(inspect.signature(getattr(obj, name)).parameters) == expected, name


# ---------------------------------------------------------------- structure


def test_synthetic_task_is_a_token_task(task):
    _check_implements(task, TokenTask)
    _check_implements(task.tokenizer, Tokenizer)
    assert (task.vocab_size, task.prompt_len, task.response_len) == (15, 3, 6)
    assert (task.eos_id, task.pad_id, task.traceable_gold) == (text.EOS, text.PAD, True)


def test_transformer_is_a_language_model(model):
    _check_implements(model, LanguageModel)
    assert tok.Policy is TransformerLM
    plain = tok.Policy(model.config)
    _check_implements(plain, LanguageModel)
    # The tokenizer changes no computation: equal and hashed alike, so compiled programs are shared.
    assert plain == model and hash(plain) == hash(model) and plain.tokenizer is None
    assert (model.vocab_size, model.max_len) == (15, 9)


def test_incomplete_objects_are_refused():
    class NoGold:
        vocab_size = prompt_len = response_len = eos_id = pad_id = 1
        traceable_gold = True

        def prompts(self, split): ...
        def sft_corpus(self, split): ...
        def preference_pairs(self, split): ...
        def decode(self, tokens): ...

    assert not isinstance(NoGold(), TokenTask)
    assert not isinstance(TransformerConfig(vocab_size=3), LanguageModel)


# ---------------------------------------------------------------- the adapter equals the existing functions


def test_data_equal_the_generated_rows(task):
    for kind, get in (("prompts", task.prompts), ("sft", task.sft_corpus),
                      ("preferences", task.preference_pairs)):
        config = text_data.SyntheticConfig(
            language=SPEC, num_train=task.data_config(kind).num_train,
            num_test=task.data_config(kind).num_test, seed=SIZES["seed"],
            **({"label_noise": 0.1, "bt_temperature": 0.5} if kind == "preferences" else {}))
        assert task.data_config(kind).name == config.name
        for split in ("train", "test"):
            expected = text_data.generate(kind, config, split)
            got = get(split)
            if kind == "prompts":
                expected = expected["prompt"]
                assert got.dtype == np.int32 and got.shape == (16, SPEC.prompt_len)
            np.testing.assert_equal(got, expected)
    assert set(interface.SFT_KEYS) <= set(task.sft_corpus("test"))
    assert set(interface.PAIR_KEYS) <= set(task.preference_pairs("test"))


def test_tfds_path_equals_what_the_pipeline_loads(task, tmp_path):
    """With a data_dir the rows come through the TFDS builders, as `pipeline.load_splits` loads them."""
    on_disk = task.replace(data_dir=str(tmp_path))
    config = text_data.SyntheticConfig(language=SPEC, num_train=SIZES["num_prompts"],
                                       num_test=SIZES["num_eval_prompts"], seed=SIZES["seed"])
    for split in ("train", "test"):
        expected = text_data.load_arrays(text_data.SyntheticPrompts, config, split=split,
                                         data_dir=str(tmp_path / "reference"))["prompt"]
        np.testing.assert_equal(on_disk.prompts(split), expected)
        np.testing.assert_equal(task.prompts(split), expected)


def test_the_specs_task_is_the_pipelines_data():
    from kltrust.train import pipeline, token_config

    config = pipeline.defaults()
    config.seed, config.data.num_pairs, config.data.label_noise = 2, 64, 0.2
    task = token_config.spec_from_config(config).task()
    language = token_config.language_spec(config)
    assert task.spec == language
    # The configs the pipeline has always built for each kind (SFT test split: 1024 rows).
    expected = {
        "prompts": text_data.SyntheticConfig(language=language, seed=2,
                                             num_train=config.data.num_prompts,
                                             num_test=config.data.num_eval_prompts),
        "sft": text_data.SyntheticConfig(language=language, seed=2,
                                         num_train=config.data.num_sft, num_test=1024),
        "preferences": text_data.SyntheticConfig(language=language, seed=2,
                                                 num_train=64, num_test=config.data.num_eval_pairs,
                                                 label_noise=0.2, bt_temperature=1.0),
    }
    # The pipeline's task comes from the spec read once from the config: the same data sets.
    from_spec = pipeline.spec_from_config(config).task()
    for kind, config_ in expected.items():
        assert task.data_config(kind).name == config_.name, kind
        assert from_spec.data_config(kind).name == config_.name, kind


def test_gold_reward_equals_the_language_function(task):
    rows = task.sft_corpus("train")
    np.testing.assert_array_equal(
        np.asarray(task.gold_reward(rows["prompt"], rows["response"], rows["mask"])), rows["gold"])
    # Off-language responses too, so the repeat and grammar terms are exercised.
    noise = jax.random.randint(jax.random.key(0), rows["response"].shape, 0, task.vocab_size)
    jitted = jax.jit(lambda t, *a: interface.gold_reward(t, *a))
    for responses in (rows["response"], noise):
        args = (rows["prompt"], responses, rows["mask"])
        expected = np.asarray(text.gold_reward(task.language, *args))
        np.testing.assert_array_equal(np.asarray(task.gold_reward(*args)), expected)
        np.testing.assert_array_equal(np.asarray(interface.gold_reward(task, *args)), expected)
        # The task as an argument of a compiled program (its arrays are inputs, not constants).
        np.testing.assert_array_equal(np.asarray(jitted(task, *args)), expected)


def test_decode_and_tokenizer(task):
    rows = task.sft_corpus("test")
    row = np.concatenate([rows["prompt"][0], rows["response"][0]])
    assert task.decode(row) == text.decode(row, task.language)
    tokenizer = task.tokenizer
    real = row[row != text.PAD].tolist()
    assert tokenizer.encode(tokenizer.decode(row)) == real
    assert tokenizer.encode(task.decode(row)) == real  # good words in capitals read back too
    assert tokenizer.encode("<s> a l </s> <pad>") == [1, 3, 14, 2, 0]
    with pytest.raises(ValueError, match="not one of the 12 words"):
        tokenizer.encode("m")
    with pytest.raises(ValueError, match="letters"):
        tokenizer.encode("a1")


# ---------------------------------------------------------------- what a trainer calls


def test_a_trainer_reading_only_the_interfaces(task, model):
    """Sampling, scoring and the gold reward through interface members alone, as
    `tokens.evaluate` does with the synthetic language and `tokens.Policy` today."""
    assert task.vocab_size <= model.vocab_size
    assert task.prompt_len + task.response_len <= model.max_len
    params = jax.jit(model.init)(jax.random.key(0))
    mesh = sharding.make_mesh(1)
    shardings = model.param_shardings(mesh, params)
    assert jax.tree.structure(shardings) == jax.tree.structure(params)
    params = sharding.place(params, shardings)
    prompts = jnp.asarray(task.prompts("test"))

    @jax.jit
    def evaluate(params, task, key):
        ro = rollout.token_rollout(
            model.decode, model.sequence, params, prompts, model.empty_cache(prompts.shape[0]), key,
            max_new_tokens=task.response_len, eos_id=task.eos_id, pad_id=task.pad_id)
        return ro, interface.gold_reward(task, prompts, ro.response, ro.mask)

    ro, gold = evaluate(params, task, jax.random.key(1))
    assert ro.response.shape == (prompts.shape[0], task.response_len) and gold.shape == (prompts.shape[0],)
    np.testing.assert_allclose(ro.log_prob, ro.sampled_log_prob, atol=1e-5)
    np.testing.assert_array_equal(gold, text.gold_reward(task.language, prompts, ro.response, ro.mask))
    assert isinstance(task.decode(ro.response[0]), str)


class _HostGoodCount:
    """A task whose gold reward is host numpy (like a lexicon scorer): the count of good words."""

    traceable_gold = False

    def __init__(self, task):
        self.good = np.asarray(task.language.good)

    def gold_reward(self, prompts, responses, mask):
        assert isinstance(responses, np.ndarray) and responses.ndim == 2  # host arrays, [B, L]
        return (self.good[responses] & (mask > 0)).sum(-1).astype(np.float32)


def test_host_gold_reward_runs_inside_jit_and_vmap(task):
    host = _HostGoodCount(task)
    rows = task.sft_corpus("train")
    args = tuple(jnp.asarray(rows[k]) for k in ("prompt", "response", "mask"))
    expected = text.gold_components(task.language, *args)["good_count"]
    fn = jax.jit(lambda *a: interface.gold_reward(host, *a))
    np.testing.assert_array_equal(fn(*args), expected)
    stacked = jax.vmap(fn)(*(jnp.stack([a, a[::-1]]) for a in args))  # a run axis of 2
    np.testing.assert_array_equal(stacked, jnp.stack([expected, expected[::-1]]))
