"""What every token-task stage shares: the models, the frozen inputs, evaluation and stage outputs.

The RLHF pipeline on the synthetic language (`kltrust.tasks.text`) has three kinds of stage, each a
preset of ``configs/rlhf.py`` and each writing its own directory under one pipeline root:

    sft/           the reference policy, trained by next-token cross-entropy (`kltrust.train.sft`)
    reward_model/  the proxy reward, a Bradley–Terry scorer (`kltrust.train.reward_model`)
    METHOD/        a policy optimised against the proxy (`kltrust.train.rlhf`): PPO, GRPO, RLOO,
                   TRPO, DPO (offline and online), best-of-n

A stage's outputs are written only when it finishes (params last, atomically), so a stage whose
``params.msgpack`` exists is complete and the pipeline skips it on the next run.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable
from typing import Any

import flax.serialization
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kltrust import domains, kl, processes, sharding
from kltrust import rollout as rollouts
from kltrust.models.interface import LanguageModel, RewardModel
from kltrust.models.transformer import SequenceScorer, TransformerConfig, TransformerLM
from kltrust.tasks import interface as tasks
from kltrust.tasks import text

PARAMS_FILE = "params.msgpack"


# ---------------------------------------------------------------- models


def transformer_config(language: text.LanguageSpec, *, num_layers: int, width: int,
                       num_heads: int, critic: str = "none") -> TransformerConfig:
    """A transformer of these sizes for the synthetic ``language``: its vocabulary, and room for a
    prompt and a whole response."""
    return TransformerConfig(
        vocab_size=language.num_words + 3, num_layers=num_layers, width=width,
        num_heads=num_heads, max_len=language.prompt_len + language.response_len, critic=critic)


# A transformer policy's pure functions; defined with the model, where it is the first
# `kltrust.models.interface.LanguageModel`, and kept here under the name the trainers use.
Policy = TransformerLM


def score(rm_config: TransformerConfig, rm_params: Any, prompts: jax.Array, response: jax.Array,
          mask: jax.Array) -> jax.Array:
    """The proxy reward of each (prompt, response) [B]: the scorer read at the last real token."""
    tokens = jnp.concatenate([prompts, response], axis=1)
    full_mask = jnp.concatenate([jnp.ones(prompts.shape, mask.dtype), mask], axis=1)
    return SequenceScorer(rm_config).apply(rm_params, tokens, full_mask)


def adam(max_grad_norm: float,
         param_labels: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
    """Adam with global-norm clipping and the learning rate as a hyperparameter array.

    ``param_labels(params)`` (a model's optional member: "train" or "frozen" per leaf, e.g. a LoRA
    model's base is frozen) keeps Adam's moments for the trained leaves only and gives every frozen
    leaf the update −0.0, so w + (−0.0) = w bit for bit and no base-sized optimiser state exists.
    """
    def make(learning_rate):
        inner = optax.adam(learning_rate)
        if param_labels is not None:
            frozen = optax.stateless(lambda updates, params: jax.tree.map(
                lambda u: -jnp.zeros_like(u), updates))
            inner = optax.multi_transform({"train": inner, "frozen": frozen}, param_labels)
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), inner)
    return optax.inject_hyperparams(make)(learning_rate=1e-3)


def set_learning_rate(opt_state: Any, learning_rate: jax.Array) -> Any:
    """``opt_state`` (an `optax.inject_hyperparams` state) with its learning rate replaced; the
    rate travels in the state so a sweep can vary it without recompiling.
    """
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": learning_rate})


# ---------------------------------------------------------------- evaluation


@flax.struct.dataclass
class Frozen:
    """Inputs every policy stage reads but never changes (passed as arguments, not baked into the
    compiled program as constants)."""

    ref_params: Any  # the SFT policy: initial policy and KL anchor
    rm_params: Any  # the proxy reward model
    prompts: jax.Array  # [N, P] training prompts
    eval_prompts: jax.Array  # [M, P] held-out prompts
    # The `kltrust.tasks.interface.TokenTask` (its response length, EOS/PAD ids, gold reward). A
    # pytree: the synthetic language's arrays are leaves, so they enter programs as arguments.
    task: Any
    pairs: Any = None  # the preference data set (offline DPO only)
    # s_d, each prompt domain's KL envelope as a multiple of the global one, float32 [D]
    # (`kltrust.domains`; read only by a per-domain run): an input, so one compiled program serves
    # every choice of envelopes.
    domain_kl_scale: Any = None


def task_metrics(task: Any, prompts: jax.Array, responses: jax.Array,
                 mask: jax.Array) -> dict[str, jax.Array]:
    """The task's own evaluation metrics (the optional ``TokenTask.metrics`` hook, e.g. the
    synthetic language's ``grammatical``), each averaged over the batch; {} for a task without it."""
    hook = getattr(task, "metrics", None)
    if hook is None:
        return {}
    return {name: jnp.mean(value) for name, value in hook(prompts, responses, mask).items()}


def evaluate(policy: LanguageModel, reference: LanguageModel, reward: RewardModel,
             params: Any, frozen: Frozen, key: jax.Array, *,
             with_kl: bool = True, stats_chunk: int = 0) -> tuple[dict, jax.Array]:
    """Samples one response per held-out prompt and measures it.

    Returns (metrics, responses [M, L]) with metrics: ``gold``, ``proxy`` (means; per prompt domain
    too, ``gold_dD`` etc., when the task has domains, `kltrust.domains.metrics`), ``kl`` (the exact
    sequence KL Σ_t KL(π(·|prefix) ‖ π_ref(·|prefix)), mean over prompts; only if ``with_kl``),
    ``kl_k1`` (Σ_t log π/π_ref at the samples, its unbiased estimate), ``entropy`` (per token),
    ``length`` (response tokens incl. EOS), and the task's own metrics (`task_metrics`; the
    synthetic language's ``grammatical``: the fraction with no zero-probability transition).
    ``stats_chunk``: rows per chunk of the teacher-forced pass (`rlhf.Static.stats_chunk`).
    """
    task = frozen.task
    prompts = frozen.eval_prompts
    ro = rollouts.token_rollout(
        policy.decode, policy.sequence, params, prompts, policy.empty_cache(prompts.shape[0]), key,
        max_new_tokens=task.response_len, eos_id=task.eos_id, pad_id=task.pad_id,
        ref_sequence_fn=reference.sequence if with_kl else None,
        ref_params=frozen.ref_params if with_kl else None, stats_chunk=stats_chunk)
    gold = tasks.gold_reward(task, prompts, ro.response, ro.mask)
    proxy = reward.score(frozen.rm_params, prompts, ro.response, ro.mask)
    metrics = {
        "gold": gold.mean(),
        "proxy": proxy.mean(),
        "entropy": kl.mean_per_token(ro.entropy, ro.mask),
        "length": ro.mask.sum(-1).mean(),
        **task_metrics(task, prompts, ro.response, ro.mask),
    }
    per_row = {"gold": gold, "proxy": proxy}
    if with_kl:
        per_row["kl"] = kl.sum_per_sequence(ro.kl, ro.mask)
        metrics["kl"] = per_row["kl"].mean()
        metrics["kl_k1"] = kl.sum_per_sequence(
            kl.estimate(ro.log_prob, ro.ref_log_prob, "k1"), ro.mask).mean()
    metrics.update(domains.metrics(per_row, domains.prompt_domains(task, prompts),
                                   domains.num_domains(task)))
    return metrics, ro.response * ro.mask.astype(ro.response.dtype)


def diversity(responses: np.ndarray, pad_id: int) -> dict[str, float]:
    """distinct-1 and distinct-2 of a batch of responses, masked where they hold ``pad_id``."""
    mask = (responses != pad_id).astype(np.float32)
    return {f"distinct_{n}": float(text.distinct_n(responses, mask, n)) for n in (1, 2)}


# ---------------------------------------------------------------- stage outputs


def save_params(directory: pathlib.Path, params: Any) -> None:
    """Writes ``params.msgpack`` atomically (the stage's completion marker).

    Every process must call it (parameters split over processes are gathered); process 0 writes.
    """
    params = sharding.to_host(params)
    if not processes.is_primary():
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (PARAMS_FILE + ".tmp")
    tmp.write_bytes(flax.serialization.to_bytes(params))
    os.replace(tmp, directory / PARAMS_FILE)


def load_params(directory: pathlib.Path, template: Any) -> Any:
    """A stage's saved parameters, restored into ``template``'s structure; raises
    `FileNotFoundError` when the stage has not run.
    """
    path = pathlib.Path(directory) / PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run that stage first.")
    return flax.serialization.from_bytes(template, path.read_bytes())


def is_done(directory: pathlib.Path) -> bool:
    """Whether the stage in ``directory`` has saved its parameters (its completion mark)."""
    return (pathlib.Path(directory) / PARAMS_FILE).exists()


def append_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    """Appends rows as JSON lines (process 0 only: one copy of the metrics)."""
    if not processes.is_primary():
        return
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def update_rows_writer(path: pathlib.Path, seeds: np.ndarray, updates_per_chunk: int,
                       tracker: Any = None) -> Callable[[dict[str, np.ndarray], int], None]:
    """A policy stage's `kltrust.train.host.Chunks.write_rows`: one JSON row per update and seed
    ({"update", "seed", metrics...}) appended to ``path``, from metrics [runs, updates]; and, with
    a `kltrust.tracking.Tracker` (`board_scalars`: TensorBoard, W&B), each metric's mean over the
    runs per update."""
    def write_rows(metrics: dict[str, np.ndarray], updates_before: int) -> None:
        append_jsonl(path, [
            {"update": updates_before + u + 1, "seed": int(seed),
             **scalars({k: v[r, u] for k, v in metrics.items()})}
            for u in range(updates_per_chunk) for r, seed in enumerate(np.asarray(seeds))])
        for u in range(updates_per_chunk):
            board_scalars(tracker, "train", {k: v[:, u] for k, v in metrics.items()},
                          updates_before + u + 1)
    return write_rows


def board_scalars(tracker: Any, prefix: str, metrics: dict[str, Any], step: int) -> None:
    """Logs ``PREFIX/NAME`` = the mean over runs of each metric (NaN runs — an empty prompt
    domain — left out; a metric with none left is skipped) at ``step``, all in one call to a
    `kltrust.tracking.Tracker` (so TensorBoard and W&B get the same step); nothing when
    ``tracker`` is None."""
    if tracker is None:
        return
    means = {}
    for name, values in metrics.items():
        values = np.asarray(values, np.float64)
        if np.issubdtype(values.dtype, np.number) and np.isfinite(values).any():
            means[f"{prefix}/{name}"] = float(np.nanmean(values))
    tracker.log(means, step)
    tracker.flush()


def scalars(tree: dict) -> dict[str, float]:
    """Host floats of a dict of scalar arrays (NaN/inf as None, valid JSON)."""
    out = {}
    for name, value in tree.items():
        v = float(value)
        out[name] = v if np.isfinite(v) else None
    return out


# ---------------------------------------------------------------- supervised fitting


def fit(loss_fn: Callable[[Any, dict], jax.Array], params: Any,
        optimizer: optax.GradientTransformation, data: dict[str, np.ndarray], *, steps: int,
        batch_size: int, seed: int, eval_every: int = 0,
        eval_fn: Callable[[Any], dict] | None = None,
        mesh: jax.sharding.Mesh | None = None) -> tuple[Any, list[dict]]:
    """The host loop of the supervised stages (SFT, reward model): ``optimizer`` on
    ``loss_fn(params, batch)``.

    Minibatches are rows of ``data``, each pass a fresh permutation drawn from ``seed``, so a run is
    reproducible. On a ``mesh`` each minibatch is split over data × fsdp (every process feeds only
    its own rows) and parameters and optimiser state follow `sharding.param_shardings` (FSDP when
    the fsdp axis is > 1). ``eval_fn(params) -> dict`` runs every ``eval_every`` steps and after the
    last; each evaluation gives one row with ``step`` and the mean ``train_loss`` since the
    previous one.
    """
    mesh = mesh or sharding.make_mesh(1)
    params = sharding.place(params, sharding.param_shardings(mesh, params))
    opt_state = optimizer.init(params)
    opt_state = sharding.place(opt_state, sharding.param_shardings(mesh, opt_state))
    state_shardings = jax.tree.map(lambda x: x.sharding, (params, opt_state))

    def update(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batch_sharding = sharding.batch_sharding(mesh)
    step = jax.jit(update, in_shardings=(*state_shardings, batch_sharding),
                   out_shardings=(*state_shardings, sharding.replicated(mesh)))
    rng = np.random.default_rng(seed)
    n = len(next(iter(data.values())))
    order, cursor, rows, losses = rng.permutation(n), 0, [], []
    for i in range(1, steps + 1):
        processes.progress("fit.step")
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        idx = sharding.local_rows(order[cursor:cursor + batch_size])
        cursor += batch_size
        batch = sharding.place_local_batch({k: v[idx] for k, v in data.items()}, mesh)
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(loss)
        if eval_fn is not None and (i == steps or (eval_every and i % eval_every == 0)):
            row = {"step": i, "train_loss": float(np.mean(jax.device_get(losses)))}
            losses = []
            row.update(eval_fn(params))
            rows.append(row)
    return params, rows
