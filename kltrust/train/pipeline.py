"""The host side of the token RLHF pipeline: data, stage order, outputs. Thin by design.

``run(spec, root)`` makes sure the stages a preset needs exist under ``root`` and runs its own (the
`TokenSpec` comes from `kltrust.train.token_config.spec_from_config`, which validates the config
at the boundary; nothing here reads the config dict):

    root/tfds/           the TFDS data sets (ArrayRecord), built once from the config
    root/sft/            reference policy: params.msgpack, metrics.jsonl, stage_config.json
    root/reward_model/   proxy reward model: the same files
    root/NAME/           a policy stage (``spec.name``, the preset's name by default):
                         metrics.jsonl, eval.jsonl, events.jsonl, checkpoints, results.json,
                         gold_proxy_vs_kl.png, params.msgpack (`kltrust.train.policy_outputs`)

A stage counts as done when its ``params.msgpack`` exists (written last, atomically), and its
``stage_config.json`` records the part of the config it depends on; a later run with a different
config for a finished prerequisite is refused (``overwrite`` replaces only the preset's own stage).
Stage directories are claimed by `kltrust.workdir`; a policy stage's chunks run in the host loop
(`kltrust.train.host`), which resumes an interrupted stage from its last checkpoint and stops it
cleanly on SIGTERM. Config errors are raised before any data are generated or anything is compiled.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from kltrust import domains, processes, sharding, tracking
from kltrust import workdir as workdirs
from kltrust.tasks import text, text_data
from kltrust.tasks.interface import PAIR_KEYS, SPLITS
from kltrust.tasks.synthetic.task import SyntheticTask
from kltrust.train import host, policy_outputs, reward_model, rlhf, sft
from kltrust.train.kl_guard import KLGuard
from kltrust.train.methods import METHODS
from kltrust.train.policy_outputs import PolicyResult
from kltrust.train.token_config import (  # noqa: F401 (the config layer, re-exported)
    STAGE_KEYS, STAGES, defaults, hparams_from_config, spec_from_config, stage_json,
    static_from_config, validate)
from kltrust.train.token_spec import TokenSpec
from kltrust.train import tokens as tok


# ---------------------------------------------------------------- data


def synthetic_task(spec: TokenSpec, root: pathlib.Path) -> SyntheticTask:
    """The run's `TokenTask`: the synthetic language with the run's data sets, read through its
    TFDS builders under ``root/tfds`` (written on first use)."""
    return spec.task(data_dir=str(root / "tfds"))


def load_splits(task: SyntheticTask, kind: str) -> tuple[Any, Any]:
    """(train, test) of one of the task's data sets (``kind``: "prompts", "sft_corpus" or
    "preference_pairs", its `TokenTask` method). Process 0 prepares the TFDS builder first; the
    others then read what it wrote."""
    tfds.disable_progress_bar()
    load = lambda: tuple(getattr(task, kind)(s) for s in SPLITS)  # noqa: E731
    barrier = {"prompts": "prompts", "sft_corpus": "sft", "preference_pairs": "preferences"}[kind]
    return processes.primary_first(f"tfds.{barrier}", load)


# ---------------------------------------------------------------- stages


# A prerequisite stage's directory: a finished stage of the same config is reused; an unfinished one
# runs again from the start; one of another config is refused unless ``overwrite``.
STAGE_RULES = workdirs.Rules(
    different="{path} holds a stage of a different config (task, data or model); choose another "
              "--workdir, or run that stage's preset with --overwrite to replace it.",
    config_file="stage_config.json", finished=tok.is_done, resumable=False)


def _claim_stage(directory: pathlib.Path, stage: str, spec: TokenSpec, overwrite: bool) -> bool:
    """Whether the finished stage in ``directory`` is reused; if not, it is claimed for a fresh run
    (every process agrees, then process 0 records this config)."""
    return workdirs.claim_workdir(f"prepare.{directory.name}", directory,
                                  spec.stage_json[stage], STAGE_RULES,
                                  overwrite=overwrite) is workdirs.Claim.DONE


def run_sft(spec: TokenSpec, root: pathlib.Path, overwrite: bool = False) -> Any:
    """Trains the reference (or loads it when done). Returns its params."""
    out = root / "sft"
    policy = tok.Policy(spec.policy)
    if _claim_stage(out, "sft", spec, overwrite):
        return tok.load_params(out, policy.init(jax.random.PRNGKey(0)))
    if spec.data.source.startswith("tfds:"):
        return _run_sft_real_text(spec, out)
    task = synthetic_task(spec, root)
    train, test = load_splits(task, "sft_corpus")
    train_tokens, train_mask = sft.corpus_arrays(train["prompt"], train["response"], train["mask"])
    test_tokens, test_mask = sft.corpus_arrays(test["prompt"], test["response"], test["mask"])
    prompt_len = test["prompt"].shape[1]
    # The synthetic language's known likelihood (the task the pipeline builds), for kl_true.
    true_logp = np.asarray(text.true_log_prob(task.language, test["prompt"], test["response"],
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

    params, rows = sft.train(policy, train_tokens, train_mask, steps=spec.sft.steps,
                             batch_size=spec.sft.batch_size,
                             learning_rate=spec.sft.learning_rate, seed=spec.seed,
                             eval_every=spec.sft.eval_every, eval_fn=eval_fn, mesh=spec.mesh())
    tok.append_jsonl(out / "metrics.jsonl", rows)
    tok.save_params(out, params)
    return params


def _run_sft_real_text(spec: TokenSpec, out: pathlib.Path) -> Any:
    """Byte-level SFT on a TFDS text data set that is already prepared (nothing is downloaded)."""
    name = spec.data.source.split(":", 1)[1]
    rows = text_data.byte_corpus(name, "train", spec.data.seq_len,
                                 data_dir=spec.data.tfds_dir or None)
    policy = tok.Policy(spec.text_model)
    loss_mask = (rows[:, 1:] != text.PAD).astype(np.float32)
    params, metrics = sft.train(policy, rows, loss_mask, steps=spec.sft.steps,
                                batch_size=spec.sft.batch_size,
                                learning_rate=spec.sft.learning_rate, seed=spec.seed,
                                eval_every=spec.sft.eval_every, eval_fn=lambda p: {},
                                mesh=spec.mesh())
    tok.append_jsonl(out / "metrics.jsonl", metrics)
    tok.save_params(out, params)
    return params


def run_reward_model(spec: TokenSpec, root: pathlib.Path, overwrite: bool = False) -> Any:
    """Trains the proxy reward model (or loads it when done). Returns its params."""
    out = root / "reward_model"
    rm_config = spec.reward_model
    train, test = load_splits(synthetic_task(spec, root), "preference_pairs")
    if _claim_stage(out, "reward_model", spec, overwrite):
        return tok.load_params(out, reward_model.init_params(rm_config, train, 0))
    params, rows = reward_model.train(
        rm_config, train, steps=spec.rm.steps, batch_size=spec.rm.batch_size,
        learning_rate=spec.rm.learning_rate, seed=spec.seed,
        eval_every=spec.rm.eval_every, weight_decay=spec.rm.weight_decay,
        eval_fn=lambda p: reward_model.accuracy(rm_config, p, test), mesh=spec.mesh())
    tok.append_jsonl(out / "metrics.jsonl", rows)
    tok.save_params(out, params)
    return params


# ---------------------------------------------------------------- policy stage


def run_policy(spec: TokenSpec, root: pathlib.Path, ref_params, rm_params, *, write: bool = True,
               overwrite: bool = False, runs: tuple[np.ndarray, rlhf.HParams] | None = None,
               on_chunk: Callable[[int], None] | None = None) -> PolicyResult:
    """Runs a policy stage: all seeds vmapped in one program; evaluations between chunks.

    ``runs = (seeds [R], HParams with leaves [R])`` replaces the spec's seeds and hyperparameters
    by R arbitrary runs of the same static config (a sweep's group); evaluation rows then carry
    ``index``, the run's position. ``on_chunk(updates)`` is called after every compiled chunk.
    """
    out = root / spec.name
    task = synthetic_task(spec, root)
    prompts_train, prompts_test = load_splits(task, "prompts")
    pairs = None
    method = METHODS.get(spec.method)
    if method.offline_pairs:
        pairs = {k: jnp.asarray(v) for k, v in load_splits(task, "preference_pairs")[0].items()
                 if k in PAIR_KEYS}
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(prompts_train),
                        jnp.asarray(prompts_test), task, pairs,
                        jnp.asarray(spec.domains.kl_scale, jnp.float32))
    resume = False
    if write:
        claim = workdirs.claim_workdir(
            f"prepare.{out.name}", out, spec.config_json,
            policy_outputs.claim_rules(resumable=method.trains), overwrite=overwrite)
        resume = claim is workdirs.Claim.RESUME
    if not method.trains:
        return policy_outputs.run_best_of_n(spec, out, frozen, write)

    static = spec.static
    mesh = spec.mesh()
    trainer = rlhf.Trainer(static, mesh)
    if runs is None:
        seeds = np.arange(spec.num_seeds, dtype=np.int32) + spec.seed
        hp = spec.hparams(spec.num_seeds)
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
    with_kl = spec.eval_kl
    evaluate = jax.jit(sharding.vmap_runs(
        lambda st, key: trainer.evaluate(st, frozen, key, with_kl), in_axes=(0, 0)))

    t0 = time.perf_counter()
    state = init(jnp.asarray(seeds[index]), hp, frozen)
    eval_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 7919))(
        jnp.asarray(seeds[index]))
    chunk_c = chunk.lower(state, hp, frozen).compile()
    eval_c = evaluate.lower(state, eval_keys).compile()
    compile_seconds = time.perf_counter() - t0

    upe = spec.updates_per_eval
    num_chunks = spec.num_updates // upe
    # With prompt domains the guard watches each one (under one global envelope, each against the
    # global budget); it strengthens one β_d per domain only under per-domain envelopes.
    watch = spec.domains.count > 1
    kl_guard = KLGuard(spec.guards, trainer, state, state_shardings, num_runs,
                       np.asarray(spec.domains.kl_scale if spec.domains.per_domain
                                  else (1.0,) * spec.domains.count) if watch else None,
                       per_domain_anchor=spec.domains.per_domain)
    evals: list[dict] = []

    # Which held-out prompts each domain shows in the evaluation rows (three each), found once.
    eval_prompts = np.asarray(frozen.eval_prompts)
    shown = [np.flatnonzero(np.asarray(domains.prompt_domains(task, eval_prompts)) == d)[:3]
             for d in range(domains.num_domains(task))] if domains.num_domains(task) > 1 else []

    def domain_samples(responses) -> dict[str, list[str]]:
        """Up to three decoded samples of each domain's prompts (``samples_dD``), with their
        prompts: what a per-domain KL alarm logs."""
        return {f"samples_d{d}": [f"{task.decode(eval_prompts[j])} → {task.decode(responses[j])}"
                                  for j in rows] for d, rows in enumerate(shown)}

    def evaluation(i: int, state) -> tuple[dict, list[dict]]:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, i)
        metrics, responses = sharding.to_host(eval_c(state, keys))
        rows = []
        for r, seed in enumerate(np.asarray(seeds)):
            rows.append({"update": i * upe, "seed": int(seed), "index": r,
                         **tok.scalars({k: v[r] for k, v in metrics.items()}),
                         **tok.diversity(np.asarray(responses[r]), task.pad_id),
                         "samples": [task.decode(responses[r][j]) for j in range(3)],
                         **domain_samples(responses[r])})
        return metrics, rows

    def between(i: int, carry):
        """The evaluation after ``i`` chunks, then the KL guard, which may roll runs back."""
        carry, rows = kl_guard.between(evaluation, i, carry, seeds, num_chunks,
                                       out / "events.jsonl" if write else None)
        evals.extend(rows)
        if write:
            tok.append_jsonl(out / "eval.jsonl", rows)
            tok.board_scalars(board, "eval", {k: [row.get(k) if row.get(k) is not None
                                                  else np.nan for row in rows]
                                              for k, v in rows[0].items()
                                              if isinstance(v, (int, float))
                                              and k not in ("seed", "index", "update")},
                              i * upe)
        return carry

    def advance(carry):
        state, hp = carry
        state, metrics = chunk_c(state, hp, frozen)
        return (state, hp), metrics

    board = None  # TensorBoard (and W&B, if on) beside the JSON rows, as the control runs
    if write and processes.is_primary():
        board = tracking.open_tracker(out, spec.wandb, spec.config_json)
    write_rows = tok.update_rows_writer(out / "metrics.jsonl", seeds, upe, board)

    # A checkpoint after every chunk holds everything the loop carries: the state, the
    # hyperparameters the KL guard may have changed, and the guard's last passing state. On resume
    # the evaluation at the checkpoint (and its guard events) is redone, so rows are kept up to it.
    chunks = host.Chunks(
        name="policy", advance=advance, num_chunks=num_chunks, updates_per_chunk=upe, seeds=seeds,
        max_nonfinite_updates=spec.guards.max_nonfinite_updates, write_rows=write_rows,
        rows_files=(host.RowsFile("eval.jsonl", "update", lambda done: done - 1, evals.extend),
                    kl_guard.rows_file(upe)),
        saved=kl_guard.saved, restored=kl_guard.restored, between=between, keep_checkpoints=2)
    try:
        ran = host.run(chunks, (state, hp), workdir=out if write else None, resume=resume,
                       on_chunk=on_chunk)
    except BaseException:
        if board is not None:  # the W&B run ends marked failed, its service not left waiting
            board.close(failed=True)
        raise

    final = [row for row in evals if row["update"] == spec.num_updates]
    # Offline DPO samples nothing while training (only in evaluations, which are not timed).
    tokens_sampled = 0 if method.offline_pairs else (
        spec.num_updates * static.batch_size * task.response_len * len(seeds))
    params = ran.carry[0].params
    if len(index) > num_runs:
        params = jax.tree.map(lambda x: x[:num_runs], params)
    result = PolicyResult(ran.metrics, evals, final, params, compile_seconds, ran.chunk_seconds,
                          tokens_sampled, kl_guard.events, preempted=ran.preempted)
    if write and not ran.preempted:
        policy_outputs.write_policy(out, spec.name, result)
    if board is not None:
        board.images({path.stem: path for path in sorted(out.glob("*.png"))})
        board.close()
    return result


def run(spec: TokenSpec, root: str | pathlib.Path, overwrite: bool = False):
    """Runs the prerequisites and the spec's own stage under ``root``."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if spec.stage == "sft":
        return run_sft(spec, root, overwrite)
    ref_params = run_sft(spec, root)
    if spec.stage == "reward_model":
        return run_reward_model(spec, root, overwrite)
    rm_params = run_reward_model(spec, root)
    return run_policy(spec, root, ref_params, rm_params, overwrite=overwrite)
