"""The host side of the token RLHF pipeline: data, stage order, outputs. Thin by design.

``run(config, root)`` makes sure the stages a preset needs exist under ``root`` and runs its own:

    root/tfds/           the TFDS data sets (ArrayRecord), built once from the config
    root/sft/            reference policy: params.msgpack, metrics.jsonl, stage_config.json
    root/reward_model/   proxy reward model: the same files
    root/NAME/           a policy stage (``config.name``, the preset's name by default):
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

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from kltrust import processes, sharding
from kltrust import workdir as workdirs
from kltrust.models.transformer import TransformerConfig
from kltrust.tasks import text, text_data
from kltrust.train import host, policy_outputs, reward_model, rlhf, sft
from kltrust.train.kl_guard import KLGuard
from kltrust.train.methods import METHODS
from kltrust.train.policy_outputs import PolicyResult
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


# A prerequisite stage's directory: a finished stage of the same config is reused; an unfinished one
# runs again from the start; one of another config is refused unless ``overwrite``.
STAGE_RULES = workdirs.Rules(
    different="{path} holds a stage of a different config (task, data or model); choose another "
              "--workdir, or run that stage's preset with --overwrite to replace it.",
    config_file="stage_config.json", finished=tok.is_done, resumable=False)


def _claim_stage(directory: pathlib.Path, stage: str, config, overwrite: bool) -> bool:
    """Whether the finished stage in ``directory`` is reused; if not, it is claimed for a fresh run
    (every process agrees, then process 0 records this config)."""
    return workdirs.claim_workdir(f"prepare.{directory.name}", directory,
                                  stage_json(config, stage), STAGE_RULES,
                                  overwrite=overwrite) is workdirs.Claim.DONE


def run_sft(config, root: pathlib.Path, overwrite: bool = False) -> Any:
    """Trains the reference (or loads it when done). Returns its params."""
    out = root / "sft"
    policy = tok.Policy(tok.policy_config(config))
    if _claim_stage(out, "sft", config, overwrite):
        return tok.load_params(out, policy.init(jax.random.PRNGKey(0)))
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


def run_reward_model(config, root: pathlib.Path, overwrite: bool = False) -> Any:
    out = root / "reward_model"
    rm_config = tok.reward_model_config(config)
    train, test = preference_data(config, root)
    if _claim_stage(out, "reward_model", config, overwrite):
        return tok.load_params(out, reward_model.init_params(rm_config, train, 0))
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
        claim = workdirs.claim_workdir(
            f"prepare.{out.name}", out, config.to_json_best_effort(indent=2, sort_keys=True),
            policy_outputs.claim_rules(resumable=method.trains), overwrite=overwrite)
        resume = claim is workdirs.Claim.RESUME
    if not method.trains:
        return policy_outputs.run_best_of_n(config, out, frozen, write)

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

    upe = config.rl.updates_per_eval
    num_chunks = config.rl.num_updates // upe
    kl_guard = KLGuard(config, trainer, state, state_shardings, num_runs)
    evals: list[dict] = []

    def evaluation(i: int, state) -> tuple[dict, list[dict]]:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, i)
        metrics, responses = sharding.to_host(eval_c(state, keys))
        rows = []
        for r, seed in enumerate(np.asarray(seeds)):
            rows.append({"update": i * upe, "seed": int(seed), "index": r,
                         **tok.scalars({k: v[r] for k, v in metrics.items()}),
                         **tok.diversity(np.asarray(responses[r])),
                         "samples": [text.decode(responses[r][j], language) for j in range(3)]})
        return metrics, rows

    def between(i: int, carry):
        """The evaluation after ``i`` chunks, then the KL guard, which may roll runs back."""
        state, hp = carry
        metrics, rows = evaluation(i, state)
        if i and kl_guard.active:
            events = len(kl_guard.events)
            state, hp, rolled = kl_guard.check(state, hp, metrics["kl"], i, seeds)
            if rolled and i == num_chunks:
                # The run ends on its last passing state: that is the final evaluation.
                metrics, rows = evaluation(i, state)
            if write:
                tok.append_jsonl(out / "events.jsonl", kl_guard.events[events:])
        evals.extend(rows)
        if write:
            tok.append_jsonl(out / "eval.jsonl", rows)
        return state, hp

    def advance(carry):
        state, hp = carry
        state, metrics = chunk_c(state, hp, frozen)
        return (state, hp), metrics

    def write_rows(metrics: dict[str, np.ndarray], updates_before: int) -> None:
        tok.append_jsonl(out / "metrics.jsonl", [
            {"update": updates_before + u + 1, "seed": int(seed),
             **tok.scalars({k: v[r, u] for k, v in metrics.items()})}
            for u in range(upe) for r, seed in enumerate(np.asarray(seeds))])

    def restored(saved: dict):
        kl_guard.uncarry(saved)
        return saved["state"], jax.tree.map(np.asarray, saved["hp"])

    def resumed_events(rows: list[dict]) -> None:
        kl_guard.events = rows

    # A checkpoint after every chunk holds everything the loop carries: the state, the
    # hyperparameters the KL guard may have changed, and the guard's last passing state. On resume
    # the evaluation at the checkpoint (and its guard events) is redone, so rows are kept up to it.
    chunks = host.Chunks(
        name="policy", advance=advance, num_chunks=num_chunks, updates_per_chunk=upe, seeds=seeds,
        max_nonfinite_updates=config.guards.max_nonfinite_updates, write_rows=write_rows,
        rows_files=(host.RowsFile("eval.jsonl", "update", lambda done: done - 1, evals.extend),
                    host.RowsFile("events.jsonl", "evaluation", lambda done: done // upe - 1,
                                  resumed_events)),
        saved=lambda carry: {"state": carry[0], "hp": jax.tree.map(jnp.asarray, carry[1]),
                             **kl_guard.carry()},
        restored=restored, between=between, keep_checkpoints=2)
    ran = host.run(chunks, (state, hp), workdir=out if write else None, resume=resume,
                   on_chunk=on_chunk)

    final = [row for row in evals if row["update"] == config.rl.num_updates]
    # Offline DPO samples nothing while training (only in evaluations, which are not timed).
    tokens_sampled = 0 if method.offline_pairs else (
        config.rl.num_updates * static.batch_size * spec.response_len * len(seeds))
    params = ran.carry[0].params
    if len(index) > num_runs:
        params = jax.tree.map(lambda x: x[:num_runs], params)
    result = PolicyResult(ran.metrics, evals, final, params, compile_seconds, ran.chunk_seconds,
                          tokens_sampled, kl_guard.events, preempted=ran.preempted)
    if write and not ran.preempted:
        policy_outputs.write_policy(out, config, result)
    return result


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
