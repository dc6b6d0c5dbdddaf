"""Every bad config is refused before anything is compiled or written, with one message naming the
key, the value and what is allowed (control PPO and TRPO through `control_config.spec_from_config`,
token RLHF through `pipeline.run`, the bandit through `bandit.validate`, sweeps through
`sweep.expand`): a `kltrust.errors.ConfigError`, which the CLIs print as one line (tests/test_cli_errors.py).

Non-finite numbers are refused wherever a finite one is meant; string options are checked against
their allowed set up front, whichever method reads them."""

from __future__ import annotations

import math
import pathlib
import re

import numpy as np
import pytest

from configs import bandit as bandit_configs
from configs import ppo as ppo_configs
from configs import rlhf as rlhf_configs
from configs import trpo as trpo_configs
from kltrust import components, controllers, kl
from kltrust import sweep as sweeps
from kltrust.errors import ConfigError
from kltrust.objectives import grpo, ppo, preference
from kltrust.train import bandit as bandit_train
from kltrust.train import control_config, loop, pipeline, rlhf

INF, NAN = float("inf"), float("nan")
ROOT = pathlib.Path(__file__).resolve().parents[1]

CONTROL_ERRORS = [
    # unknown keys (a typo must not be silently ignored) and wrong types
    ("ppo", "hparams.learnign_rate", 1e-3,
     r"config.hparams.learnign_rate: unknown key; did you mean 'learning_rate'\?"),
    ("ppo", "num_envz", 8, r"config.num_envz: unknown key; did you mean 'num_envs'\?"),
    ("ppo", "num_envs", 4.5, r"config.num_envs = 4.5: must be of type int \(like its default 4\)"),
    ("ppo", "anneal_lr", "yes", r"config.anneal_lr = 'yes': must be of type bool"),
    ("ppo", "normalize_observations", 1, r"config.normalize_observations = 1: must be of type "
                                         r"bool"),
    ("trpo", "normalize_observations", "on", r"config.normalize_observations = 'on': must be of "
                                             r"type bool"),
    # the observation normaliser's clip and the value clip: checked where read, finite elsewhere
    ("ppo_norm", "hparams.obs_clip", 0.0, r"config.hparams.obs_clip = 0.0: must be in \(0.0, inf\]"),
    ("ppo", "hparams.obs_clip", NAN, r"config.hparams.obs_clip = nan: must be a finite number"),
    ("trpo_norm", "hparams.obs_clip", -1.0, r"config.hparams.obs_clip = -1.0: must be in \(0.0, "),
    ("ppo_vclip", "hparams.vf_clip_eps", 0.0, r"config.hparams.vf_clip_eps = 0.0: must be in "
                                              r"\(0.0, inf\)"),
    ("ppo_adaptive", "hparams.controller.adaptive.factor", 0.5,
     r"config.hparams.controller.adaptive.factor = 0.5: must be in \[1, inf\)"),
    # out-of-range values
    ("ppo_fixed", "hparams.beta", -0.1, r"config.hparams.beta = -0.1: must be in \[0.0, inf\)"),
    ("ppo", "hparams.clip_eps", 0.0, r"config.hparams.clip_eps = 0.0: must be in \(0.0, inf\]"),
    ("ppo", "num_steps", 0, r"config.num_steps = 0: must be an integer >= 1"),
    ("ppo", "num_minibatches", 3, r"config.num_minibatches = 3: must be a divisor of "
                                  r"num_envs \* num_steps = 512"),
    ("ppo", "mesh.data", 2, r"config.mesh = .*: needs 2 devices, only 1 are available"),
    ("trpo", "hparams.delta", 0.0, r"config.hparams.delta = 0.0: must be in \(0.0, inf\)"),
    ("trpo", "hparams.dleta", 0.01, r"config.hparams.dleta: unknown key; did you mean 'delta'\?"),
    # non-finite numbers, wherever a finite one is meant (nan fails every range; inf every range
    # but the few keys that allow it)
    ("ppo", "hparams.learning_rate", INF,
     r"config.hparams.learning_rate = inf: must be in \(0.0, inf\)"),
    ("ppo", "hparams.learning_rate", NAN, r"config.hparams.learning_rate = nan: must be in \(0.0"),
    ("ppo", "hparams.learning_rate", (1e-3, INF),
     r"config.hparams.learning_rate = inf: must be in"),
    ("ppo", "hparams.gamma", NAN, r"config.hparams.gamma = nan: must be in \[0.0, 1.0\]"),
    ("ppo", "hparams.clip_eps", -INF, r"config.hparams.clip_eps = -inf: must be in \(0.0, inf\]"),
    ("ppo", "hparams.ent_coef", -INF, r"config.hparams.ent_coef = -inf: must be in \[0.0, inf\)"),
    ("ppo_fixed", "hparams.beta", INF, r"config.hparams.beta = inf: must be in \[0.0, inf\)"),
    ("trpo", "hparams.delta", INF, r"config.hparams.delta = inf: must be in \(0.0, inf\)"),
    ("trpo", "hparams.backtrack_factor", NAN, r"config.hparams.backtrack_factor = nan: must be in "
                                              r"\(0.0, 1.0\)"),
    ("trpo", "hparams.vf_learning_rate", INF, r"config.hparams.vf_learning_rate = inf"),
    # ... also in fields the variant does not read (a later variant would)
    ("ppo", "hparams.target_kl", NAN, r"config.hparams.target_kl = nan: must be a finite number"),
    ("trpo", "hparams.kl_budget", NAN, r"config.hparams.kl_budget = nan: must be a finite number"),
    # string options, against their allowed set (with a did-you-mean)
    ("ppo", "env_name", "CartPole-v0", r"config.env_name = 'CartPole-v0': must be one of \(.*\); "
                                       r"did you mean 'CartPole-v1'\?"),
    ("ppo", "algorithm", "ppo2", r"config.algorithm = 'ppo2': must be one of \('ppo', 'trpo'\); "
                                 r"did you mean 'ppo'\?"),
    ("ppo", "model.activation", "gelu", r"config.model.activation = 'gelu': must be one of "
                                        r"\('tanh', 'relu'\)"),
    ("ppo", "variant.kl_penalty", "adaptve", r"config.variant.kl_penalty must be one of"),
    ("trpo", "variant.kl_anchor", "ref", r"config.variant.kl_anchor must be one of"),
    ("trpo", "variant.recovery", True, r"config.variant.recovery needs kl_anchor='reference'"),
    # integers the loop divides or counts by
    ("ppo", "checkpoint_every_chunks", 0,
     r"config.checkpoint_every_chunks = 0: must be an integer >= 1"),
    ("ppo", "keep_checkpoints", 0, r"config.keep_checkpoints = 0: must be an integer >= 1"),
    # tracking (kltrust.tracking): checked whether or not W&B is switched on
    ("ppo", "logging.wandb.mode", "online!", r"config.logging.wandb.mode = 'online!': must be "
                                             r"one of \('offline', 'online', 'disabled'\); did "
                                             r"you mean 'online'\?"),
    ("trpo", "logging.wandb.project", "", r"config.logging.wandb.project = '': must be a "
                                          r"non-empty project name without '/'"),
    ("ppo", "logging.wandb.tags", ("a", ""), r"config.logging.wandb.tags = \('a', ''\): must be "
                                             r"a tuple of non-empty strings"),
]


def _control(family):
    presets = {"ppo": "cartpole_clip", "ppo_fixed": "cartpole_kl_fixed", "trpo": "cartpole_trpo",
               "ppo_norm": "cartpole_clip", "trpo_norm": "cartpole_trpo", "ppo_vclip": "cartpole_clip",
               "ppo_adaptive": "cartpole_kl_adaptive"}
    module = trpo_configs if family.startswith("trpo") else ppo_configs
    config = module.get_config(presets[family])
    config.normalize_observations = family.endswith("_norm")
    if family == "ppo_vclip":
        config.variant.clip_value = True
    return config


def _set(config, path, value):
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    with node.unlocked() if hasattr(node, "unlocked") else _nothing():
        if leaf in node:
            # Assigning another type to an existing field is refused by ml_collections itself;
            # a config file that builds its own ConfigDict can still hold one, so bypass it.
            node._fields[leaf] = value
        else:
            node[leaf] = value


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("family,path,value,message", CONTROL_ERRORS)
def test_control_config_errors(family, path, value, message, tmp_path):
    config = _control(family)
    _set(config, path, value)
    # The spec is built at the boundary: a bad config never reaches loop.train. The mesh is read
    # there with the run shape; its error is a plain ValueError (the CLIs report it like the rest).
    error = ValueError if path.startswith("mesh.") else ConfigError
    with pytest.raises(error, match=message):
        loop.train(control_config.spec_from_config(config), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_inf_is_refused_unless_the_key_allows_it():
    config = _control("ppo")
    config.hparams.max_grad_norm = INF  # no clipping: the one control key that allows inf
    control_config.validate(config)
    config.hparams.max_grad_norm = NAN
    with pytest.raises(ConfigError, match=r"config.hparams.max_grad_norm = nan: must be in "
                                          r"\(0.0, inf\]"):
        control_config.validate(config)


# ---------------------------------------------------------------- β controller knobs, per kind


def _outside(spec: components.Knob) -> float:
    """A value just outside the knob's interval."""
    if math.isfinite(spec.low):
        return spec.low if spec.low_open else spec.low - 1.0
    return spec.high if spec.high_open else spec.high + 1.0


def _knob_cases():
    """(kind, knob, value, message) for every knob of every registered controller: a value just
    outside its interval and nan, each named with the interval the knob declares."""
    cases = []
    for kind, controller in controllers.REGISTRY.items():
        for name, spec in components.knobs(controller.hparams).items():
            allowed = re.escape(spec.allowed())
            for value in (_outside(spec), NAN):
                cases.append((kind, name, value,
                              rf"controller.{kind}.{name} = {value!r}: must be in {allowed}\.$"))
    return cases


KNOB_CASES = _knob_cases()
WITH_KNOBS = [(kind, name) for kind, name, value, _ in KNOB_CASES if value == value]


@pytest.mark.parametrize("kind,name,value,message", KNOB_CASES)
def test_control_controller_knob_errors(kind, name, value, message, tmp_path):
    config = _control("ppo")
    config.variant.kl_penalty = kind
    _set(config, f"hparams.controller.{kind}.{name}", value)
    with pytest.raises(ConfigError, match=rf"^config.hparams.{message}"):
        loop.train(control_config.spec_from_config(config), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind,name", WITH_KNOBS)
def test_unchosen_controller_knobs_must_still_be_finite_and_known(kind, name):
    config = _control("ppo")  # kl_penalty "none": no controller's knobs are read
    _set(config, f"hparams.controller.{kind}.{name}", INF)
    with pytest.raises(ConfigError, match=rf"^config.hparams.controller.{kind}.{name} = inf: "
                                          r"must be a finite number\.$"):
        control_config.validate(config)
    config = _control("ppo")
    _set(config, f"hparams.controller.{kind}.{name}x", 1.0)
    with pytest.raises(ConfigError, match=rf"^config.hparams.controller.{kind}.{name}x: unknown "
                                          rf"key; did you mean '{name}'\?"):
        control_config.validate(config)


@pytest.mark.parametrize("kind", controllers.kinds())
def test_beta_range_follows_the_chosen_controller(kind, tmp_path):
    config = _control("ppo")
    config.variant.kl_penalty = kind
    control_config.validate(config)  # every registered kind runs with the defaults of its knobs
    token = rlhf_configs.get_config("ppo")
    token.rl.controller = kind
    pipeline.validate(token)
    positive = controllers.get(kind).beta_positive  # multiplicative rules cannot leave β = 0
    bad = 0.0 if positive else -1.0
    allowed = r"\(0.0, inf\)" if positive else r"\[0.0, inf\)"
    _set(config, "hparams.beta", bad)
    with pytest.raises(ConfigError, match=rf"^config.hparams.beta = {bad}: must be in {allowed}"):
        control_config.validate(config)
    _set(token, "rl.hparams.beta", bad)
    with pytest.raises(ConfigError, match=rf"^config.rl.hparams.beta = {bad}: must be in "
                                          rf"{allowed}"):
        pipeline.validate(token)


@pytest.mark.parametrize("kind,name,value,message", KNOB_CASES)
def test_token_controller_knob_errors(kind, name, value, message, tmp_path):
    config = rlhf_configs.get_config("ppo")
    config.rl.controller = kind
    _set(config, f"rl.hparams.controller.{kind}.{name}", value)
    with pytest.raises(ConfigError, match=rf"^config.rl.hparams.{message}"):
        pipeline.run(pipeline.spec_from_config(config), tmp_path / "root")
    assert not (tmp_path / "root").exists()


TOKEN_ERRORS = [
    ("ppo", "rl.hparams.betta", 0.1, r"config.rl.hparams.betta: unknown key; did you mean 'beta'\?"),
    ("ppo", "rl.batch_prompts", 8.0, r"config.rl.batch_prompts = 8.0: must be of type int"),
    ("ppo", "rl.hparams.beta", -1.0, r"config.rl.hparams.beta = -1.0: must be in \[0.0, inf\)"),
    ("ppo", "rl.hparams.clip_eps", 0.0, r"config.rl.hparams.clip_eps = 0.0: must be in \(0.0"),
    ("trpo", "rl.hparams.delta", -0.01, r"config.rl.hparams.delta = -0.01: must be in \(0.0"),
    ("ppo", "rl.minibatches", 5, r"config.rl.minibatches = 5: must be a divisor of the batch "
                                 r"\(64 sequences or pairs\)"),
    ("ppo", "sft.batch_size", 0, r"config.sft.batch_size = 0: must be >= 1"),
    ("ppo", "mesh.fsdp", 4, r"config.mesh.data = -1: the other axes' product 4 must divide "
                            r"the number of devices \(1\)"),
    # non-finite numbers
    ("ppo", "rl.hparams.learning_rate", INF, r"config.rl.hparams.learning_rate = inf: must be in "
                                             r"\(0.0, inf\)"),
    ("ppo", "rl.hparams.beta", NAN, r"config.rl.hparams.beta = nan: must be in \[0.0, inf\)"),
    ("trpo", "rl.hparams.kl_budget_per_token", INF,
     r"config.rl.hparams.kl_budget_per_token = inf: must be in"),
    ("dpo", "rl.hparams.preference.sigmoid.label_smoothing", NAN,
     r"config.rl.hparams.preference.sigmoid.label_smoothing = nan"),
    ("simpo", "rl.hparams.preference.simpo.gamma", -1.0,
     r"config.rl.hparams.preference.simpo.gamma = -1.0: must be in \[0, inf\)"),
    ("ppo", "rl.max_grad_norm", NAN, r"config.rl.max_grad_norm = nan: must be in \(0.0, inf\]"),
    ("ppo", "sft.learning_rate", INF, r"config.sft.learning_rate = inf: must be finite and > 0"),
    ("ppo", "rm.learning_rate", NAN, r"config.rm.learning_rate = nan: must be finite and > 0"),
    ("ppo", "rm.weight_decay", -1.0, r"config.rm.weight_decay = -1.0: must be in \[0.0, inf\)"),
    ("ppo", "guards.max_sequence_kl", INF, r"config.guards.max_sequence_kl = inf: must be finite and >= 0"),
    ("ppo", "guards.kl_jump", INF, r"config.guards.kl_jump = inf: must be 0 \(off\) or a finite"),
    ("ppo", "guards.kl_backoff", NAN, r"config.guards.kl_backoff = nan: must be finite and > 1"),
    ("ppo", "guards.kl_action", "pause",
     r"config.guards.kl_action = 'pause': must be one of \('rollback', 'stop', 'warn'\)"),
    ("ppo", "data.bt_temperature", INF, r"config.data.bt_temperature = inf: must be finite"),
    ("ppo", "data.label_noise", NAN, r"config.data.label_noise = nan: must be in \[0, 0.5\)"),
    ("ppo", "task.eos_prob", NAN, r"config.task.eos_prob = nan: must be a number in \[0, 1\)"),
    ("ppo", "task.good_scale", INF, r"config.task.good_scale = inf: must be a finite number >= 0"),
    # string options: each checked up front, whichever method reads it
    ("dpo", "rl.preference_loss", "foo", r"config.rl.preference_loss = 'foo': must be one of "
                                         + re.escape(str(preference.LOSSES.names())) + r"\.$"),
    ("ppo", "rl.preference_loss", "ipo2", r"config.rl.preference_loss = 'ipo2': must be one of .*; "
                                      r"did you mean 'ipo'\?"),
    ("grpo", "rl.token_average", "tokens", r"config.rl.token_average = 'tokens': must be one of "
                                           r"\('sequence', 'token'\); did you mean 'token'\?"),
    ("ppo", "rl.method", "dpo_offline", r"config.rl.method = 'dpo_offline': must be one of"),
    ("ppo", "rl.kl_estimator", "k4", r"config.rl.kl_estimator = 'k4': must be one of "
                                     + re.escape(repr(("exact",) + kl.estimators()))),
    # corrected estimators change a loss term's gradient: refused as a reward (ppo's default)
    ("ppo", "rl.kl_estimator", "k3+", r"config.rl.kl_estimator = 'k3\+': must be one of "
                                      + re.escape(repr(("exact",) + kl.estimators(reward_term=True)))
                                      + r" when rl.kl_placement is 'reward'"),
    ("ppo", "rl.hparams.kl_value_clamp", 0.0, r"config.rl.hparams.kl_value_clamp = 0.0: must be in "
                                              r"\(0.0, inf\]"),
    ("ppo", "rl.ref_sync", "yes", r"config.rl.ref_sync = 'yes': must be of type bool"),
    ("ppo_nokl", "rl.ref_sync", True, r"config.rl.ref_sync = True: must be False when the method "
                                      r"applies no KL to a reference"),
    ("simpo", "rl.ref_sync", True, r"config.rl.ref_sync = True: must be False when"),
    ("grpo", "rl.trpo_recovery", True, r"config.rl.trpo_recovery = True: must be False unless "
                                       r"rl.method is 'trpo'"),
    ("ppo", "rl.controller", "adaptiv", r"config.rl.controller = 'adaptiv': must be one of .*; "
                                        r"did you mean 'adaptive'\?"),
    ("ppo", "model.critic", "shraed", r"config.model.critic = 'shraed': .*did you mean 'shared'"),
    ("ppo", "stage", "polciy", r"config.stage = 'polciy': must be one of \('policy', 'sft', "
                               r"'reward_model'\); did you mean 'policy'\?"),
    ("ppo", "name", "sft", r"config.name = 'sft': must be a directory name under the pipeline root "
                           r"other than"),
    ("ppo", "data.source", "tfds:tiny_shakespeare",
     r"config.data.source = 'tfds:tiny_shakespeare': must be 'synthetic', or 'tfds:NAME'"),
    ("sft", "data.source", "shakespeare", r"config.data.source = 'shakespeare': must be"),
    # integers read only by some methods or stages
    ("ppo", "seed", -1, r"config.seed = -1: must be an integer in \[0, 2\*\*31\)"),
    ("ppo", "rl.cg_iters", 0, r"config.rl.cg_iters = 0: must be an integer >= 1"),
    ("ppo", "rl.max_backtracks", 0, r"config.rl.max_backtracks = 0: must be an integer >= 1"),
    ("ppo", "sft.eval_every", -1, r"config.sft.eval_every = -1: must be an integer >= 0"),
    ("ppo", "data.seq_len", 1, r"config.data.seq_len = 1: must be an integer >= 2"),
    # tracking (kltrust.tracking): checked whether or not W&B is switched on
    ("ppo", "logging.wandb.mode", "ofline", r"config.logging.wandb.mode = 'ofline': must be one "
                                            r"of \('offline', 'online', 'disabled'\); did you "
                                            r"mean 'offline'\?"),
    ("ppo", "logging.wandb.enabled", "yes", r"config.logging.wandb.enabled = 'yes': must be of "
                                            r"type bool"),
]


@pytest.mark.parametrize("preset,path,value,message", TOKEN_ERRORS)
def test_token_config_errors(preset, path, value, message, tmp_path):
    config = rlhf_configs.get_config(preset)
    _set(config, path, value)
    with pytest.raises(ConfigError, match=message):
        pipeline.run(pipeline.spec_from_config(config), tmp_path / "root")
    assert not (tmp_path / "root").exists()


def test_every_token_preset_is_valid():
    for preset in rlhf_configs.PRESETS:
        pipeline.validate(rlhf_configs.get_config(preset))


def test_an_estimator_registered_later_is_a_choice_everywhere(monkeypatch):
    """Programs read the estimator choices from `kl`'s registry when they check, not from a tuple
    copied at import; the metadata (a nonzero expected gradient as a loss term) decides whether a
    GRPO/RLOO loss may use one."""
    monkeypatch.setattr(kl._REGISTRY, "_entries", dict(kl._REGISTRY._entries))  # undone after
    k1 = lambda logp, logp_ref: logp - logp_ref
    kl.estimator("k_test_loss", unbiased=True, nonnegative=False, loss_gradient=(0, 0.25))(k1)
    kl.estimator("k_test_noise", unbiased=True, nonnegative=False, loss_gradient=(0, 0))(k1)
    grpo.Variant(kl_estimator="k_test_loss")
    with pytest.warns(UserWarning, match="k_test_noise in the loss has zero expected gradient"):
        grpo.Variant(kl_estimator="k_test_noise")
    ppo.Variant(kl_estimator="k_test_loss")
    config = rlhf_configs.get_config("grpo")  # the KL in the loss
    config.rl.kl_estimator = "k_test_loss"
    pipeline.validate(config)
    config.rl.kl_estimator = "k_test_noise"
    with pytest.raises(ConfigError, match=r"config.rl.kl_estimator = 'k_test_noise': must be one of "
                                          r"\('k2', 'k3', .*'k_test_loss'\) when the KL is in the "
                                          r"grpo loss"):
        pipeline.validate(config)
    config.rl.kl_placement = "reward"
    pipeline.validate(config)


BANDIT_ERRORS = [
    ("num_step", 100, r"config.num_step: unknown key; did you mean 'num_steps'\?"),
    ("hparams.learnig_rate", 0.1, r"config.hparams.learnig_rate: unknown key; did you mean "
                                  r"'learning_rate'\?"),
    ("run_specs.dpo.preference_los", "ipo", r"config.run_specs.dpo.preference_los: unknown key; "
                                            r"did you mean 'preference_loss'\?"),
    ("run_specs.dpo.preference.simpo.gama", 1.0, r"config.run_specs.dpo.preference.simpo.gama: "
                                                 r"unknown key; did you mean 'gamma'\?"),
    ("betas", (0.1, INF), r"config.betas = \(0.1, inf\): must be a non-empty tuple of finite"),
    ("hparams.learning_rate", NAN, r"config.hparams.learning_rate = nan: must be in \(0, inf\)"),
    ("hparams.clip_eps", INF, r"config.hparams.clip_eps = inf: must be in \(0, inf\)"),
    ("bandit.reward_scale", INF, r"config.bandit.reward_scale = inf: must be finite and >= 0"),
    ("lr_schedule", "cosin", r"config.lr_schedule = 'cosin': must be one of .*; did you mean "
                             r"'cosine'\?"),
    ("run_specs.ipo.preference_loss", "ipoo",
     r"config.run_specs.ipo.preference_loss = 'ipoo': .*did you mean 'ipo'\?"),
    ("run_specs.dpo.preferences", "sample", r"config.run_specs.dpo.preferences = 'sample'"),
]


@pytest.mark.parametrize("path,value,message", BANDIT_ERRORS)
def test_bandit_config_errors(path, value, message):
    config = bandit_configs.get_config("quick")
    _set(config, path, value)
    with pytest.raises(ConfigError, match=message):
        bandit_train.validate(config)


@pytest.mark.parametrize("module,preset,message", [
    (ppo_configs, "cartpole_clp", r"Unknown PPO preset 'cartpole_clp'; known presets: .*; did you "
                                  r"mean 'cartpole_clip'\?"),
    (trpo_configs, "cartpole_trp", r"Unknown TRPO preset .*did you mean 'cartpole_trpo'\?"),
    (rlhf_configs, "dpoo", r"Unknown token RLHF preset 'dpoo'; .*did you mean 'dpo'\?"),
    (bandit_configs, "qick", r"Unknown bandit preset 'qick'; .*did you mean 'quick'\?"),
])
def test_unknown_presets_suggest_the_nearest(module, preset, message):
    with pytest.raises(ConfigError, match=message):
        module.get_config(preset)


def test_sweep_overrides_refuse_non_finite_values(monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep's arms name their presets relative to the repository
    sweep = sweeps.load_preset("configs/sweeps/demo.py")
    with pytest.raises(ValueError, match=r"sweep.arms\[0\] \(PPO clip\), grid point \{\}: "
                                         r"config.hparams.learning_rate = inf: must be in"):
        sweeps.expand(sweep, {"hparams.learning_rate": INF})


# ---------------------------------------------------------------- token knobs, from declarations


def _token_bounds():
    """For every knob `rlhf.HParams` declares: a value just outside each finite bound, and the
    interval as the token checks have always printed it (``(0.0, inf)``, ``[0.0, 1.0]``)."""
    cases = []
    for name, spec in components.knobs(rlhf.HParams).items():
        top_open = spec.high_open or (spec.high == math.inf and not spec.allow_inf)
        interval = (f"{'(' if spec.low_open else '['}{spec.low}, {spec.high}"
                    f"{')' if top_open else ']'}")
        if spec.low > -math.inf:
            cases.append((name, spec.low if spec.low_open else float(np.nextafter(spec.low, -1)),
                          interval))
        if spec.high < math.inf:
            cases.append((name, spec.high if spec.high_open else float(np.nextafter(spec.high, 2)),
                          interval))
    return cases


def test_token_defaults_come_from_the_knob_declarations():
    hp = pipeline.defaults().rl.hparams
    declared = {name: spec.default for name, spec in components.knobs(rlhf.HParams).items()}
    assert {k: v for k, v in hp.to_dict().items() if k not in ("controller", "preference")} \
        == declared
    assert hp.controller.to_dict() == components.group_defaults(controllers.REGISTRY).to_dict()
    assert hp.preference.to_dict() == components.group_defaults(preference.LOSSES).to_dict()
    # The values the presets always had (a changed declaration would silently move every run).
    assert declared == dict(learning_rate=1e-4, beta=0.1, clip_eps=0.2, gamma=1.0, gae_lambda=0.95,
                            vf_coef=0.5, ent_coef=0.0, delta=0.01, kl_budget_per_token=0.1,
                            damping=0.1, kl_log_ratio_clamp=math.inf, kl_value_clamp=math.inf,
                            ref_sync_every=512, ref_sync_alpha=0.6, clip_eps_high=0.28)
    assert set(components.groups(rlhf.HParams)) == {"controller", "preference"}


@pytest.mark.parametrize("name,value,interval", _token_bounds())
def test_every_declared_token_knob_range_is_enforced(name, value, interval):
    """Each knob is range-checked whichever method runs (ppo with the fixed controller: β may be
    0), a value just outside a bound refused naming ``config.rl.hparams.NAME``."""
    config = rlhf_configs.get_config("ppo")
    assert config.rl.controller == "fixed"
    pipeline.validate(config)
    config.rl.hparams[name] = value
    with pytest.raises(ConfigError) as error:
        pipeline.spec_from_config(config)
    assert str(error.value) == f"config.rl.hparams.{name} = {value!r}: must be in {interval}."

