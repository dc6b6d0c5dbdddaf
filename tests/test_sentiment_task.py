"""`SentimentTask` (kltrust/tasks/sentiment/task.py, gold.py, pairs.py) with a small word-level
stand-in tokenizer: the gold is VADER's score of the decoded continuation, callable inside jit and
vmap; prompts are exactly prompt_len tokens; the Bradley–Terry labels have the stated law."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from word_tokenizer import WordTokenizer

from kltrust.models.interface import Tokenizer
from kltrust.tasks import interface
from kltrust.tasks.interface import PAIR_KEYS, TokenTask
from kltrust.tasks.sentiment import PAIR_SET_KEYS, SentimentTask, choice_probability, label_pairs


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer()


@pytest.fixture(scope="module")
def task(tokenizer):
    return SentimentTask.create(tokenizer, response_len=12)


def _responses(tokenizer, sentences: list[str], length: int, pad_tail: int | None = None):
    """Sentences as response rows: tokens, EOS, then PAD (or ``pad_tail`` after EOS, mask 0)."""
    rows, masks = [], []
    for s in sentences:
        ids = tokenizer.encode(s) + [tokenizer.eos_id]
        assert len(ids) <= length
        fill = tokenizer.pad_id if pad_tail is None else pad_tail
        rows.append(ids + [fill] * (length - len(ids)))
        masks.append([1.0] * len(ids) + [0.0] * (length - len(ids)))
    return np.array(rows, np.int32), np.array(masks, np.float32)


def _vader(text: str) -> float:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().polarity_scores(text)["compound"]


POSITIVE = ["i loved it , it was great !", "the food was very good", "wonderful film"]
NEGATIVE = ["i hated it , it was terrible", "the food was not good", "boring and awful film"]
NEUTRAL = ["it was the film", ""]


# ---------------------------------------------------------------- the interface and prompts


def test_is_a_token_task_with_the_tokenizers_ids(task, tokenizer):
    assert isinstance(tokenizer, Tokenizer)
    assert isinstance(task, TokenTask)
    assert (task.vocab_size, task.eos_id, task.pad_id) == (tokenizer.vocab_size, 2, 0)
    assert not task.traceable_gold
    assert task.sft_corpus("train") is None
    assert task.preference_pairs("train") is None and task.preference_pairs("test") is None
    with pytest.raises(ValueError, match="split"):
        task.prompts("validation")


@pytest.mark.parametrize("bos", [True, False])
def test_prompts_have_exactly_prompt_len_tokens(bos):
    tok = WordTokenizer(bos=bos, pad_is_eos=not bos)
    task = SentimentTask.create(tok, response_len=8)
    longest = max(len(tok.encode(t)) for s in ("train", "test") for t in task.prompt_texts(s)) + bos
    assert task.prompt_len == longest  # the default fits the longest prompt
    for split in ("train", "test"):
        prompts = task.prompts(split)
        assert prompts.dtype == np.int32 and prompts.shape == (len(task.prompt_texts(split)), task.prompt_len)
        assert task.num_truncated(split) == 0
        np.testing.assert_array_equal(prompts, task.prompts(split))  # the same every call
        assert len(task.domains(split)) == len(prompts)
        for row, text in zip(prompts[:50], task.prompt_texts(split)[:50]):
            ids = tok.encode(text)
            # [filler] * k + [BOS]? + ids: the text ends the row, right before the response.
            assert row[len(row) - len(ids):].tolist() == ids
            head = row[:len(row) - len(ids)].tolist()
            assert head == [tok.eos_id] * (len(head) - bos) + ([tok.bos_id] if bos else [])
            assert task.decode(row) == tok.decode(([tok.bos_id] if bos else []) + ids)


def test_short_prompt_len_keeps_the_last_tokens(tokenizer):
    task = SentimentTask.create(tokenizer, prompt_len=6, response_len=4)
    prompts = task.prompts("train")
    assert prompts.shape[1] == 6 and task.num_truncated("train") > 0
    text = task.prompt_texts("train")[0]
    assert prompts[0].tolist() == [tokenizer.bos_id] + tokenizer.encode(text)[-5:]
    with pytest.raises(ValueError, match="prompt_len"):
        SentimentTask.create(tokenizer, prompt_len=1)


# ---------------------------------------------------------------- the gold reward

vader_needed = pytest.mark.skipif(
    __import__("importlib").util.find_spec("vaderSentiment") is None,
    reason="the gold reward needs the vaderSentiment package (pip install vaderSentiment)")


@vader_needed
def test_gold_is_vaders_score_of_the_decoded_continuation(task, tokenizer):
    sentences = POSITIVE + NEGATIVE + NEUTRAL
    responses, mask = _responses(tokenizer, sentences, task.response_len + 4)
    prompts = task.prompts("test")[:len(sentences)]
    gold = task.gold_reward(prompts, responses, mask)
    assert gold.dtype == np.float32 and gold.shape == (len(sentences),)
    expected = np.array([_vader(s) for s in sentences], np.float32)
    np.testing.assert_array_equal(gold, expected)  # the same float32 of VADER's own score
    assert (gold[:3] > 0.3).all() and (gold[3:6] < -0.3).all() and (gold[6:] == 0).all()


@vader_needed
def test_tokens_after_eos_and_masked_positions_do_not_change_gold(task, tokenizer):
    length = 10
    clean, mask = _responses(tokenizer, POSITIVE + NEGATIVE, length)
    awful, great = tokenizer.index["awful"], tokenizer.index["great"]
    # PAD positions (mask 0) filled with strong words instead of PAD.
    dirty, dirty_mask = _responses(tokenizer, POSITIVE + NEGATIVE, length, pad_tail=awful)
    np.testing.assert_array_equal(dirty_mask, mask)
    prompts = task.prompts("train")[:len(clean)]
    gold = task.gold_reward(prompts, clean, mask)
    np.testing.assert_array_equal(task.gold_reward(prompts, dirty, mask), gold)
    # Tokens after EOS with mask 1 (a malformed mask) are cut at EOS all the same.
    np.testing.assert_array_equal(task.gold_reward(prompts, np.where(mask > 0, clean, great), np.ones_like(mask)), gold)
    # Mask 0 without an EOS before it (a mask cut elsewhere): the masked words are not read.
    cut = np.array([[great, great, awful, awful, awful] + [0] * (length - 5)])
    cut_mask = np.array([[1.0, 1.0] + [0.0] * (length - 2)], np.float32)
    np.testing.assert_array_equal(task.gold_reward(prompts[:1], cut, cut_mask),
                                  np.float32(_vader("great great")))
    # ...and the same words before EOS do change it, so the checks above could fail.
    assert task.gold_reward(prompts[:1], np.array([[awful, 2] + [0] * (length - 2)]), mask[:1]) < 0


@vader_needed
def test_gold_with_pad_equal_to_eos():
    tok = WordTokenizer(bos=False, pad_is_eos=True)
    task = SentimentTask.create(tok, response_len=12)
    responses, mask = _responses(tok, POSITIVE, 12)
    np.testing.assert_array_equal(task.gold_reward(task.prompts("train")[:3], responses, mask),
                                  np.array([_vader(s) for s in POSITIVE], np.float32))


@vader_needed
def test_interface_gold_reward_inside_jit_and_vmap(task, tokenizer):
    sentences = POSITIVE + NEGATIVE
    responses, mask = _responses(tokenizer, sentences, task.response_len)
    prompts = task.prompts("test")[:len(sentences)]
    expected = task.gold_reward(prompts, responses, mask)
    args = tuple(jnp.asarray(a) for a in (prompts, responses, mask))

    # The task as a pytree argument (no leaves; hashed into the compiled program's key) ...
    as_argument = jax.jit(lambda t, *a: interface.gold_reward(t, *a))
    np.testing.assert_array_equal(np.asarray(as_argument(task, *args)), expected)
    # ... and as a static argument.
    as_static = jax.jit(interface.gold_reward, static_argnums=0)
    np.testing.assert_array_equal(np.asarray(as_static(task, *args)), expected)

    # Under vmap (e.g. a sweep's run axis): [R, B, ...] → [R, B], each run its own batch.
    stacked = tuple(jnp.stack([a, a[::-1]]) for a in args)
    gold = jax.jit(jax.vmap(lambda *a: interface.gold_reward(task, *a)))(*stacked)
    np.testing.assert_array_equal(np.asarray(gold), np.stack([expected, expected[::-1]]))


def test_task_hashes_by_content(task, tokenizer):
    same = SentimentTask.create(tokenizer, response_len=12)
    assert same == task and hash(same) == hash(task)
    assert SentimentTask.create(tokenizer, response_len=13) != task
    assert jax.tree.leaves(task) == []  # everything is static: nothing is traced


# ---------------------------------------------------------------- Bradley–Terry labels


def _pairs(n: int, length: int = 4, prompt_len: int = 3):
    prompts = np.arange(n * prompt_len, dtype=np.int32).reshape(n, prompt_len)
    a = np.full((n, length), 5, np.int32)
    b = np.full((n, length), 7, np.int32)
    return prompts, a, np.ones((n, length), np.float32), b, np.full((n, length), 0.5, np.float32)


@pytest.mark.parametrize("gap,noise,temperature", [(0.3, 0.0, 0.1), (-0.5, 0.0, 0.25),
                                                   (0.3, 0.2, 0.1), (0.8, 0.1, 1.0), (0.0, 0.3, 0.5)])
def test_bradley_terry_frequency(gap, noise, temperature):
    """The frequency of "a chosen" over n iid pairs is Binomial(n, p_a)/n with
    p_a = σ(gap/T)(1 − ε) + (1 − σ(gap/T))ε; its standard error is √(p_a(1 − p_a)/n). We accept
    |freq − p_a| ≤ 5 SE: a correct sampler fails with probability 5.7e-7 per case, while the
    likeliest mistakes — noise ignored, noise applied twice, temperature ignored, sign swapped —
    each move the frequency by ≥ 0.03 in at least one case (≥ 12 SE at n = 40,000, where
    SE ≤ 0.0025); the gap-0 case checks that equal golds give a fair coin whatever ε and T."""
    n = 40_000
    prompts, a, mask_a, b, mask_b = _pairs(n)
    gold_a = np.full((n,), 0.1 + gap, np.float32)
    gold_b = np.full((n,), 0.1, np.float32)
    pairs = label_pairs(prompts, a, mask_a, b, mask_b, gold_a, gold_b, jax.random.key(3), noise, temperature)
    assert set(pairs) == set(PAIR_SET_KEYS) and set(PAIR_KEYS) <= set(pairs)
    a_chosen = pairs["chosen"][:, 0] == 5
    # The chosen side moves with its mask and gold; the rejected side is the other one.
    np.testing.assert_array_equal(pairs["chosen_mask"][:, 0] == 1.0, a_chosen)
    np.testing.assert_array_equal(pairs["rejected"][:, 0] == 7, a_chosen)
    if gap:  # with equal golds the gold columns cannot tell the sides apart
        np.testing.assert_array_equal(pairs["gold_chosen"] == gold_a, a_chosen)
    np.testing.assert_array_equal(pairs["prompt"], prompts)
    p = float(choice_probability(gold_a[0], gold_b[0], noise, temperature))
    sigma = 1 / (1 + np.exp(-(float(gold_a[0]) - float(gold_b[0])) / temperature))
    assert p == pytest.approx(sigma * (1 - noise) + (1 - sigma) * noise, abs=1e-12)
    se = np.sqrt(p * (1 - p) / n)
    assert abs(a_chosen.mean() - p) <= 5 * se, (a_chosen.mean(), p, se)


def test_label_pairs_is_deterministic_and_checks_its_arguments():
    prompts, a, mask_a, b, mask_b = _pairs(64)
    gold_a, gold_b = np.linspace(-1, 1, 64, dtype=np.float32), np.zeros(64, np.float32)
    args = (prompts, a, mask_a, b, mask_b, gold_a, gold_b, jax.random.key(0), 0.1, 0.2)
    first, second = label_pairs(*args), label_pairs(*args)
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])
    with pytest.raises(ValueError, match="label_noise"):
        label_pairs(*args[:-2], 0.5, 0.2)
    with pytest.raises(ValueError, match="temperature"):
        label_pairs(*args[:-1], 0.0)
    with pytest.raises(ValueError, match="shape|want"):
        label_pairs(prompts, a, mask_a, b[:, :2], mask_b, gold_a, gold_b, jax.random.key(0))


def test_with_pairs_attaches_hashable_pairs(task, tokenizer):
    n, length = 16, task.response_len
    prompts = task.prompts("train")[:n]
    a = np.full((n, length), tokenizer.index["great"], np.int32)
    b = np.full((n, length), tokenizer.index["awful"], np.int32)
    ones = np.ones((n, length), np.float32)
    pairs = label_pairs(prompts, a, ones, b, ones, np.ones(n, np.float32), -np.ones(n, np.float32),
                        jax.random.key(0), 0.0, 0.1)
    with_train = task.with_pairs(train=pairs)
    assert task.preference_pairs("train") is None  # the original task is unchanged
    got = with_train.preference_pairs("train")
    for k in PAIR_SET_KEYS:
        np.testing.assert_array_equal(got[k], pairs[k])
    assert with_train.preference_pairs("test") is None
    # A gap of 2 at T = 0.1 gives σ(20): a always chosen (P(b) = 2e-9).
    assert (got["chosen"] == a).all()
    # Hash by content: equal pairs, equal tasks; different pairs, different tasks.
    assert task.with_pairs(train=dict(pairs)) == with_train and hash(task.with_pairs(train=pairs)) == hash(with_train)
    swapped = dict(pairs, chosen=pairs["rejected"], rejected=pairs["chosen"])
    assert task.with_pairs(train=swapped) != with_train
    with pytest.raises(ValueError, match="tokens"):
        task.with_pairs(test=dict(pairs, prompt=pairs["prompt"][:, 1:]))
    with pytest.raises(ValueError, match="missing"):
        task.with_pairs(test={k: v for k, v in pairs.items() if k != "chosen_mask"})


@vader_needed
def test_label_samples_scores_with_the_gold(task, tokenizer):
    sentences_a, sentences_b = POSITIVE, NEGATIVE
    a, mask_a = _responses(tokenizer, sentences_a, task.response_len)
    b, mask_b = _responses(tokenizer, sentences_b, task.response_len)
    prompts = task.prompts("train")[:3]
    pairs = task.label_samples(prompts, a, mask_a, b, mask_b, jax.random.key(1), 0.0, 0.01)
    # Gold gaps ≥ 0.6 at T = 0.01: σ(60), the positive side is always chosen.
    np.testing.assert_array_equal(pairs["chosen"], a)
    np.testing.assert_array_equal(pairs["gold_chosen"], task.gold_reward(prompts, a, mask_a))


def test_prompt_families_are_the_tasks_domains_inside_jit(task):
    """`domain_ids` finds each encoded prompt's family (its `domains` row) under jit, for both
    splits; a prompt that is none of the task's gives −1 (counted in no domain)."""
    from kltrust import domains

    assert domains.num_domains(task) == len(task.domain_names()) > 1
    for split in ("train", "test"):
        prompts = task.prompts(split)[::37]
        ids = jax.jit(lambda p: domains.prompt_domains(task, p))(prompts)
        np.testing.assert_array_equal(ids, task.domains(split)[::37])
    stranger = np.full((1, task.prompt_len), task.filler_id, np.int32)
    assert int(domains.prompt_domains(task, stranger)[0]) == -1
