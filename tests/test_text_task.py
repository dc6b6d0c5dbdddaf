"""The synthetic language (kltrust.tasks.text), its TFDS builders and the byte-level text loader."""

import itertools
import json
import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import decode as tfds_decode

from kltrust.tasks import text, text_data
from kltrust.tasks.text import BOS, EOS, PAD

SPEC = text.LanguageSpec()
N = 256  # one batch size throughout, so the samplers compile once


@pytest.fixture(scope="module")
def language():
    return text.make_language(SPEC)


@pytest.fixture(scope="module")
def samples(language):
    return text.sft_corpus(language, jax.random.key(0), N)


# ---------------------------------------------------------------- pure-Python references


def _reference_components(language, prompt, response, mask):
    """c, R, U and gold of one response by a plain loop over positions, from the probabilities."""
    spec = language.spec
    probs = np.exp(np.asarray(language.log_transition, np.float64))
    good = np.asarray(language.good)
    full = [int(t) for t in prompt] + [int(t) for t in response]
    p = len(prompt)
    c = r = u = 0
    for t, y in enumerate(int(y) for y in response):
        if mask[t] <= 0:
            continue
        before = (full[p + t - 1], full[p + t - 2])
        c += bool(good[y])
        r += y in before
        u += probs[before[0], y] == 0.0
    gold = spec.good_scale * (1 - math.exp(-c / spec.good_saturation)) - spec.repeat_penalty * r \
        - spec.ungrammatical_penalty * u
    return c, r, u, gold


def _reference_log_prob(language, prompt, response, mask):
    probs = np.exp(np.asarray(language.log_transition, np.float64))
    prev, total = int(prompt[-1]), 0.0
    for y, m in zip(response, mask):
        if m > 0:
            total += math.log(probs[prev, int(y)]) if probs[prev, int(y)] > 0 else -math.inf
        prev = int(y)
    return total


def _mixed_batch(language, seed):
    """True-language samples with corruptions, plus uniformly random tokens and masks (N rows)."""
    data = text.sft_corpus(language, jax.random.key(seed), N)
    prompts, resp, mask = (np.array(data[k]) for k in ("prompt", "response", "mask"))
    rng = np.random.default_rng(seed)
    length, v = resp.shape[1], language.vocab_size
    for i in range(N):
        j, kind = rng.integers(length), rng.integers(4)
        if kind == 0:  # a random token in a real response
            resp[i, j], mask[i, j] = rng.integers(v), 1.0
        elif kind == 1:  # repeat the previous token (or the prompt's last)
            resp[i, j], mask[i, j] = (resp[i, j - 1] if j else prompts[i, -1]), 1.0
        elif kind == 2:  # fully random tokens and mask, PAD/BOS/EOS included
            resp[i], mask[i] = rng.integers(v, size=length), rng.random(length) < 0.7
    return prompts, resp, mask


# ---------------------------------------------------------------- the language


@pytest.mark.parametrize("field,value", [
    ("num_words", 2), ("num_good", 19), ("num_good", -1), ("successors", 1), ("successors", 10),
    ("eos_prob", 1.0), ("eos_prob", -0.1), ("good_weight", 0.0), ("prompt_len", 1), ("response_len", 0),
    ("seed", -1), ("good_scale", -1.0), ("good_saturation", 0.0), ("repeat_penalty", float("nan")),
    ("ungrammatical_penalty", -2.0), ("num_words", True),
])
def test_spec_validation_names_field_and_range(field, value):
    with pytest.raises(ValueError, match=rf"LanguageSpec\.{field} must be .*(\[|>|<)"):
        text.LanguageSpec(**{field: value})


def test_successors_range_depends_on_words_and_good():
    with pytest.raises(ValueError, match=r"successors must be an integer in \[2, 9\]"):
        text.LanguageSpec(successors=10)
    assert text.LanguageSpec(successors=9).successors == 9


@pytest.mark.parametrize("spec", [SPEC, text.LanguageSpec(seed=7), text.LanguageSpec(num_words=6, num_good=2,
                                                                                       successors=2, seed=3)])
def test_language_structure(spec):
    lang = text.make_language(spec)
    w0, v = text.NUM_SPECIAL, spec.vocab_size
    logt = np.asarray(lang.log_transition, np.float64)
    np.testing.assert_allclose(np.logaddexp.reduce(logt, axis=1), 0.0, atol=1e-5)
    good = np.asarray(lang.good)
    assert good.sum() == spec.num_good and not good[:w0].any()
    allowed = np.isfinite(logt[w0:, w0:])
    gw = good[w0:]
    assert (allowed.sum(axis=1) == spec.successors).all()
    assert not np.diag(allowed).any(), "self-loop"
    assert not (allowed & allowed.T).any(), "2-cycle"
    assert not allowed[np.ix_(gw, gw)].any(), "good -> good"
    # strongly connected: the reachability closure is full; each good word has a non-good predecessor
    reach = allowed | np.eye(spec.num_words, dtype=bool)
    for _ in range(spec.num_words):
        reach = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
    assert reach.all()
    assert allowed[np.ix_(~gw, gw)].any(axis=0).all()
    # EOS after every word, δ_PAD after EOS and PAD, the start distribution after BOS
    np.testing.assert_allclose(np.exp(logt[w0:, EOS]), spec.eos_prob, rtol=1e-5)
    for row in (EOS, PAD):
        assert logt[row, PAD] == 0.0 and np.isneginf(np.delete(logt[row], PAD)).all()
    np.testing.assert_array_equal(logt[BOS], np.asarray(lang.log_start))
    assert np.isneginf(np.asarray(lang.log_start)[:w0]).all()
    # deterministic in the spec
    again = text.make_language(spec)
    np.testing.assert_array_equal(np.asarray(again.log_transition), logt.astype(np.float32))


def test_seeds_give_different_languages():
    a, b = text.make_language(SPEC), text.make_language(text.LanguageSpec(seed=1))
    assert not np.array_equal(np.asarray(a.log_transition), np.asarray(b.log_transition))


def test_good_words_are_rare_in_samples(language, samples):
    # good words appear, but at well below their share of the vocabulary
    frac = float(jnp.sum(language.good[samples["response"]] * samples["mask"]) / jnp.sum(samples["mask"]))
    assert 0.0 < frac < SPEC.num_good / SPEC.num_words


def test_sample_shapes_and_mask_conventions(language, samples):
    prompts, resp, mask = (np.asarray(samples[k]) for k in ("prompt", "response", "mask"))
    n, p, length = prompts.shape[0], SPEC.prompt_len, SPEC.response_len
    assert prompts.shape == (n, p) and resp.shape == mask.shape == (n, length)
    assert prompts.dtype == resp.dtype == np.int32 and mask.dtype == np.float32
    assert (prompts[:, 0] == BOS).all() and (prompts[:, 1:] >= text.NUM_SPECIAL).all()
    np.testing.assert_array_equal(mask, (resp != PAD).astype(np.float32))
    is_eos = resp == EOS
    assert (is_eos.sum(axis=1) <= 1).all()
    after_eos = np.cumsum(is_eos, axis=1) - is_eos > 0
    assert (resp[after_eos] == PAD).all() and (mask[after_eos] == 0).all()
    assert (resp[~after_eos & ~is_eos] >= text.NUM_SPECIAL).all()  # words up to the EOS
    assert 0 < is_eos.any(axis=1).mean() < 1  # both endings occur


def test_true_language_samples_are_grammatical_without_repeats(language, samples):
    parts = text.gold_components(language, samples["prompt"], samples["response"], samples["mask"])
    assert float(jnp.max(parts["repeats"])) == 0.0 and float(jnp.max(parts["ungrammatical"])) == 0.0
    assert bool(jnp.all(text.grammatical(language, samples["prompt"], samples["response"], samples["mask"])))
    logp = text.true_log_prob(language, samples["prompt"], samples["response"], samples["mask"])
    assert bool(jnp.all(jnp.isfinite(logp)))
    assert float(jnp.mean(parts["good_count"])) > 0.1


def test_gold_reward_matches_python_loop(language):
    prompts, resp, mask = _mixed_batch(language, 1)
    parts = {k: np.asarray(v) for k, v in text.gold_components(language, prompts, resp, mask).items()}
    ref = np.array([_reference_components(language, *row) for row in zip(prompts, resp, mask)])
    np.testing.assert_array_equal(parts["good_count"], ref[:, 0])
    np.testing.assert_array_equal(parts["repeats"], ref[:, 1])
    np.testing.assert_array_equal(parts["ungrammatical"], ref[:, 2])
    np.testing.assert_allclose(text.gold_reward(language, prompts, resp, mask), ref[:, 3], rtol=1e-5, atol=1e-5)
    # the batch exercises every case
    assert (ref[:, 1] > 0).any() and (ref[:, 2] > 0).any() and (ref[:, 0] > 0).any()
    assert (resp == EOS).any() and ((mask == 0) & (resp != PAD)).any()


def test_true_log_prob_matches_python_loop(language):
    prompts, resp, mask = _mixed_batch(language, 2)
    got = np.asarray(text.true_log_prob(language, prompts, resp, mask), np.float64)
    ref = np.array([_reference_log_prob(language, *row) for row in zip(prompts, resp, mask)])
    assert np.isneginf(ref).any() and np.isfinite(ref).any()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(text.grammatical(language, prompts, resp, mask), finite)


def test_jit_and_vmap_agree_with_batched(language):
    prompts, resp, mask = _mixed_batch(language, 3)
    batched = text.gold_reward(language, prompts, resp, mask)
    per_row = jax.jit(jax.vmap(text.gold_reward, in_axes=(None, 0, 0, 0)))(language, prompts, resp, mask)
    np.testing.assert_allclose(per_row, batched, rtol=1e-6)
    logp = jax.jit(jax.vmap(text.true_log_prob, in_axes=(None, 0, 0, 0)))(language, prompts, resp, mask)
    np.testing.assert_array_equal(logp, text.true_log_prob(language, prompts, resp, mask))


def test_spamming_good_words_scores_low_gold(language, samples):
    good = np.flatnonzero(np.asarray(language.good))
    spam = np.array([[good[i % len(good)] for i in range(SPEC.response_len)]], np.int32)
    prompt = np.asarray(samples["prompt"][:1])
    parts = text.gold_components(language, prompt, spam, np.ones_like(spam, np.float32))
    ref_gold = float(jnp.mean(text.gold_reward(language, samples["prompt"], samples["response"], samples["mask"])))
    assert float(parts["good_count"][0]) == SPEC.response_len
    assert float(parts["gold"][0]) < ref_gold - 5.0


def test_max_gold_matches_brute_force():
    spec = text.LanguageSpec(num_words=5, num_good=1, successors=2, response_len=4, seed=2)
    lang = text.make_language(spec)
    prompts = np.asarray(text.sample_prompts(lang, jax.random.key(0), 3))
    seqs = np.array(list(itertools.product(range(spec.vocab_size), repeat=spec.response_len)), np.int32)
    ended_before = np.cumsum(seqs == EOS, axis=1) - (seqs == EOS) > 0
    masks = (~ended_before).astype(np.float32)
    for grammatical_only in (False, True):
        got = text.max_gold(lang, prompts, grammatical_only=grammatical_only)
        for prompt, best in zip(prompts, got):
            pr = np.broadcast_to(prompt, (len(seqs), len(prompt)))
            parts = text.gold_components(lang, pr, seqs, masks)
            gold = np.asarray(parts["gold"])
            if grammatical_only:
                gold = gold[(np.asarray(parts["repeats"]) == 0) & (np.asarray(parts["ungrammatical"]) == 0)]
            np.testing.assert_allclose(best, gold.max(), rtol=1e-5)


def test_distinct_n_hand_example():
    resp = jnp.array([[3, 4, 3, 4, 2, 0], [3, 4, 5, 0, 0, 0]])
    mask = (resp != PAD).astype(jnp.float32)
    assert float(text.distinct_n(resp, mask, 1)) == pytest.approx(4 / 8)
    assert float(text.distinct_n(resp, mask, 2)) == pytest.approx(4 / 6)
    assert float(text.distinct_n(resp, mask, 3)) == pytest.approx(4 / 4)
    assert float(text.distinct_n(resp, mask, 7)) == 0.0
    assert float(jax.jit(text.distinct_n, static_argnums=2)(resp, mask, 2)) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="n must be"):
        text.distinct_n(resp, mask, 0)


def test_preference_pairs_labels_follow_gold(language):
    pairs = text.preference_pairs(language, jax.random.key(4), N, label_noise=0.0, bt_temperature=1e-6)
    n, p, length = N, SPEC.prompt_len, SPEC.response_len
    assert pairs["prompt"].shape == (n, p) and pairs["chosen"].shape == pairs["rejected_mask"].shape == (n, length)
    assert pairs["chosen"].dtype == jnp.int32 and pairs["chosen_mask"].dtype == jnp.float32
    assert bool(jnp.all(pairs["gold_chosen"] >= pairs["gold_rejected"]))
    assert bool(jnp.any(pairs["gold_chosen"] > pairs["gold_rejected"]))
    for side in ("chosen", "rejected"):
        np.testing.assert_allclose(
            pairs[f"gold_{side}"], text.gold_reward(language, pairs["prompt"], pairs[side], pairs[f"{side}_mask"]))
    noisy = text.preference_pairs(language, jax.random.key(5), N, label_noise=0.3, bt_temperature=1e-6)
    differ = noisy["gold_chosen"] != noisy["gold_rejected"]
    wrong = float(jnp.sum(differ & (noisy["gold_chosen"] < noisy["gold_rejected"])) / jnp.sum(differ))
    assert 0.15 < wrong < 0.45
    for kwargs in ({"label_noise": 0.5}, {"label_noise": -0.1}, {"bt_temperature": 0.0}):
        with pytest.raises(ValueError):
            text.preference_pairs(language, jax.random.key(0), 4, **kwargs)


def test_decode(language):
    good = int(np.flatnonzero(np.asarray(language.good))[0])
    plain = int(np.flatnonzero(~np.asarray(language.good[3:]))[0]) + 3
    tokens = [BOS, plain, good, EOS, PAD]
    assert text.decode(tokens, language) == f"<s> {text.word_name(plain - 3)} {text.word_name(good - 3).upper()} </s>"
    assert text.decode(tokens, skip_pad=False).endswith("</s> <pad>")
    assert text.decode(np.array([tokens, tokens])).count("\n") == 1
    assert [text.word_name(i) for i in (0, 25, 26, 27)] == ["a", "z", "aa", "ab"]


def test_batch_metrics(language, samples):
    m = text.batch_metrics(language, samples["prompt"], samples["response"], samples["mask"])
    assert float(m["repeat_rate"]) == 0.0 and float(m["ungrammatical_rate"]) == 0.0
    assert 1.0 <= float(m["length"]) <= SPEC.response_len and 0.0 < float(m["distinct_2"]) <= 1.0


# ---------------------------------------------------------------- TFDS builders


def test_builders_are_deterministic_and_match_sampler(tmp_path):
    config = text_data.SyntheticConfig(num_train=16, num_test=16, label_noise=0.1, seed=3)
    for cls, kind in ((text_data.SyntheticSFT, "sft"), (text_data.SyntheticPreferences, "preferences")):
        a = text_data.load_arrays(cls, config, split="train", data_dir=str(tmp_path / "a"))
        b = text_data.load_arrays(cls, config, split="train", data_dir=str(tmp_path / "b"))
        expected = text_data.generate(kind, config, "train")
        assert a.keys() == b.keys() == expected.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a[k], expected[k])
            assert a[k].dtype == expected[k].dtype and len(a[k]) == 16
        test = text_data.load_arrays(cls, config, split="test", data_dir=str(tmp_path / "a"))
        assert len(test["prompt"]) == 16 and not np.array_equal(test["prompt"], a["prompt"])
    prompts = text_data.load_arrays("synthetic_prompts", split="test", data_dir=str(tmp_path / "a"),
                                    num_train=16, num_test=16)
    assert prompts["prompt"].shape == (16, SPEC.prompt_len) and prompts["prompt"].dtype == np.int32
    assert (prompts["prompt"][:, 0] == BOS).all()


def test_preference_builder_labels_and_mask_conventions(tmp_path):
    config = text_data.SyntheticConfig(num_train=16, num_test=16, bt_temperature=1e-6)
    rows = text_data.load_arrays(text_data.SyntheticPreferences, config, data_dir=str(tmp_path))
    assert (rows["gold_chosen"] >= rows["gold_rejected"]).all()
    for side in ("chosen", "rejected"):
        np.testing.assert_array_equal(rows[f"{side}_mask"], (rows[side] != PAD).astype(np.float32))
    # through tfds.data_source by name, too
    source = tfds.data_source(f"synthetic_preferences/{config.name}", split="train", data_dir=str(tmp_path),
                              download=False)
    np.testing.assert_array_equal(source[5]["chosen"], rows["chosen"][5])


def test_config_names_encode_parameters():
    base = text_data.SyntheticConfig()
    variants = [text_data.SyntheticConfig(label_noise=0.1), text_data.SyntheticConfig(seed=1),
                text_data.SyntheticConfig(num_train=10), text_data.SyntheticConfig(bt_temperature=0.5),
                text_data.SyntheticConfig(language=text.LanguageSpec(good_weight=0.5))]
    names = {base.name} | {v.name for v in variants}
    assert len(names) == 1 + len(variants)
    assert text_data.SyntheticConfig().name == base.name
    same = text_data.SyntheticConfig(language=text.LanguageSpec(good_scale=3, seed=np.int64(0)),
                                     num_train=np.int64(2048))
    assert same.name == base.name  # canonical types: 3 and 3.0 name the same data
    assert text_data.SyntheticPrompts(config=text_data.SyntheticConfig()).builder_config.name == base.name
    for kwargs in ({"num_train": 0}, {"label_noise": 0.5}, {"bt_temperature": 0.0}, {"seed": -1}):
        with pytest.raises(ValueError, match="SyntheticConfig"):
            text_data.SyntheticConfig(**kwargs)


def test_batches_are_deterministic_epochs():
    arrays = {"x": np.arange(10), "y": np.arange(10) * 2}
    run = lambda: list(text_data.batches(arrays, 4, seed=1, epochs=2))  # noqa: E731
    first, second = run(), run()
    assert len(first) == 4 and all(len(b["x"]) == 4 for b in first)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(first[0]["y"], first[0]["x"] * 2)
    assert len(set(np.concatenate([b["x"] for b in first[:2]]))) == 8  # no repeats within an epoch
    last = list(text_data.batches(arrays, 4, seed=1, drop_remainder=False))
    assert sorted(np.concatenate([b["x"] for b in last])) == list(range(10))
    with pytest.raises(ValueError):
        next(text_data.batches({"x": np.arange(3), "y": np.arange(4)}, 2))


# ---------------------------------------------------------------- real text as bytes


def test_byte_rows_hand_example():
    rows = text_data.byte_rows(["ab", "c"], seq_len=3)
    np.testing.assert_array_equal(rows, [[BOS, ord("a") + 3, ord("b") + 3], [BOS, EOS, ord("c") + 3]])
    rows = text_data.byte_rows("héllo", seq_len=5)  # 6 bytes: one full row, one half row
    assert rows.shape == (2, 5) and (rows[-1, -2:] == PAD).all() and text_data.decode_bytes(rows) == "héllo"
    assert text_data.byte_rows("héllo", seq_len=5, drop_remainder=True).shape == (1, 5)


def test_byte_corpus_on_mocked_tiny_shakespeare():
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        rows = text_data.byte_corpus("tiny_shakespeare", "train", seq_len=8)
        source = tfds.data_source("tiny_shakespeare", split="train", download=False)
        texts = [source[i]["text"] for i in range(len(source))]
    assert rows.dtype == np.int32 and rows.shape[1] == 8 and (rows[:, 0] == BOS).all()
    body = rows[:, 1:]
    assert ((body >= 3) & (body < text_data.BYTE_VOCAB_SIZE) | (body == EOS) | (body == PAD)).all()
    expected = text_data.byte_rows([t if isinstance(t, str) else t.decode() for t in texts], seq_len=8)
    np.testing.assert_array_equal(rows, expected)


class KltrustTinyText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A two-example text data set, built locally (no download) to test the TFRecord fallback."""

    VERSION = tfds.core.Version("1.0.0")
    TEXTS = ("Hello, world!", "Ünïcode ok")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                     features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i, t in enumerate(self.TEXTS):
            yield i, {"text": t}


def test_byte_corpus_reads_array_record_and_tfrecord_without_tf(tmp_path):
    builder = KltrustTinyText(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    expected = text_data.byte_rows(list(KltrustTinyText.TEXTS), seq_len=6)
    read = lambda: text_data.byte_corpus("kltrust_tiny_text", seq_len=6, data_dir=str(tmp_path))  # noqa: E731
    np.testing.assert_array_equal(read(), expected)
    # Rewrite the split as TFRecord (zero CRCs: the reader does not check them), as `tfds build` writes it.
    raw = builder.as_data_source("train", deserialize_method=tfds_decode.DeserializeMethod.RAW_BYTES)
    records = [raw[i] for i in range(len(raw))]
    path = epath.Path(builder.data_dir)
    for f in path.glob("*.array_record*"):
        f.unlink()
    with (path / "kltrust_tiny_text-train.tfrecord-00000-of-00001").open("wb") as f:
        for r in records:
            f.write(struct.pack("<Q", len(r)) + b"\0" * 4 + r + b"\0" * 4)
    info = json.loads((path / "dataset_info.json").read_text())
    (path / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
    with pytest.raises(Exception):
        tfds.data_source("kltrust_tiny_text", split="train", data_dir=str(tmp_path), download=False)
    np.testing.assert_array_equal(read(), expected)


def test_byte_corpus_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build tiny_shakespeare"):
        text_data.byte_corpus("tiny_shakespeare", data_dir=str(tmp_path))
