"""The real-model RLHF program's configuration layer: defaults, checks, and the typed `RealSpec`.

The program (`kltrust.train.real_rlhf`) trains a LoRA adapter of a pretrained model from an
installed package (`kltrust.models.pretrained`) on the controlled-sentiment task
(`kltrust.tasks.sentiment`, VADER gold), against a proxy reward on the model's own trunk
(`kltrust.models.trunk_reward`), with the reference = the base weights. Its ``rl`` block is the
token programs' own (`kltrust.train.token_config`: the same methods, placements, estimators,
controllers and `rlhf.HParams` knobs, checked by the same `validate_rl`), and so is its
``guards`` block (`token_config.guard_defaults` / `validate_guards`: the KL guard of
`kltrust.train.kl_guard`, off by default); the rest is read here, once, into a frozen
`RealSpec`. A bad key or value is a `ConfigError` naming it, before any model is loaded or
anything compiles.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from kltrust.errors import check, check_choice, is_finite, is_int
from kltrust.models import lora
from kltrust.models.pretrained import MODELS
from kltrust.models.pretrained.config import DTYPES
from kltrust.models.trunk_reward import POOLINGS
from kltrust.train import rlhf, token_config
from kltrust.train.config_checks import check_keys
from kltrust.train.token_spec import GuardSpec

LORA_TARGETS = {"attention": lora.PRETRAINED_ATTENTION, "mlp": lora.PRETRAINED_MLP,
                "all": lora.PRETRAINED_ATTENTION + lora.PRETRAINED_MLP}


def defaults() -> ml_collections.ConfigDict:
    """Every field of a real-model config, with its CPU-sized default (the ``grpo`` preset)."""
    c = ml_collections.ConfigDict()
    c.preset = "grpo"
    c.name = "grpo"  # the policy stage's directory under the root
    c.seed = 0
    c.num_seeds = 1  # seeds run one after another (a 135M model per run on 2 cores)
    c.model = ml_collections.ConfigDict(dict(
        name="smollm2-135m", dtype="float32", lora_rank=8, lora_alpha=16.0,
        lora_targets="attention",
        remat=False))  # recompute each layer in the backward pass: less memory, same numbers
    # prompt_len 0: the longest encoded prompt (no opener cut); eval prompts are the first of the
    # test split (held-out subjects).
    c.task = ml_collections.ConfigDict(dict(prompt_len=0, response_len=24, num_eval_prompts=32))
    # Reference samples labelled by a Bradley–Terry draw on VADER: P(a ≻ b) = σ((g_a − g_b)/T),
    # flipped with probability label_noise. T = 0.1: VADER differences between two continuations
    # are ~0.1–0.5, so T = 1 would make most labels near coin flips.
    c.pairs = ml_collections.ConfigDict(dict(num_train=512, num_test=128, label_noise=0.0,
                                             temperature=0.1, batch_size=64))
    # l2 on standardised features, chosen from l2_grid by 4-fold cross-validation on the training
    # pairs (576 features against 512 pairs: at 1e-2 the head separates the training pairs and
    # is near chance on held-out ones; docs/real_models.md has the table).
    c.rm = ml_collections.ConfigDict(dict(pooling="mean", l2_grid=(0.01, 0.1, 1.0, 10.0, 100.0),
                                          cv_folds=4, steps=1000, learning_rate=1e-2))
    rl = token_config.defaults().rl
    rl.update(dict(method="grpo", kl_placement="loss", kl_estimator="k3", batch_prompts=4,
                   group_size=4, epochs=1, minibatches=1, num_updates=20, updates_per_eval=5,
                   best_of_n=(1, 4, 16)))
    rl.hparams.update(dict(beta=0.05, learning_rate=1e-3))
    c.rl = rl
    # The token programs' guards, with their defaults (`token_config.guard_defaults`): the
    # non-finite guard, and the KL guard, off unless a budget or a jump factor is set, e.g.
    # --config.guards.max_sequence_kl=20 (nats of sequence KL; `kltrust.train.kl_guard`).
    c.guards = token_config.guard_defaults()
    return c


@dataclasses.dataclass(frozen=True)
class PairsSpec:
    num_train: int
    num_test: int
    label_noise: float
    temperature: float
    batch_size: int


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    pooling: str
    l2_grid: tuple[float, ...]
    cv_folds: int
    steps: int
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class RealSpec:
    """One real-model run, read once from its config. ``static`` has no models yet (policy,
    reference and reward are None): the program fills them once the model is loaded."""

    preset: str
    name: str
    seed: int
    num_seeds: int
    model_name: str
    dtype: str
    remat: bool
    lora: lora.LoRAConfig
    prompt_len: int | None
    response_len: int
    num_eval_prompts: int
    pairs: PairsSpec
    rm: HeadSpec
    method: str
    static: rlhf.Static
    hparams_values: rlhf.HParams
    num_updates: int
    updates_per_eval: int
    best_of_n: tuple[int, ...]
    guards: GuardSpec
    config_json: str


def validate(config: ml_collections.ConfigDict) -> None:
    """Every check, before anything loads: a `ConfigError` naming the key, value and what is allowed."""
    check_keys(config, defaults())
    check(bool(config.name) and "/" not in config.name and config.name not in (
        "pairs", "reward_model", "tfds", ".", ".."), "name", config.name,
          "a directory name other than pairs, reward_model, tfds")
    check(is_int(config.seed, 0) and config.seed < 2**31, "seed", config.seed, "an integer in [0, 2**31)")
    check(is_int(config.num_seeds, 1), "num_seeds", config.num_seeds, "an integer >= 1")
    m = config.model
    check_choice(m.name, tuple(MODELS), "model.name")
    check_choice(m.dtype, DTYPES, "model.dtype")
    check(is_int(m.lora_rank, 1), "model.lora_rank", m.lora_rank, "an integer >= 1")
    check(is_finite(m.lora_alpha) and m.lora_alpha > 0, "model.lora_alpha", m.lora_alpha, "finite and > 0")
    check_choice(m.lora_targets, tuple(LORA_TARGETS), "model.lora_targets")
    check(isinstance(m.remat, bool), "model.remat", m.remat, "True or False")
    t = config.task
    check(is_int(t.prompt_len, 0), "task.prompt_len", t.prompt_len, "an integer >= 0 (0: fit the longest)")
    check(is_int(t.response_len, 1), "task.response_len", t.response_len, "an integer >= 1")
    check(is_int(t.num_eval_prompts, 1), "task.num_eval_prompts", t.num_eval_prompts, "an integer >= 1")
    p = config.pairs
    for key in ("num_train", "num_test", "batch_size"):
        check(is_int(p[key], 1), f"pairs.{key}", p[key], "an integer >= 1")
    check(is_finite(p.label_noise) and 0.0 <= p.label_noise < 0.5, "pairs.label_noise", p.label_noise,
          "in [0, 0.5)")
    check(is_finite(p.temperature) and p.temperature > 0, "pairs.temperature", p.temperature, "finite and > 0")
    r = config.rm
    check_choice(r.pooling, POOLINGS, "rm.pooling")
    check(len(r.l2_grid) >= 1 and all(is_finite(v) and v >= 0 for v in r.l2_grid), "rm.l2_grid",
          r.l2_grid, "a non-empty tuple of finite numbers >= 0")
    check(is_int(r.cv_folds, 2), "rm.cv_folds", r.cv_folds, "an integer >= 2")
    check(is_int(r.steps, 1), "rm.steps", r.steps, "an integer >= 1")
    check(is_finite(r.learning_rate) and r.learning_rate > 0, "rm.learning_rate", r.learning_rate,
          "finite and > 0")
    # The token programs' guard and rl checks, on one device (shards = 1).
    token_config.validate_guards(config.guards)
    token_config.validate_rl(config.rl, config.guards, shards=1)


def spec_from_config(config: ml_collections.ConfigDict) -> RealSpec:
    """``config`` validated (`validate`) and read once into a `RealSpec`."""
    validate(config)
    m, t, rl = config.model, config.task, config.rl
    return RealSpec(
        preset=config.preset, name=config.name, seed=config.seed, num_seeds=config.num_seeds,
        model_name=m.name, dtype=m.dtype, remat=m.remat,
        lora=lora.LoRAConfig(rank=m.lora_rank, alpha=float(m.lora_alpha),
                             targets=LORA_TARGETS[m.lora_targets]),
        prompt_len=t.prompt_len or None, response_len=t.response_len,
        num_eval_prompts=t.num_eval_prompts,
        pairs=PairsSpec(**config.pairs.to_dict()),
        rm=HeadSpec(**{**config.rm.to_dict(), "l2_grid": tuple(map(float, config.rm.l2_grid))}),
        method=rl.method, static=token_config.static_from_rl(rl, None, None, None),
        hparams_values=token_config.hparams_values(rl), num_updates=rl.num_updates,
        updates_per_eval=rl.updates_per_eval, best_of_n=tuple(rl.best_of_n),
        guards=token_config.guard_spec(config.guards),
        config_json=config.to_json_best_effort(indent=2, sort_keys=True))
