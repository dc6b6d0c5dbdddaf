"""The host side of the token RLHF pipeline: data, stage order, outputs. Thin by design.

``run(config, root)`` makes sure the stages a preset needs exist under ``root`` and runs its own:

    root/tfds/           the TFDS data sets (ArrayRecord), built once from the config
    root/sft/            reference policy: params.msgpack, metrics.jsonl, stage_config.json
    root/reward_model/   proxy reward model: the same files
    root/NAME/           a policy stage (``config.name``, the preset's name by default):
                         metrics.jsonl (per update and seed), eval.jsonl (per evaluation and seed,
                         with decoded samples), results.json (final evaluation
                         per seed), gold_proxy_vs_kl.png, params.msgpack (per seed, stacked)

A stage counts as done when its ``params.msgpack`` exists (written last, atomically), and its
``stage_config.json`` records the part of the config it depends on; a later run with a different
config for a finished prerequisite is refused (``overwrite`` replaces only the preset's own stage).
Config errors are raised before any data are generated or anything is compiled.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from kltrust import checkpoint as ckpt
from kltrust import guards, processes, sharding
from kltrust.errors import ConfigError
from kltrust.metrics import read_update_rows, truncate_update_rows
from kltrust.models.transformer import TransformerConfig
from kltrust.tasks import text, text_data
from kltrust.train import reward_model, rlhf, sft
from kltrust.train.methods import METHODS
from kltrust.train.token_config import (  # noqa: F401 (defaults, STAGES: re-exported)
    STAGES, defaults, hparams_from_config, static_from_config, validate)
from kltrust.train import tokens as tok

STAGE_KEYS = {  # the config parts each prerequisite stage depends on
    "sft": ("seed", "task", "data", "model", "sft"),
    "reward_model": ("seed", "task", "data", "reward_model", "rm"),
}


# ---------------------------------------------------------------- data


def _synthetic(config, kind: str, root: pathlib.Path, num_train: int, num_test: int,
               **extra) -> tuple[dict, dict]:
    tfds.disable_progress_bar()
    cfg = text_data.SyntheticConfig(language=tok.language_spec(config), num_train=num_train,
                                    num_test=num_test, seed=config.seed, **extra)
    builder = {"prompts": text_data.SyntheticPrompts, "sft": text_data.SyntheticSFT,
               "preferences": text_data.SyntheticPreferences}[kind]
    data_dir = str(root / "tfds")
    load = lambda: tuple(text_data.load_arrays(builder, cfg, split=s, data_dir=data_dir)  # noqa: E731
                         for s in ("train", "test"))
    return processes.primary_first(f"tfds.{kind}", load)


def preference_data(config, root):
    return _synthetic(config, "preferences", root, config.data.num_pairs,
                      config.data.num_eval_pairs, label_noise=float(config.data.label_noise),
                      bt_temperature=float(config.data.bt_temperature))


# ---------------------------------------------------------------- stages


def stage_json(config, stage: str) -> str:
    """The config parts a prerequisite stage depends on, as canonical JSON."""
    return json.dumps({k: (config[k].to_dict() if hasattr(config[k], "to_dict") else config[k])
                       for k in STAGE_KEYS[stage]}, sort_keys=True, default=str)


def _prepare(directory: pathlib.Path, config_json: str, overwrite: bool) -> None:
    """Refuses a stage directory of another config (unless ``overwrite``), then process 0 records
    this one; every process has checked before anything is written."""

    def check() -> None:
        existing = directory / "stage_config.json"
        if existing.exists() and existing.read_text() != config_json and not overwrite:
            raise ConfigError(f"{directory} holds a stage of a different config; choose another "
                             "--workdir or pass --overwrite to replace it.")

    processes.claim(f"prepare.{directory.name}", check, directory)
    if processes.is_primary():
        if overwrite and directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "stage_config.json").write_text(config_json)
    processes.sync(f"prepare.{directory.name}.written")


def _reuse(directory: pathlib.Path, stage: str, config, overwrite: bool) -> bool:
    """Whether a finished prerequisite stage is reused (every process agrees); a finished one of
    another config is refused."""

    def decide() -> bool:
        if overwrite or not tok.is_done(directory):
            return False
        _check_same(directory, stage_json(config, stage))
        return True

    return processes.claim(f"{stage}.done", decide, directory)


def run_sft(config, root: pathlib.Path, overwrite: bool = False) -> Any:
    """Trains the reference (or loads it when done). Returns its params."""
    out = root / "sft"
    policy = tok.Policy(tok.policy_config(config))
    if _reuse(out, "sft", config, overwrite):
        return tok.load_params(out, policy.init(jax.random.PRNGKey(0)))
    _prepare(out, stage_json(config, "sft"), overwrite)
    if config.data.source.startswith("tfds:"):
        return _run_sft_real_text(config, out)
    train, test = _synthetic(config, "sft", root, config.data.num_sft, 1024)
    train_tokens, train_mask = sft.corpus_arrays(train["prompt"], train["response"], train["mask"])
    test_tokens, test_mask = sft.corpus_arrays(test["prompt"], test["response"], test["mask"])
    language = text.make_language(tok.language_spec(config))
    prompt_len = test["prompt"].shape[1]
    true_logp = np.asarray(text.true_log_prob(language, test["prompt"], test["response"],
                                              test["mask"]))

    @jax.jit
    def held_out(params):
        loss = sft.next_token_loss(policy, params, test_tokens, test_mask)
        logits, _ = policy.sequence(params, test_tokens[:, :-1])
        logp = jax.nn.log_softmax(logits[:, prompt_len - 1:])
        token_logp = jnp.take_along_axis(logp, test["response"][..., None], axis=-1)[..., 0]
        model_logp = jnp.sum(token_logp * test["mask"], axis=-1)
        return loss, jnp.mean(true_logp - model_logp)

    def eval_fn(params):
        loss, kl_true = held_out(params)
        return {"test_loss": float(loss), "kl_true": float(kl_true)}

    params, rows = sft.train(policy, train_tokens, train_mask, steps=config.sft.steps,
                             batch_size=config.sft.batch_size,
                             learning_rate=config.sft.learning_rate, seed=config.seed,
                             eval_every=config.sft.eval_every, eval_fn=eval_fn,
                             mesh=sharding.mesh_from_config(config))
    tok.append_jsonl(out / "metrics.jsonl", rows)
    tok.save_params(out, params)
    return params


def _run_sft_real_text(config, out: pathlib.Path) -> Any:
    """Byte-level SFT on a TFDS text data set that is already prepared (nothing is downloaded)."""
    name = config.data.source.split(":", 1)[1]
    rows = text_data.byte_corpus(name, "train", config.data.seq_len, data_dir=config.data.get(
        "tfds_dir") or None)
    policy = tok.Policy(TransformerConfig(
        vocab_size=text_data.BYTE_VOCAB_SIZE, num_layers=config.model.num_layers,
        width=config.model.width, num_heads=config.model.num_heads, max_len=config.data.seq_len,
        critic="none"))
    loss_mask = (rows[:, 1:] != text.PAD).astype(np.float32)
    params, metrics = sft.train(policy, rows, loss_mask, steps=config.sft.steps,
                                batch_size=config.sft.batch_size,
                                learning_rate=config.sft.learning_rate, seed=config.seed,
                                eval_every=config.sft.eval_every, eval_fn=lambda p: {},
                                mesh=sharding.mesh_from_config(config))
    tok.append_jsonl(out / "metrics.jsonl", metrics)
    tok.save_params(out, params)
    return params


def _check_same(directory: pathlib.Path, config_json: str) -> None:
    existing = directory / "stage_config.json"
    if existing.exists() and existing.read_text() != config_json:
        raise ConfigError(f"{directory} was trained with a different config (task, data or model); "
                         "use another --workdir for this one.")


def run_reward_model(config, root: pathlib.Path, overwrite: bool = False) -> Any:
    out = root / "reward_model"
    rm_config = tok.reward_model_config(config)
    train, test = preference_data(config, root)
    if _reuse(out, "reward_model", config, overwrite):
        return tok.load_params(out, reward_model.init_params(rm_config, train, 0))
    _prepare(out, stage_json(config, "reward_model"), overwrite)
    params, rows = reward_model.train(
        rm_config, train, steps=config.rm.steps, batch_size=config.rm.batch_size,
        learning_rate=config.rm.learning_rate, seed=config.seed,
        eval_every=config.rm.eval_every, weight_decay=config.rm.weight_decay,
        eval_fn=lambda p: reward_model.accuracy(rm_config, p, test),
        mesh=sharding.mesh_from_config(config))
    tok.append_jsonl(out / "metrics.jsonl", rows)
    tok.save_params(out, params)
    return params


# ---------------------------------------------------------------- policy stage


@dataclasses.dataclass
class PolicyResult:
    train_metrics: dict[str, np.ndarray]  # name -> [runs, updates]
    evals: list[dict]  # rows per evaluation and seed
    final: list[dict]  # last evaluation per seed
    params: Any
    compile_seconds: float
    run_seconds: float
    tokens_sampled: int
    guard_events: list[dict] = dataclasses.field(default_factory=list)  # KL-guard rollbacks


def run_policy(config, root: pathlib.Path, ref_params, rm_params, *, write: bool = True,
               overwrite: bool = False, runs: tuple[np.ndarray, rlhf.HParams] | None = None,
               on_chunk: Callable[[int], None] | None = None) -> PolicyResult:
    """Runs a policy stage: all seeds vmapped in one program; evaluations between chunks.

    ``runs = (seeds [R], HParams with leaves [R])`` replaces the config's seeds and hyperparameters
    by R arbitrary runs of the same static config (a sweep's group); evaluation rows then carry
    ``index``, the run's position. ``on_chunk(updates)`` is called after every compiled chunk.
    """
    out = root / config.name
    spec = tok.language_spec(config)
    language = text.make_language(spec)
    prompts_train, prompts_test = _synthetic(config, "prompts", root, config.data.num_prompts,
                                             config.data.num_eval_prompts)
    pairs = None
    method = METHODS.get(config.rl.method)
    if method.offline_pairs:
        pairs = {k: jnp.asarray(v) for k, v in preference_data(config, root)[0].items()
                 if k in reward_model.PAIR_KEYS}
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(prompts_train["prompt"]),
                        jnp.asarray(prompts_test["prompt"]), language, pairs)
    resume = False
    if write:
        resume = _prepare_policy_dir(out, config, overwrite)
    if not method.trains:
        return _run_best_of_n(config, out, frozen, write)

    static = static_from_config(config)
    mesh = sharding.mesh_from_config(config)
    trainer = rlhf.Trainer(static, mesh)
    if runs is None:
        seeds = np.arange(config.num_seeds, dtype=np.int32) + config.seed
        hp = hparams_from_config(config, config.num_seeds)
    else:
        seeds, hp = np.asarray(runs[0], np.int32), runs[1]
    # The run axis is split over the mesh's ``runs`` axis: pad it to a multiple (copies of the last
    # run, computed and dropped).
    index = sharding.padded_run_index(len(seeds), mesh)
    num_runs = len(seeds)
    hp = jax.tree.map(lambda x: np.asarray(x)[index], hp)
    # The frozen models are laid out like the policy (FSDP or replicated), the prompts replicated.
    frozen = frozen.replace(
        ref_params=sharding.place(frozen.ref_params,
                                  sharding.param_shardings(mesh, frozen.ref_params)),
        rm_params=sharding.place(frozen.rm_params, sharding.param_shardings(mesh, frozen.rm_params)))
    init = sharding.vmap_runs(trainer.init, in_axes=(0, 0, None))
    # One layout for the state in and out of every chunk: runs × (FSDP or replicated) parameters.
    # (The reference's weights enter unbatched, so propagation alone would not put them on runs.)
    state_shardings = sharding.stacked_param_shardings(
        mesh, jax.eval_shape(init, seeds[index], hp, frozen))
    init = jax.jit(init, out_shardings=state_shardings)
    chunk = jax.jit(sharding.vmap_runs(trainer.run_chunk, in_axes=(0, 0, None)),
                    out_shardings=(state_shardings, None))
    with_kl = bool(config.rl.eval_kl)
    evaluate = jax.jit(sharding.vmap_runs(
        lambda st, key: trainer.evaluate(st, frozen, key, with_kl), in_axes=(0, 0)))

    t0 = time.perf_counter()
    state = init(jnp.asarray(seeds[index]), hp, frozen)
    eval_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 7919))(
        jnp.asarray(seeds[index]))
    chunk_c = chunk.lower(state, hp, frozen).compile()
    eval_c = evaluate.lower(state, eval_keys).compile()
    compile_seconds = time.perf_counter() - t0

    evals: list[dict] = []
    train_chunks: list[dict] = []
    num_chunks = config.rl.num_updates // config.rl.updates_per_eval
    run_seconds = 0.0
    kl_guard = _KLGuard(config, trainer, state, state_shardings, num_runs)

    def evaluation(i: int, state) -> tuple[dict, list[dict]]:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, i)
        metrics, responses = sharding.to_host(eval_c(state, keys))
        rows = []
        for r, seed in enumerate(np.asarray(seeds)):
            rows.append({"update": i * config.rl.updates_per_eval, "seed": int(seed), "index": r,
                         **tok.scalars({k: v[r] for k, v in metrics.items()}),
                         **tok.diversity(np.asarray(responses[r])),
                         "samples": [text.decode(responses[r][j], language) for j in range(3)]})
        return metrics, rows

    upe = config.rl.updates_per_eval
    checkpoints, first = None, 0
    if write:
        # Mid-run resume: a checkpoint after every chunk holds everything the loop carries (state,
        # hyperparameters the KL guard may have changed, the guard's last passing state), and the
        # rows already written are kept up to it.
        checkpoints = ckpt.Checkpoints(out, keep=2)
        if resume:
            step, restored = checkpoints.restore_latest(_carry(state, hp, kl_guard))
            first = (step or 0) // upe
            if step:
                state, hp = _uncarry(restored, kl_guard)
            evals = _read_rows(out / "eval.jsonl", lambda row: row["update"] < first * upe)
            kl_guard.events = _read_rows(out / "events.jsonl",
                                         lambda row: row["evaluation"] < first)
            processes.agree("policy.resume_step", step)
            if first:
                train_chunks.append(read_update_rows(out / "metrics.jsonl", first * upe))
            processes.sync("policy.rows_read")  # every process has read before rows are cut
            if processes.is_primary():
                truncate_update_rows(out / "metrics.jsonl", first * upe)
                truncate_update_rows(out / "eval.jsonl", first * upe - 1)
                truncate_update_rows(out / "events.jsonl", first - 1, key="evaluation")
            processes.sync("policy.resumed")
    try:
        for i in range(first, num_chunks + 1):
            metrics, rows = evaluation(i, state)
            if i and kl_guard.active:
                events = len(kl_guard.events)
                state, hp, rolled = kl_guard.check(state, hp, metrics["kl"], i, seeds)
                if rolled and i == num_chunks:
                    # The run ends on its last passing state: that is the final evaluation.
                    metrics, rows = evaluation(i, state)
                if write:
                    tok.append_jsonl(out / "events.jsonl", kl_guard.events[events:])
            evals += rows
            if write:
                tok.append_jsonl(out / "eval.jsonl", rows)
            if i == num_chunks:
                break
            t = time.perf_counter()
            processes.progress("policy.chunk")
            state, m = chunk_c(state, hp, frozen)
            m = {k: v[:num_runs] for k, v in sharding.to_host(m).items()}
            run_seconds += time.perf_counter() - t
            train_chunks.append(m)
            if write:
                tok.append_jsonl(out / "metrics.jsonl", [
                    {"update": i * upe + u + 1, "seed": int(seed),
                     **tok.scalars({k: v[r, u] for k, v in m.items()})}
                    for u in range(upe) for r, seed in enumerate(np.asarray(seeds))])
            guards.check_streak(m, config.guards.max_nonfinite_updates, i * upe, seeds)
            if write:
                checkpoints.save((i + 1) * upe, _carry(state, hp, kl_guard))
            if on_chunk is not None:
                on_chunk(upe)
    finally:
        if checkpoints is not None:
            checkpoints.close()  # a failing run still finishes the checkpoints it started

    train_metrics = {k: np.concatenate([c[k] for c in train_chunks], axis=1)
                     for k in train_chunks[0]}
    final = [row for row in evals if row["update"] == config.rl.num_updates]
    # Offline DPO samples nothing while training (only in evaluations, which are not timed).
    tokens_sampled = 0 if method.offline_pairs else (
        config.rl.num_updates * static.batch_size * spec.response_len * len(seeds))
    params = state.params
    if len(index) > num_runs:
        params = jax.tree.map(lambda x: x[:num_runs], params)
    result = PolicyResult(train_metrics, evals, final, params, compile_seconds, run_seconds,
                          tokens_sampled, kl_guard.events)
    if write:
        _write_policy(out, config, result, seeds)
    return result


class _KLGuard:
    """The KL guard between evaluations (``config.guards``): a run whose exact KL to the reference
    exceeds ``kl_budget``, or grows more than ``kl_jump``-fold over its last passing evaluation
    (once that was at least ``kl_jump_from`` nats), or is not finite, goes back to the state of its
    last passing evaluation with a stronger anchor (`rlhf.Trainer.back_off`, by ``kl_backoff``).
    Each rollback is an event (logged, and written to ``events.jsonl``); more than
    ``max_rollbacks`` for one run stop the stage. The last passing state is kept in memory: the
    policy stage has no mid-run checkpoints on disk.
    """

    def __init__(self, config, trainer: rlhf.Trainer, state, state_shardings, num_runs: int):
        g = config.guards
        self.budget, self.jump, self.jump_from = g.kl_budget, g.kl_jump, g.kl_jump_from
        self.backoff, self.max_rollbacks = g.kl_backoff, g.max_rollbacks
        self.active = self.budget > 0 or self.jump > 0
        self.num_runs, self.events = num_runs, []
        if not self.active:
            return
        self.good, self.good_kl = state, np.zeros(len(jax.tree.leaves(state)[0]))
        self.rollbacks = np.zeros_like(self.good_kl, dtype=int)
        self._back_off = jax.jit(sharding.vmap_runs(trainer.back_off, in_axes=(0, 0, 0, 0, None)),
                                 out_shardings=(state_shardings, None))
        self._keep = jax.jit(
            lambda keep, new, old: jax.tree.map(
                lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old),
            out_shardings=state_shardings)

    def check(self, state, hp, kl: np.ndarray, i: int, seeds: np.ndarray):
        """(state, hp, whether any run was rolled back) after the evaluation of chunk ``i``."""
        kl = np.asarray(kl, np.float64)
        over = (self.budget > 0) & (kl > self.budget)
        jumped = ((self.jump > 0) & (self.good_kl >= self.jump_from)
                  & (kl > self.jump * self.good_kl))
        bad = over | jumped | ~np.isfinite(kl)
        if bad.any():
            self.rollbacks += bad
            for r in np.flatnonzero(bad[:self.num_runs]):
                event = {"evaluation": i, "seed": int(seeds[r]), "index": int(r),
                         "kl": float(kl[r]) if np.isfinite(kl[r]) else None,
                         "last_passing_kl": float(self.good_kl[r]),
                         "reason": "budget" if over[r] else ("jump" if jumped[r] else
                                                             "non-finite"),
                         "rollback": int(self.rollbacks[r])}
                self.events.append(event)
                warnings.warn(f"KL guard: {event}; rolled back to the last passing evaluation "
                              f"and strengthened the anchor by {self.backoff}×.", RuntimeWarning,
                              stacklevel=3)
            worst = int(np.argmax(self.rollbacks[:self.num_runs]))
            if self.rollbacks[worst] > self.max_rollbacks:
                raise guards.KLGuardError(
                    f"evaluation {i} (run {worst}, seed {int(seeds[worst])}): the KL guard rolled "
                    f"back more than guards.max_rollbacks = {self.max_rollbacks} times; last KL "
                    f"{kl[worst]:.4g} against guards.kl_budget = {self.budget}.")
            state, hp = self._back_off(state, hp, self.good, jnp.asarray(bad),
                                       jnp.float32(self.backoff))
            hp = jax.tree.map(np.asarray, sharding.to_host(hp))  # host arrays, as chunks expect
        self.good = self._keep(jnp.asarray(~bad), state, self.good)
        self.good_kl = np.where(bad, self.good_kl, kl)
        return state, hp, bool(bad.any())


def _prepare_policy_dir(out: pathlib.Path, config, overwrite: bool) -> bool:
    """Whether to resume: True when ``out`` holds an unfinished stage of this very config. A
    finished stage, or one of a different config, is refused unless ``overwrite``."""
    config_json = config.to_json_best_effort(indent=2, sort_keys=True)

    def decide() -> tuple[bool, bool]:
        holds_results = out.exists() and any(out.iterdir())
        same = (out / "config.json").exists() and (out / "config.json").read_text() == config_json
        if holds_results and not overwrite:
            if not same:
                raise ConfigError(f"{out} holds a policy stage of a different config; pass "
                                 "--overwrite to replace it.")
            if tok.is_done(out) or (out / "results.json").exists():
                raise ConfigError(f"{out} already holds results of this finished stage; pass "
                                 "--overwrite to run it again.")
        # Best-of-n has no training state to resume: an unfinished one starts again.
        return holds_results, holds_results and same and not overwrite and (
            METHODS.get(config.rl.method).trains)

    holds_results, resume = processes.claim(f"prepare.{out.name}", decide, out)
    if processes.is_primary() and not resume:
        if holds_results:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(config_json)
    processes.sync(f"prepare.{out.name}.written")
    return resume


def _carry(state, hp, kl_guard) -> dict:
    """What a policy-stage checkpoint holds (all arrays, so orbax can write them)."""
    carry = {"state": state, "hp": jax.tree.map(jnp.asarray, hp)}
    if kl_guard.active:
        carry["guard"] = {"good": kl_guard.good, "good_kl": jnp.asarray(kl_guard.good_kl),
                          "rollbacks": jnp.asarray(kl_guard.rollbacks)}
    return carry


def _uncarry(carry: dict, kl_guard):
    if kl_guard.active:
        kl_guard.good = carry["guard"]["good"]
        kl_guard.good_kl = np.asarray(carry["guard"]["good_kl"])
        kl_guard.rollbacks = np.asarray(carry["guard"]["rollbacks"])
    return carry["state"], jax.tree.map(np.asarray, carry["hp"])


def _read_rows(path: pathlib.Path, keep: Callable[[dict], bool]) -> list[dict]:
    if not path.exists():
        return []
    return [row for row in map(json.loads, path.read_text().splitlines()) if keep(row)]


def _write_policy(out: pathlib.Path, config, result: PolicyResult, seeds) -> None:
    """The stage's summary files (metrics.jsonl, eval.jsonl, events.jsonl were written as it went);
    params.msgpack last, as the completion marker."""
    params = sharding.to_host(result.params)  # every process: gathering shards is collective
    if not processes.is_primary():
        return
    (out / "results.json").write_text(json.dumps({
        "final": result.final, "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds, "tokens_sampled": result.tokens_sampled}, indent=2))
    plot_gold_proxy_vs_kl(result.evals, out / "gold_proxy_vs_kl.png", config.name)
    tok.save_params(out, params)  # last: the stage's completion marker


def _run_best_of_n(config, out, frozen, write: bool) -> PolicyResult:
    reference = tok.Policy(tok.policy_config(config))
    rm_config = tok.reward_model_config(config)
    language = frozen.language
    evals = []
    t0 = time.perf_counter()
    for n in config.rl.best_of_n:
        fn = jax.jit(lambda key, n=n: rlhf.best_of_n(reference, rm_config, frozen, key, n))
        for r in range(config.num_seeds):
            seed = config.seed + r
            out_n = jax.device_get(fn(jax.random.fold_in(jax.random.PRNGKey(seed), n)))
            responses = np.asarray(out_n.pop("responses"))
            evals.append({"n": n, "seed": seed, **tok.scalars(out_n),
                          **tok.diversity(responses),
                          "samples": [text.decode(responses[j], language) for j in range(3)]})
    result = PolicyResult({}, evals, [e for e in evals if e["n"] == max(config.rl.best_of_n)],
                          None, 0.0, time.perf_counter() - t0, 0)
    if write:
        tok.append_jsonl(out / "eval.jsonl", evals)
        (out / "results.json").write_text(json.dumps({"final": result.final, "all": evals},
                                                     indent=2))
        plot_gold_proxy_vs_kl(evals, out / "gold_proxy_vs_kl.png", config.name)
    return result


def plot_gold_proxy_vs_kl(evals: list[dict], path: pathlib.Path, title: str) -> None:
    """Gold and proxy reward against the exact sequence KL to the reference, one line per seed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for seed in sorted({e["seed"] for e in evals}):
        rows = [e for e in evals if e["seed"] == seed and e.get("kl") is not None]
        kls = [e["kl"] for e in rows]
        ax.plot(kls, [e["gold"] for e in rows], "o-", color="tab:green", alpha=0.7,
                label="gold" if seed == evals[0]["seed"] else None)
        ax.plot(kls, [e["proxy"] for e in rows], "s--", color="tab:blue", alpha=0.7,
                label="proxy" if seed == evals[0]["seed"] else None)
    ax.set_xlabel("KL(π ‖ π_ref), nats per sequence")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: ml_collections.ConfigDict, root: str | pathlib.Path, overwrite: bool = False):
    """Validates, then runs the prerequisites and the preset's own stage under ``root``."""
    validate(config)
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if config.stage == "sft":
        return run_sft(config, root, overwrite)
    ref_params = run_sft(config, root)
    if config.stage == "reward_model":
        return run_reward_model(config, root, overwrite)
    rm_params = run_reward_model(config, root)
    return run_policy(config, root, ref_params, rm_params, overwrite=overwrite)
