"""The sentiment task's prompt openers and their TFDS builder (kltrust/tasks/sentiment/prompts.py,
datasets.py): enough distinct prompts, disjoint held-out split, deterministic, neutral."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from kltrust.tasks.sentiment import DOMAINS, PROMPTS_VERSION, SentimentPrompts, load_prompt_rows, prompt_rows

# SHA-256 of the rows of version 1.0.0 ("text\tdomain\ttemplate" lines). A change of any template
# or filler changes it: bump PROMPTS_VERSION (the builder's version) and these digests together.
DIGESTS = {
    "1.0.0": {"train": "6bdd689fd825c36790b75ddd3ed61311ffedc72fa39f7ed830b0bd5ac7a85063",
              "test": "d2c3c5004f742e1655027181746f6a86f2c6998fbf5cf10d66883380d828f2a3"},
}


def _digest(rows: dict[str, np.ndarray]) -> str:
    lines = (f"{t}\t{d}\t{m}" for t, d, m in zip(rows["text"], rows["domain"], rows["template"]))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_enough_distinct_prompts_in_disjoint_splits():
    train, test = prompt_rows("train"), prompt_rows("test")
    assert len(set(train["text"])) == len(train["text"])
    assert len(set(test["text"])) == len(test["text"])
    assert not set(train["text"]) & set(test["text"])
    assert len(train["text"]) + len(test["text"]) >= 1000
    assert len(test["text"]) >= 200  # enough held-out prompts for an evaluation batch
    # Every domain is in both splits (a later issue compares domains).
    for rows in (train, test):
        assert set(rows["domain"].tolist()) == set(range(len(DOMAINS)))
        assert rows["domain"].dtype == np.int32 and rows["template"].dtype == np.int32


def test_held_out_subjects_never_appear_in_train():
    train = " | ".join(prompt_rows("train")["text"])
    for domain in DOMAINS:
        held = domain.subjects[4::5]  # holdout_every = 5: indices 4, 9, 14, ...
        for subject in held:
            # Subjects are distinct phrases; none of the held-out ones is in a train prompt.
            assert f" {subject}" not in train and not train.startswith(subject), subject


def test_deterministic_and_pinned_per_version():
    for split in ("train", "test"):
        first, second = prompt_rows(split), prompt_rows(split)
        for key in first:
            np.testing.assert_array_equal(first[key], second[key])
        assert _digest(first) == DIGESTS[PROMPTS_VERSION][split], (
            "prompts changed: bump PROMPTS_VERSION and the digests in this test")
    assert str(SentimentPrompts.VERSION) == PROMPTS_VERSION


def test_builder_writes_the_in_memory_rows(tmp_path):
    for split in ("train", "test"):
        read, built = load_prompt_rows(split, str(tmp_path)), prompt_rows(split)
        assert read["text"].tolist() == built["text"].tolist()
        assert all(isinstance(t, str) for t in read["text"])
        np.testing.assert_array_equal(read["domain"], built["domain"])
        np.testing.assert_array_equal(read["template"], built["template"])
    # A second builder over the same directory reads what the first wrote (same version, same rows).
    again = load_prompt_rows("test", str(tmp_path))
    assert again["text"].tolist() == prompt_rows("test")["text"].tolist()


def test_other_holdout_is_another_partition_of_the_same_prompts():
    five = set(prompt_rows("train")["text"]) | set(prompt_rows("test")["text"])
    three_test = prompt_rows("test", holdout_every=3)["text"]
    three = set(prompt_rows("train", holdout_every=3)["text"]) | set(three_test)
    assert three == five and len(three_test) > len(prompt_rows("test")["text"])
    with pytest.raises(ValueError, match="holdout_every"):
        prompt_rows("train", holdout_every=1)
    with pytest.raises(ValueError, match="split"):
        prompt_rows("validation")


def test_prompts_are_neutral_under_vader():
    """The openers leave sentiment to the continuation: VADER scores every one exactly 0."""
    pytest.importorskip("vaderSentiment", reason="the gold reward's package (pip install vaderSentiment)")
    from kltrust.tasks.sentiment.gold import vader_compound

    for split in ("train", "test"):
        texts = prompt_rows(split)["text"].tolist()
        scores = vader_compound(texts)
        nonzero = [t for t, s in zip(texts, scores) if s != 0.0]
        assert not nonzero, nonzero[:5]
