"""The token RLHF config: its schema (`defaults`), its checks (`validate`, before any data are
generated or anything compiled), and the one place a config becomes the typed `TokenSpec` the
library takes (`spec_from_config`; with the static `rlhf.Static` / array `rlhf.HParams` of a policy
stage). The registries decide what is allowed: token methods (`kltrust.train.methods`), preference
losses (`kltrust.objectives.preference`), KL estimators (`kltrust.kl`), β controllers
(`kltrust.controllers`).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kltrust import components, controllers, kl, tracking
from kltrust.errors import check, check_choice, from_field_error, is_finite, is_int
from kltrust.models.transformer import TransformerConfig
from kltrust.objectives import grpo, preference
from kltrust.tasks import text, text_data
from kltrust.train import reward_model, rlhf
from kltrust.train import tokens as tok
from kltrust.train.config_checks import (check_finite, check_keys, check_knobs, check_range,
                                         inf_fields, mesh_batch_shards)
from kltrust.train.methods import METHODS, TokenMethod
from kltrust.train.domain_config import domain_spec, validate_domains
from kltrust.train.token_spec import KL_ACTIONS, DataSpec, FitSpec, GuardSpec, TokenSpec



def defaults() -> ml_collections.ConfigDict:
    """Every field a token RLHF config has, with its default (the ``ppo`` stage). The presets
    (configs/rlhf.py) start from these, and `validate` refuses a key that is not here or a value of
    another type.
    """
    c = ml_collections.ConfigDict()
    c.preset = "ppo"
    c.name = "ppo"  # the policy stage's directory under the pipeline root
    c.stage = "policy"  # or "sft", "reward_model"
    c.seed = 0
    c.num_seeds = 3
    # The synthetic language (`kltrust.tasks.text.LanguageSpec`).
    c.task = ml_collections.ConfigDict(dict(
        num_words=20, successors=4, eos_prob=0.08, num_good=4, good_weight=0.35, prompt_len=4,
        response_len=12, seed=0, good_scale=3.0, good_saturation=2.0, repeat_penalty=1.0,
        ungrammatical_penalty=1.0))
    # Data sets (TFDS builders of `kltrust.tasks.text_data`, written under WORKDIR/tfds).
    c.data = ml_collections.ConfigDict(dict(
        source="synthetic",  # or "tfds:tiny_shakespeare" (sft_shakespeare)
        num_sft=8192, num_prompts=2048, num_eval_prompts=256, num_pairs=4096,
        num_eval_pairs=1024, label_noise=0.0, bt_temperature=1.0, seq_len=64,
        tfds_dir=""))  # where a prepared TFDS set lives ("": TFDS's default); source 'tfds:...' only
    c.model = ml_collections.ConfigDict(dict(num_layers=2, width=64, num_heads=4, critic="shared"))
    c.reward_model = ml_collections.ConfigDict(dict(num_layers=2, width=64, num_heads=4))
    # SFT: held-out KL(true ‖ model) is lowest near 1000 steps and rises after (overfitting).
    c.sft = ml_collections.ConfigDict(dict(steps=1000, batch_size=64, learning_rate=1e-3,
                                           eval_every=250))
    # The reward model overfits its 4096 pairs within a few hundred steps (held-out BT loss rises),
    # so it is trained briefly: early stopping by the step count.
    c.rm = ml_collections.ConfigDict(dict(steps=250, batch_size=64, learning_rate=5e-4,
                                          weight_decay=0.0, eval_every=50))
    c.rl = ml_collections.ConfigDict(dict(
        method="ppo", kl_placement="reward", kl_estimator="k1", controller="fixed",
        batch_prompts=64, group_size=1, epochs=2, minibatches=4, num_updates=200,
        updates_per_eval=10, max_grad_norm=1.0, preference_loss="sigmoid", cg_iters=10,
        max_backtracks=10, token_average="sequence", eval_kl=True,
        # Rows per chunk of the teacher-forced log-probs / exact KL / entropy pass (0: the whole
        # batch at once): bounds the [rows, L, V] logits of a large vocabulary (rlhf.Static).
        stats_chunk=0,
        # The policy's log-probs, entropy and exact KL from the logits the sampler computed with
        # its KV cache instead of a second, teacher-forced forward: the same up to float32
        # rounding, one policy forward fewer per update (`kltrust.rollout.token_rollout`).
        sampler_stats=False,
        # The reference follows the policy every rl.hparams.ref_sync_every updates with mixup
        # rl.hparams.ref_sync_alpha (TR-DPO; an EMA with every = 1), `kltrust.reference`.
        ref_sync=False,
        # TRPO with rl.kl_placement="budget": step back toward the reference when the budget is
        # exceeded (Achiam et al. 2017's recovery), instead of rejecting every update.
        trpo_recovery=False,
        best_of_n=(1, 2, 4, 8, 16, 32, 64),
        # `rlhf.HParams`'s declared knobs, with every registered β controller's group (rl.controller
        # chooses whose are read) and every registered preference loss's (dpo, dpo_online read
        # rl.preference_loss's): e.g. preference.sigmoid.label_smoothing, preference.simpo.gamma.
        hparams=components.config_defaults(rlhf.HParams)))
    # Devices: runs (the seeds) × data (prompts, sequences, pairs) × fsdp (transformer weights and
    # Adam state split over devices, the batch too); -1 = the rest. See kltrust.sharding.
    c.mesh = ml_collections.ConfigDict(dict(runs=1, data=-1, fsdp=1))
    c.guards = guard_defaults()
    # A planted reward bug (issue 24's KL alarm test bed): the proxy pays `bonus` for every
    # occurrence of token id `token` (a word: NUM_SPECIAL <= id < NUM_SPECIAL + task.num_words) in
    # a response; -1 turns it off. Only the policy stage sees it (the reward model is unchanged).
    # `domain` >= 0 confines it to the prompts of that domain: a blind spot of one domain's proxy.
    c.proxy_bug = ml_collections.ConfigDict(dict(token=-1, bonus=0.0, domain=-1))
    # Prompt domains (`kltrust.domains`): a prompt's domain is its first word's index mod `count`
    # (1: none). `kl_scale` (empty: all 1) gives each domain's KL envelope as a multiple of the
    # global one; `control` "per_domain" gives each domain its own β controller (target
    # s_d·kl_target), TRPO budget (s_d·kl_budget_per_token) and KL-guard budget
    # (s_d·guards.max_sequence_kl); "global" keeps one, and still reports every metric per domain.
    c.domains = ml_collections.ConfigDict(dict(count=1, kl_scale=(), control="global"))
    # Where a policy stage's scalars go besides its JSON rows: TensorBoard always, W&B when
    # logging.wandb.enabled (kltrust.tracking; not part of the config its directory is claimed with).
    c.logging = tracking.defaults()
    return c


def guard_defaults() -> ml_collections.ConfigDict:
    """``config.guards`` of every token program (the synthetic pipeline and the real-model one,
    `kltrust.train.real_config`). A non-finite update is skipped; ``max_nonfinite_updates`` in a row
    stop the run (`kltrust.guards`). The KL guard (off by default: `kltrust.train.kl_guard`) rolls
    a run back; its budgets are sequence KLs in nats."""
    return ml_collections.ConfigDict(dict(
        max_nonfinite_updates=10, max_sequence_kl=0.0, kl_jump=0.0, kl_jump_from=0.5, kl_backoff=2.0,
        max_rollbacks=3,
        # What an alarm (a budget broken, a jump, a non-finite KL) does: "rollback" (to the last
        # passing evaluation, anchor strengthened), "stop" (the stage ends with KLGuardError) or
        # "warn" (training goes on); each writes an event with the run's samples.
        kl_action="rollback"))


STAGES = ("policy", "sft", "reward_model")
STAGE_KEYS = {  # the config parts each prerequisite stage depends on
    "sft": ("seed", "task", "data", "model", "sft"),
    "reward_model": ("seed", "task", "data", "reward_model", "rm"),
}
# Directories of the pipeline root that a policy stage's ``config.name`` must not take.
RESERVED_NAMES = ("sft", "reward_model", "tfds", "pipelines", ".", "..")


def validate(config: ml_collections.ConfigDict) -> None:
    """Every check that can fail, before data generation or compilation: a bad key or value is a
    `ConfigError` naming it (``config.KEY = VALUE: must be ...``)."""
    check_keys(config, defaults())
    check_choice(config.stage, STAGES, "stage")
    if config.stage == "policy":
        check(bool(config.name) and "/" not in config.name and config.name not in RESERVED_NAMES,
              "name", config.name, f"a directory name under the pipeline root other than "
              f"{RESERVED_NAMES} (it is the policy stage's directory)")
    check(is_int(config.seed, 0) and config.seed < 2**31, "seed", config.seed,
          "an integer in [0, 2**31)")
    check(is_int(config.num_seeds, 1), "num_seeds", config.num_seeds, "an integer >= 1")
    try:
        language_spec(config)
    except (TypeError, ValueError) as e:
        raise from_field_error(e, "task") from None
    source = config.data.source
    check(source == "synthetic" or (config.stage == "sft" and source.startswith("tfds:")
                                    and len(source) > len("tfds:")),
          "data.source", source, "'synthetic', or 'tfds:NAME' (a prepared TFDS text data set, e.g. "
          "'tfds:tiny_shakespeare') when config.stage is 'sft'")
    check(is_int(config.data.seq_len, 2), "data.seq_len", config.data.seq_len, "an integer >= 2")
    for part in ("model", "reward_model"):
        for key in ("num_layers", "width", "num_heads"):
            value = config[part][key]
            check(is_int(value, 1), f"{part}.{key}", value, "an integer >= 1")
        check(config[part].width % config[part].num_heads == 0, f"{part}.width", config[part].width,
              f"divisible by {part}.num_heads = {config[part].num_heads}")
    check_choice(config.model.critic, ("shared", "separate"), "model.critic")
    g = config.guards
    validate_guards(g)
    words = range(text.NUM_SPECIAL, text.NUM_SPECIAL + config.task.num_words)
    check(config.proxy_bug.token == -1 or (is_int(config.proxy_bug.token, 0)
                                           and config.proxy_bug.token in words),
          "proxy_bug.token", config.proxy_bug.token,
          f"-1 (no bug) or a word's token id in [{words.start}, {words.stop})")
    check(is_finite(config.proxy_bug.bonus) and config.proxy_bug.bonus >= 0, "proxy_bug.bonus",
          config.proxy_bug.bonus, "finite and >= 0")
    validate_domains(config)
    tracking.validate(config)
    for key in ("num_sft", "num_prompts", "num_eval_prompts", "num_pairs", "num_eval_pairs"):
        check(config.data[key] >= 1, f"data.{key}", config.data[key], ">= 1")
    check(0.0 <= config.data.label_noise < 0.5, "data.label_noise", config.data.label_noise,
          "in [0, 0.5)")
    check(is_finite(config.data.bt_temperature) and config.data.bt_temperature > 0,
          "data.bt_temperature", config.data.bt_temperature, "finite and > 0")
    shards = mesh_batch_shards(config)  # or a ConfigError naming config.mesh
    # Each process loads its own rows of a supervised batch, and each device holds an equal slice.
    per_batch = int(np.lcm(shards, jax.process_count()))
    for part in ("sft", "rm"):
        for key in ("steps", "batch_size"):
            check(config[part][key] >= 1, f"{part}.{key}", config[part][key], ">= 1")
        check(config[part].batch_size % per_batch == 0, f"{part}.batch_size",
              config[part].batch_size, f"a multiple of {per_batch} (the mesh's data × fsdp = "
              f"{shards}, and {jax.process_count()} process(es))")
        check(is_finite(config[part].learning_rate) and config[part].learning_rate > 0,
              f"{part}.learning_rate", config[part].learning_rate, "finite and > 0")
        check(is_int(config[part].eval_every, 0), f"{part}.eval_every", config[part].eval_every,
              "an integer >= 0 (0: evaluate at the end only)")
    check_range(config.rm, "weight_decay", 0.0, prefix="rm")
    if config.stage != "policy":
        return
    check(config.data.num_eval_prompts % shards == 0, "data.num_eval_prompts",
          config.data.num_eval_prompts, f"a multiple of the mesh's data × fsdp = {shards}")
    validate_rl(config.rl, g, shards)


def validate_guards(g: ml_collections.ConfigDict) -> None:
    """``config.guards`` (`guard_defaults`) of every token program."""
    check(is_int(g.max_nonfinite_updates, 1), "guards.max_nonfinite_updates",
          g.max_nonfinite_updates, "an integer >= 1")
    check(is_finite(g.max_sequence_kl) and g.max_sequence_kl >= 0, "guards.max_sequence_kl",
          g.max_sequence_kl,
          "finite and >= 0 (0 turns the budget off)")
    check(g.kl_jump == 0 or (is_finite(g.kl_jump) and g.kl_jump > 1), "guards.kl_jump", g.kl_jump,
          "0 (off) or a finite number > 1 (a factor)")
    check(is_finite(g.kl_jump_from) and g.kl_jump_from > 0, "guards.kl_jump_from", g.kl_jump_from,
          "finite and > 0")
    check(is_finite(g.kl_backoff) and g.kl_backoff > 1, "guards.kl_backoff", g.kl_backoff,
          "finite and > 1")
    check(is_int(g.max_rollbacks, 0), "guards.max_rollbacks", g.max_rollbacks, "an integer >= 0")
    check_choice(g.kl_action, KL_ACTIONS, "guards.kl_action")


def guard_spec(g: ml_collections.ConfigDict) -> GuardSpec:
    """The `GuardSpec` of a validated ``config.guards`` (`validate_guards`)."""
    return GuardSpec(**{f.name: g[f.name] for f in dataclasses.fields(GuardSpec)})


def validate_rl(rl: ml_collections.ConfigDict, g: ml_collections.ConfigDict, shards: int) -> None:
    """The policy stage's ``config.rl`` (with the guards it depends on, ``g``), on a mesh whose
    data × fsdp is ``shards``: the checks shared by every token program (the synthetic pipeline and
    the real-model one, `kltrust.train.real_config`)."""
    method = METHODS.get(rl.method, "rl.method")
    check(is_int(rl.stats_chunk, 0), "rl.stats_chunk", rl.stats_chunk,
          "an integer >= 0 (rows per chunk of the teacher-forced statistics; 0: the whole batch)")
    check(isinstance(rl.sampler_stats, bool), "rl.sampler_stats", rl.sampler_stats,
          "True or False")
    check(not (rl.sampler_stats and rl.stats_chunk), "rl.sampler_stats", rl.sampler_stats,
          f"False with rl.stats_chunk = {rl.stats_chunk} (the sampler keeps every step's logits; "
          "chunked statistics exist to avoid holding them)")
    if rl.stats_chunk:
        check(method.chunked_stats, "rl.stats_chunk", rl.stats_chunk,
              f"0 for method {rl.method!r} (it needs the whole batch's logits at once)")
    if not method.trains:  # best-of-n: samples from the reference only
        check(len(rl.best_of_n) >= 1 and all(is_int(n, 1) for n in rl.best_of_n), "rl.best_of_n",
              rl.best_of_n, "a non-empty tuple of integers >= 1")
        return
    check_choice(rl.kl_placement, method.placements, "rl.kl_placement",
                 f"for method {rl.method!r}")
    check_choice(rl.kl_estimator, rlhf.kl_estimators(), "rl.kl_estimator")
    if method.kl_in_loss_needs_gradient and rl.kl_placement == "loss":
        in_loss = kl.estimators(loss_term=True)  # those with a nonzero expected gradient there
        check(rl.kl_estimator in in_loss, "rl.kl_estimator", rl.kl_estimator,
              f"one of {in_loss} when the KL is in the {rl.method} loss (k1 has zero expected "
              "gradient there; 'exact' is not a per-sample loss term)")
    if rl.kl_placement != "loss":  # a correction changes only a differentiated loss term
        plain = ("exact",) + kl.estimators(reward_term=True)
        check(rl.kl_estimator in plain, "rl.kl_estimator", rl.kl_estimator,
              f"one of {plain} when rl.kl_placement is {rl.kl_placement!r} (a corrected "
              "estimator changes the gradient of a loss term only; use kl_placement='loss')")
    if g.max_sequence_kl > 0 or g.kl_jump > 0:
        check(rl.eval_kl, "rl.eval_kl", rl.eval_kl,
              "True when the KL guard is on (guards.max_sequence_kl or guards.kl_jump > 0): it "
              "watches the evaluated KL")
    check_choice(rl.controller, controllers.kinds(), "rl.controller")
    # Strings only some methods read are checked for every method: a typo must not wait for the
    # preset that reads it.
    preference.LOSSES.get(rl.preference_loss, "rl.preference_loss")
    components.validate_groups(preference.LOSSES, rl.hparams.preference, "rl.hparams.preference",
                               rl.preference_loss)
    check_choice(rl.token_average, grpo.TOKEN_AVERAGES, "rl.token_average")
    if rl.ref_sync:
        check(rl.kl_placement != "none" and not (
            rl.kl_placement == "implicit"
            and preference.LOSSES.get(rl.preference_loss).reference_free),
            "rl.ref_sync", rl.ref_sync,
            "False when the method applies no KL to a reference (kl_placement 'none' or a "
            "reference-free preference loss): there is nothing to sync")
    if rl.trpo_recovery:
        check(rl.method == "trpo" and rl.kl_placement == "budget", "rl.trpo_recovery",
              rl.trpo_recovery, "False unless rl.method is 'trpo' with rl.kl_placement 'budget' "
              "(it recovers the budget on the KL to the reference)")
    for key in ("batch_prompts", "group_size", "epochs", "minibatches", "num_updates",
                "updates_per_eval", "cg_iters", "max_backtracks"):
        check(is_int(rl[key], 1), f"rl.{key}", rl[key], "an integer >= 1")
    check_range(rl, "max_grad_norm", 0.0, low_open=True, prefix="rl", allow_inf=True)  # inf: none
    if method.exact_group:
        check(rl.group_size == method.min_group, "rl.group_size", rl.group_size,
              f"{method.min_group} for method {rl.method!r} (a pair per prompt)")
    elif method.min_group > 1:
        check(rl.group_size >= method.min_group, "rl.group_size", rl.group_size,
              f">= {method.min_group} for group baselines (method {rl.method!r})")
    batch = rl.batch_prompts if method.pairs_per_prompt else rl.batch_prompts * rl.group_size
    check(batch % rl.minibatches == 0, "rl.minibatches", rl.minibatches,
          f"a divisor of the batch ({batch} sequences or pairs)")
    check((batch // rl.minibatches) % shards == 0, "rl.batch_prompts", rl.batch_prompts,
          f"such that a minibatch ({batch // rl.minibatches} sequences or pairs) splits evenly "
          f"over the mesh's data × fsdp = {shards}")
    check(rl.num_updates % rl.updates_per_eval == 0, "rl.updates_per_eval", rl.updates_per_eval,
          f"a divisor of rl.num_updates = {rl.num_updates}")
    _check_hparams(rl, method)
    if rl.kl_placement == "none":
        check(rl.controller == "fixed", "rl.controller", rl.controller,
              "'fixed' when rl.kl_placement is 'none' (there is no KL to control)")


def _check_hparams(rl: ml_collections.ConfigDict, method: TokenMethod) -> None:
    """``rl.hparams`` against `rlhf.HParams`'s declared knobs, in declaration order (the chosen
    controller's group where it is declared), with `check_range`'s message (``config.rl.hparams.
    NAME = V: must be in (0.0, inf).``). Every knob is range-checked whichever method runs (as the
    token program always has); the preference group is checked in `validate`, with
    rl.preference_loss, and then only needs to be finite here."""
    hp = rl.hparams
    # Method-dependent: β must be > 0 for DPO (the preference loss's β) and for a multiplicative
    # controller (it cannot leave β = 0); otherwise its declared [0, inf) holds.
    positive = (method.anchor == "preference_beta"
                or controllers.get(rl.controller).beta_positive)
    fields = [f.name for f in dataclasses.fields(rlhf.HParams)]
    head = fields[:fields.index("controller")]  # the knobs declared before the controller group
    tail = tuple(name for name in fields if name not in head)
    # check_knobs skips the knobs named in ``unread``: the head, the controller group, the tail.
    check_knobs(rlhf.HParams, hp, prefix="rl.hparams",
                unread=tail + (("beta",) if positive else ()))
    if positive:
        check_range(hp, "beta", 0.0, low_open=True, prefix="rl.hparams")
    components.validate_groups(controllers.REGISTRY, hp.controller, "rl.hparams.controller",
                               chosen=rl.controller)
    check_knobs(rlhf.HParams, hp, prefix="rl.hparams", unread=tuple(head))
    # nan and ±inf everywhere, the unchosen controllers' and preference losses' groups included.
    check_finite(hp, prefix="rl.hparams", allow_inf=inf_fields(rlhf.HParams))


def language_spec(config: ml_collections.ConfigDict) -> text.LanguageSpec:
    """The synthetic language of ``config.task`` (checked by `text.LanguageSpec`)."""
    return text.LanguageSpec(**config.task.to_dict())


def _model(config, part: str, critic: str = "none") -> TransformerConfig:
    m = config[part]
    return tok.transformer_config(language_spec(config), num_layers=m.num_layers, width=m.width,
                                  num_heads=m.num_heads, critic=critic)


def stage_json(config: ml_collections.ConfigDict, stage: str) -> str:
    """The config parts a prerequisite stage depends on (`STAGE_KEYS`), as canonical JSON: the
    stage's ``stage_config.json``, compared byte for byte when a stage directory is reused."""
    return json.dumps({k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k])
                       for k in STAGE_KEYS[stage]}, sort_keys=True, default=str)


def static_from_config(config) -> rlhf.Static:
    """The policy stage's `rlhf.Static` (models as `LanguageModel` s, method settings)."""
    rl = config.rl
    critic = config.model.critic if METHODS.get(rl.method).critic else "none"
    return static_from_rl(rl, tok.Policy(_model(config, "model", critic)),
                          tok.Policy(_model(config, "model")),
                          reward_model.Scorer(_model(config, "reward_model"),
                                              config.proxy_bug.token, float(config.proxy_bug.bonus),
                                              config.proxy_bug.domain, config.domains.count),
                          per_domain=config.domains.control == "per_domain")


def static_from_rl(rl: ml_collections.ConfigDict, policy, reference, reward, *,
                   per_domain: bool = False) -> rlhf.Static:
    """`rlhf.Static` of a validated ``config.rl`` (`validate_rl`) with these models: a
    `LanguageModel` policy and reference and a `RewardModel` proxy; ``per_domain``: one KL
    envelope per prompt domain (``config.domains.control``)."""
    return rlhf.Static(
        method=rl.method, policy=policy, reference=reference, reward_model=reward,
        kl_placement=rl.kl_placement, kl_estimator=rl.kl_estimator, controller=rl.controller,
        batch_prompts=rl.batch_prompts, group_size=rl.group_size, epochs=rl.epochs,
        minibatches=rl.minibatches, updates_per_eval=rl.updates_per_eval,
        max_grad_norm=rl.max_grad_norm, preference_loss=rl.preference_loss, cg_iters=rl.cg_iters,
        max_backtracks=rl.max_backtracks, token_average=rl.token_average,
        stats_chunk=rl.stats_chunk, sampler_stats=rl.sampler_stats, ref_sync=rl.ref_sync,
        trpo_recovery=rl.trpo_recovery, per_domain=per_domain)


def hparams_values(rl: ml_collections.ConfigDict) -> rlhf.HParams:
    """The policy stage's HParams as ``config.rl``'s scalars (`rlhf.HParams`'s declared knobs);
    the knobs of the chosen preference loss and β controller (its `components.group` fields)."""
    hp = rl.hparams
    chosen = {"preference": rl.preference_loss, "controller": rl.controller}
    groups = {name: components.chosen_hparams(registry, hp[name], chosen[name])
              for name, registry in components.groups(rlhf.HParams).items()}
    return rlhf.HParams(**{n: hp[n] for n in components.knobs(rlhf.HParams)}, **groups)


def hparams_from_config(config, num_runs: int) -> rlhf.HParams:
    """HParams with a leading run axis of ``num_runs`` (scalars are broadcast)."""
    grow = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (num_runs,))  # noqa: E731
    return jax.tree.map(grow, hparams_values(config.rl))


def spec_from_config(config: ml_collections.ConfigDict) -> TokenSpec:
    """The run ``config`` describes, validated (`validate`: a `ConfigError` before anything runs)
    and read once into a `TokenSpec`: the only place below ``experiments/`` that reads a token
    config's fields."""
    validate(config)
    data, rl = config.data, config.rl
    policy_stage = config.stage == "policy"
    fit = lambda c, **extra: FitSpec(steps=c.steps, batch_size=c.batch_size,  # noqa: E731
                                     learning_rate=c.learning_rate, eval_every=c.eval_every,
                                     **extra)
    return TokenSpec(
        preset=config.preset, name=config.name, stage=config.stage, seed=config.seed,
        num_seeds=config.num_seeds, language=language_spec(config),
        data=DataSpec(**{f.name: data[f.name] for f in dataclasses.fields(DataSpec)}),
        policy=_model(config, "model"), reward_model=_model(config, "reward_model"),
        text_model=TransformerConfig(
            vocab_size=text_data.BYTE_VOCAB_SIZE, num_layers=config.model.num_layers,
            width=config.model.width, num_heads=config.model.num_heads, max_len=data.seq_len,
            critic="none"),
        sft=fit(config.sft), rm=fit(config.rm, weight_decay=config.rm.weight_decay),
        method=rl.method,
        static=static_from_config(config) if policy_stage else None,
        hparams_values=hparams_values(config.rl) if policy_stage else None,
        mesh_sizes=config.mesh.to_dict(),
        guards=guard_spec(config.guards),
        num_updates=rl.num_updates, updates_per_eval=rl.updates_per_eval,
        eval_kl=bool(rl.eval_kl), best_of_n=tuple(rl.best_of_n),
        stage_json={stage: stage_json(config, stage) for stage in STAGE_KEYS},
        config_json=tracking.identity_json(config),
        domains=domain_spec(config), wandb=tracking.spec_from_config(config))
