"""A token RLHF run as typed, frozen specs: what the library below the config boundary takes.

``experiments/*`` (and the sweep's token family) turn an ml_collections config into one `TokenSpec`
with `kltrust.train.token_config.spec_from_config`, after validating it; the pipeline
(`kltrust.train.pipeline`), the stages, the KL guard and the policy outputs read only these fields,
never the config dict. Every field is already checked, so code that holds a spec has nothing left
to validate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from kltrust import sharding, tracking
from kltrust.models.transformer import TransformerConfig
from kltrust.tasks.synthetic.language import LanguageSpec
from kltrust.tasks.synthetic.task import SyntheticTask
from kltrust.train import rlhf


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Data set sizes and sources (``config.data``)."""

    source: str  # "synthetic", or "tfds:NAME" (byte-level SFT on a prepared TFDS text set)
    num_sft: int
    num_prompts: int
    num_eval_prompts: int
    num_pairs: int
    num_eval_pairs: int
    label_noise: float
    bt_temperature: float
    seq_len: int  # the real-text path's sequence length
    tfds_dir: str  # where a prepared TFDS text set lives ("": TFDS's default)


@dataclasses.dataclass(frozen=True)
class FitSpec:
    """A supervised stage's settings (``config.sft`` / ``config.rm``)."""

    steps: int
    batch_size: int
    learning_rate: float
    eval_every: int
    weight_decay: float = 0.0


# What the KL guard does when it fires (`kltrust.train.kl_guard`).
KL_ACTIONS = ("rollback", "stop", "warn")


@dataclasses.dataclass(frozen=True)
class GuardSpec:
    """The policy stage's guards (``config.guards``; `kltrust.train.kl_guard`)."""

    max_nonfinite_updates: int
    max_sequence_kl: float
    kl_jump: float
    kl_jump_from: float
    kl_backoff: float
    max_rollbacks: int
    kl_action: str = "rollback"  # what a KL alarm does: one of `KL_ACTIONS`

    @property
    def kl_guard_active(self) -> bool:
        """Whether the KL guard watches the evaluations (a budget or a jump factor is set)."""
        return self.max_sequence_kl > 0 or self.kl_jump > 0


# How a run keeps its policy near the reference across prompt domains (`kltrust.domains`).
DOMAIN_CONTROLS = ("global", "per_domain")


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    """Prompt domains and their KL envelopes (``config.domains``).

    Attributes:
      count: D, the synthetic language's prompt domains (`SyntheticTask.num_domains`); 1: none.
      kl_scale: s_d, each domain's envelope as a multiple of the global one, D floats > 0.
      control: "global" (one β or budget for all prompts; per-domain metrics still reported) or
        "per_domain" (one controller β_d → s_d·kl_target, or TRPO budget s_d·kl_budget_per_token,
        per domain; and the KL guard's budget s_d·max_sequence_kl per domain).
    """

    count: int = 1
    kl_scale: tuple[float, ...] = (1.0,)
    control: str = "global"

    @property
    def per_domain(self) -> bool:
        return self.control == "per_domain"


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """One token RLHF run, read once from its config.

    Attributes:
      preset, name, stage: the preset, the policy stage's directory name, the stage to run.
      seed, num_seeds: the first seed (also the data sets' and the supervised stages' seed) and how
        many seeds a policy stage runs.
      language: the synthetic language (`LanguageSpec`).
      data: the data sets' sizes and source.
      policy: the reference / SFT policy's model config (no critic).
      reward_model: the proxy scorer's model config.
      text_model: the byte-level model of the real-text SFT path (``data.source`` 'tfds:...').
      sft, rm: the supervised stages' settings.
      method: the policy stage's token method (`kltrust.train.methods.METHODS`).
      static: the policy stage's compiled-program settings (None for sft / reward_model stages).
      hparams_values: the policy stage's `rlhf.HParams` as scalars (None outside policy stages);
        `hparams` broadcasts them over runs.
      mesh_sizes: the device mesh's axis sizes (``config.mesh``; one may be -1).
      domains: the prompt domains and their KL envelopes.
      guards: the non-finite and KL guards.
      num_updates, updates_per_eval, eval_kl, best_of_n: the policy stage's cadence and evaluation.
      stage_json: each prerequisite stage's ``stage_config.json`` text (the config parts it
        depends on, canonical JSON), by stage name.
      config_json: the whole config as JSON (but ``logging``, `kltrust.tracking.identity_json`),
        recorded when the policy stage's directory is claimed.
      wandb: whether and where the policy stage's scalars also go to W&B (`kltrust.tracking`).
    """

    preset: str
    name: str
    stage: str
    seed: int
    num_seeds: int
    language: LanguageSpec
    data: DataSpec
    policy: TransformerConfig
    reward_model: TransformerConfig
    text_model: TransformerConfig
    sft: FitSpec
    rm: FitSpec
    method: str
    static: rlhf.Static | None
    hparams_values: rlhf.HParams | None
    mesh_sizes: Mapping[str, int]
    guards: GuardSpec
    num_updates: int
    updates_per_eval: int
    eval_kl: bool
    best_of_n: tuple[int, ...]
    stage_json: Mapping[str, str]
    config_json: str
    domains: DomainSpec = DomainSpec()
    wandb: tracking.WandbSpec = tracking.WandbSpec()

    def task(self, data_dir: str | None = None) -> SyntheticTask:
        """The run's `TokenTask`: the language with the data sets' sizes and seed; read through its
        TFDS builders under ``data_dir`` (written on first use), or drawn in memory if None."""
        d = self.data
        return SyntheticTask.create(
            self.language, seed=self.seed, num_prompts=d.num_prompts,
            num_eval_prompts=d.num_eval_prompts, num_sft=d.num_sft, num_eval_sft=1024,
            num_pairs=d.num_pairs, num_eval_pairs=d.num_eval_pairs,
            label_noise=float(d.label_noise), bt_temperature=float(d.bt_temperature),
            data_dir=data_dir, num_domains=self.domains.count)

    def hparams(self, num_runs: int) -> rlhf.HParams:
        """The policy stage's hyperparameters with a leading run axis of ``num_runs``."""
        if self.hparams_values is None:
            raise ValueError(f"stage {self.stage!r} has no policy hyperparameters.")
        grow = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (num_runs,))  # noqa: E731
        return jax.tree.map(grow, self.hparams_values)

    def mesh(self) -> jax.sharding.Mesh:
        """The device mesh of ``mesh_sizes`` on this process's devices."""
        return sharding.mesh_from_sizes(self.mesh_sizes)
