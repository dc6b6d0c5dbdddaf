"""Short English prompt openers for the controlled-sentiment task: templates × slot fillers.

Every prompt opens a piece of text in one of `DOMAINS` (a review, a story, a message) and stops
where its sentiment would begin: "I bought the desk lamp last week, and", "Hello Sam, about the
move:". The wording is neutral on purpose — every prompt has VADER compound score 0
(tests/test_sentiment_prompts.py checks it) — so that the sentiment of a sample is the policy's
doing, not the prompt's.

Construction (deterministic: no random draw anywhere, the same `PROMPTS_VERSION` gives the same
rows in the same order): each domain has templates with one ``{subject}`` slot and one ``{detail}``
slot; a prompt is a template filled with one subject and one detail of its domain. The held-out
split holds out *subjects*: the subjects at positions ``holdout_every − 1, 2·holdout_every − 1, …``
of each domain's subject list, with every template and detail, are test prompts, the others train.
So the test split is disjoint from train (no test prompt mentions a train subject) and measures
whether what a policy or a reward model learnt carries over to new things to write about.

Rows: ``text`` (str), ``domain`` (index into `DOMAINS`), ``template`` (index into the domain's
templates) — a later issue conditions on the domain.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# Bump when any template or filler changes: the TFDS builder's version follows it.
PROMPTS_VERSION = "1.0.0"


class Domain(NamedTuple):
    """One kind of text: its templates (each with ``{subject}`` and ``{detail}``) and fillers."""

    name: str
    templates: tuple[str, ...]
    subjects: tuple[str, ...]
    details: tuple[str, ...]


_TIMES = ("last week", "on Monday", "in March", "a month ago", "over the summer", "yesterday")
_PEOPLE = ("Sam", "Alex", "Maya", "Jordan", "Priya", "Tom", "Lena", "Omar")

DOMAINS: tuple[Domain, ...] = (
    Domain("product_review",
           ("I bought the {subject} {detail}, and", "Review of the {subject}, bought {detail}:",
            "The {subject} I ordered {detail} is"),
           ("desk lamp", "kettle", "backpack", "phone case", "blender", "office chair", "toaster",
            "rain jacket", "pair of headphones", "water bottle", "coffee grinder", "laptop stand",
            "umbrella", "wall clock", "bread maker"),
           _TIMES),
    Domain("film_review",
           ("We watched {subject} {detail}, and the film", "My review of {subject}, seen {detail}:",
            "Having seen {subject} {detail}, I think it"),
           ("the new detective film", "the documentary about bees", "the space drama",
            "the animated film about a fox", "the three-hour western", "the courtroom drama",
            "the remake of the old musical", "the film about a chess player", "the spy sequel",
            "the silent film at the museum", "the film set on a train", "the film about two brothers"),
           ("at the cinema", "on a plane", "at home", "last night", "on Saturday", "with my sister")),
    Domain("restaurant_review",
           ("We had dinner at {subject} {detail}, and the food", "Notes on {subject}, visited {detail}:",
            "The service at {subject} {detail} was"),
           ("the noodle bar on Main Street", "the new pizza place", "the hotel restaurant",
            "the taco truck near the station", "the sandwich shop", "the corner diner",
            "the seafood place by the harbour", "the curry house", "the vegetarian cafe",
            "the steakhouse downtown", "the bakery on the square", "the ramen shop"),
           ("on Friday", "for lunch", "last month", "with two colleagues", "on my birthday",
            "after the concert")),
    Domain("book_review",
           ("I finished {subject} {detail}, and", "A few words on {subject}, read {detail}:",
            "Reading {subject} {detail}, I found it"),
           ("the book about a lighthouse keeper", "the biography of the engineer",
            "the history of the railway", "the cookbook from the island", "the poetry collection",
            "the travel memoir", "the fantasy trilogy", "the book on gardening",
            "the short story collection", "the science book about sleep", "the detective story",
            "the illustrated book about the moon"),
           ("in August", "in two days", "for my book club", "on the train", "this winter",
            "over the weekend")),
    Domain("trip_report",
           ("Our trip to {subject} {detail} was", "A report from {subject}, where we went {detail}:",
            "We spent a few days in {subject} {detail}, and"),
           ("the coast", "the mountains", "Lisbon", "the lake district", "Kyoto", "the desert",
            "a small island", "the capital", "the old harbour town", "the national park",
            "the north of Scotland", "a farm in the valley"),
           ("in April", "by train", "with the kids", "last autumn", "for a wedding", "by bike")),
    Domain("message",
           ("Hello {subject}, about {detail}:", "Hi {subject}, quick note about {detail}.",
            "{subject}, I wanted to tell you about {detail}."),
           _PEOPLE + ("Grandma", "Mr. Lee", "Aunt Rosa", "the team"),
           ("the weekend", "the move", "the new job", "the dinner on Sunday", "the exam results",
            "the neighbours")),
    Domain("story_opening",
           ("It was {detail} when {subject}", "{subject} opened the door {detail} and",
            "Nobody expected {subject} to come back {detail}, but"),
           ("the old fisherman", "my brother", "the new teacher", "the girl from next door",
            "the stranger in the long coat", "the baker", "our landlord", "the youngest sister",
            "the night guard", "the mayor", "the twins", "the postman"),
           ("just after midnight", "early in the morning", "on the first day of spring",
            "in the middle of the storm", "late on a Tuesday", "on the last day of school")),
)

__all__ = ["DOMAINS", "PROMPTS_VERSION", "Domain", "prompt_rows"]


def _render(template: str, subject: str, detail: str) -> str:
    text = template.format(subject=subject, detail=detail)
    return text[0].upper() + text[1:]  # a story may open with its subject: capitalise it


def prompt_rows(split: str, holdout_every: int = 5,
                domains: Sequence[Domain] = DOMAINS) -> dict[str, np.ndarray]:
    """The prompts of ``split`` ("train" or "test"), in a fixed order (domain, subject, template,
    detail): ``text`` object [N] of str, ``domain`` int32 [N], ``template`` int32 [N].

    The test split holds the subjects at index ≡ holdout_every − 1 (mod holdout_every) of each
    domain (module docstring). Raises ValueError on an unknown split, holdout_every < 2, or if two
    rows would render the same text (the templates must keep prompts distinct).
    """
    if split not in ("train", "test"):
        raise ValueError(f"prompt_rows: split must be 'train' or 'test', got {split!r}.")
    if not (isinstance(holdout_every, int) and holdout_every >= 2):
        raise ValueError(f"prompt_rows: holdout_every must be an integer >= 2, got {holdout_every!r}.")
    texts, domain_ids, template_ids, seen = [], [], [], set()
    for d, domain in enumerate(domains):
        for s, subject in enumerate(domain.subjects):
            if (s % holdout_every == holdout_every - 1) != (split == "test"):
                continue
            for (t, template), detail in itertools.product(enumerate(domain.templates), domain.details):
                text = _render(template, subject, detail)
                if text in seen:
                    raise ValueError(f"prompt_rows: {text!r} rendered twice; make the fillers distinct.")
                seen.add(text)
                texts.append(text)
                domain_ids.append(d)
                template_ids.append(t)
    return {"text": np.array(texts, dtype=object), "domain": np.array(domain_ids, np.int32),
            "template": np.array(template_ids, np.int32)}
