"""RLHF on a real pretrained model: LoRA policy, reference = the base, proxy on the model's trunk.

``run(spec, root)`` makes sure the stages the run needs exist under ``root`` and runs its own:

    root/tfds/          the sentiment prompts' TFDS data set (`kltrust.tasks.sentiment`)
    root/pairs/         reference samples, two per prompt, labelled by a Bradley–Terry draw on the
                        VADER gold: pairs.npz (train and test) and summary.json
    root/reward_model/  the proxy: a linear head on the frozen trunk's pooled hidden states
                        (`kltrust.models.trunk_reward`), head.npz and metrics.json (held-out
                        accuracy against the labels and against the noiseless gold ordering)
    root/NAME/          the policy stage (``spec.name``): metrics.jsonl, eval.jsonl, events.jsonl
                        (the KL guard's rollbacks, `kltrust.train.kl_guard`, when it is on),
                        checkpoints, results.json (final evaluation, the alignment tax: perplexity
                        of held-out English under the policy and the reference; diversity;
                        samples), adapters.msgpack (the trained parameters without the base
                        weights)

There is no SFT stage: the pretrained model is the reference as it is, and the policy starts at it
(`LanguageModel.start_from`: LoRA B = 0, the base's own arrays; PPO's value head wraps it,
`kltrust.models.heads.ValueHead`). The methods are the token trainer's (`kltrust.train.rlhf`,
registry `kltrust.train.methods.METHODS`), unchanged: nothing below knows which method runs.

The pairs and the reward model depend on the model, the task, the pairs' settings and the seed;
they are reused when present (their summary records those settings and a mismatch is refused).
Seeds of the policy stage run vmapped in one program (``num_seeds``; 1 on 2 CPU cores). Gemma
weights, and anything trained from them (the adapters), fall under the Gemma Terms of Use: runs
stay local, never committed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from kltrust import rollout as rollouts
from kltrust import workdir as workdirs
from kltrust.errors import ConfigError
from kltrust.models import lora, pretrained
from kltrust.models.heads import ValueHead
from kltrust.models.pretrained.config import ArchConfig
from kltrust.models.pretrained.text import HELD_OUT_ENGLISH, perplexity
from kltrust.models.trunk_reward import (TrunkReward, fit_head, head_accuracy, pair_features,
                                         select_l2)
from kltrust.tasks.interface import PAIR_KEYS
from kltrust.tasks.sentiment import SentimentTask
from kltrust.train import host, policy_outputs, rlhf
from kltrust.train import tokens as tok
from kltrust.train.kl_guard import KLGuard
from kltrust.train.methods import METHODS, best_of_n
from kltrust.train.real_config import RealSpec


@dataclasses.dataclass(frozen=True)
class Stack:
    """The loaded pieces every stage shares."""

    base: pretrained.PretrainedLM  # the reference (and the trunk of the proxy)
    task: SentimentTask
    reward: TrunkReward


def load_stack(spec: RealSpec, root: pathlib.Path) -> Stack:
    """The model (its cache length cut to prompt + response: the KV cache is sized by it), the
    task for its tokenizer, and the proxy's shape."""
    base = pretrained.load(spec.model_name, spec.dtype)
    task = SentimentTask.create(base.tokenizer, spec.prompt_len, spec.response_len,
                                data_dir=str(root / "tfds"))
    cfg = ArchConfig.from_dict({**base.config.to_dict(),
                                "max_len": task.prompt_len + task.response_len})
    base = dataclasses.replace(base, config=cfg)
    return Stack(base, task, TrunkReward(base, spec.rm.pooling))


def _refuse_other(path: pathlib.Path, settings: dict) -> bool:
    """True if ``path`` (a summary.json) exists with these settings; ConfigError if with others."""
    if not path.exists():
        return False
    saved = json.loads(path.read_text()).get("settings")
    if saved != json.loads(json.dumps(settings)):
        raise ConfigError(f"{path.parent} was made with other settings ({saved}); choose another "
                          f"root or remove it (wanted {settings}).")
    return True


def reference_pairs(spec: RealSpec, stack: Stack, ref_params: Any,
                    root: pathlib.Path) -> tuple[dict, dict]:
    """(train, test) preference pairs: two reference samples per prompt (prompts drawn without
    replacement from each split by the seed), labelled by `SentimentTask.label_samples`."""
    out = root / "pairs"
    settings = {"model": stack.base.name, "dtype": spec.dtype, "seed": spec.seed,
                "prompt_len": stack.task.prompt_len, "response_len": stack.task.response_len,
                **dataclasses.asdict(spec.pairs)}
    if _refuse_other(out / "summary.json", settings):
        data = np.load(out / "pairs.npz")
        split = lambda s: {k[len(s) + 1:]: data[k] for k in data.files if k.startswith(s + "/")}  # noqa: E731
        return split("train"), split("test")
    base, task, b = stack.base, stack.task, spec.pairs.batch_size

    # Every jitted function here takes the weights as an argument: closed over, they would be
    # compiled in as constants (slow to compile, and XLA constant-folds the 100 MB embedding).
    @jax.jit
    def sample(params, prompts, key):
        response, mask, _ = rollouts.sample_tokens(
            base.decode, params, prompts, base.empty_cache(prompts.shape[0]), key,
            max_new_tokens=task.response_len, eos_id=task.eos_id, pad_id=task.pad_id)
        return response, mask

    rng = np.random.default_rng(spec.seed)
    key = jax.random.PRNGKey(spec.seed)
    result, t0 = {}, time.perf_counter()
    for split, n in (("train", spec.pairs.num_train), ("test", spec.pairs.num_test)):
        all_prompts = task.prompts(split)
        prompts = all_prompts[rng.permutation(len(all_prompts))[:n]] if n <= len(all_prompts) \
            else all_prompts[rng.integers(0, len(all_prompts), n)]
        sides = []
        for side in range(2):
            rows, masks = [], []
            for start in range(0, n, b):
                idx = np.arange(start, start + b) % n  # one compiled shape
                key, sub = jax.random.split(key)
                r, m = sample(ref_params, jnp.asarray(prompts[idx]), sub)
                keep = min(b, n - start)
                rows.append(np.asarray(r)[:keep])
                masks.append(np.asarray(m)[:keep])
            sides.append((np.concatenate(rows), np.concatenate(masks)))
        key, sub = jax.random.split(key)
        result[split] = task.label_samples(prompts, *sides[0], *sides[1], sub,
                                           spec.pairs.label_noise, spec.pairs.temperature)
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "pairs.npz", **{f"{s}/{k}": v for s, d in result.items() for k, v in d.items()})
    golds = np.concatenate([result["train"]["gold_chosen"], result["train"]["gold_rejected"]])
    summary = {"settings": settings, "seconds": seconds, "reference_gold_mean": float(golds.mean()),
               "reference_gold_std": float(golds.std()),
               "chosen_is_gold_better": float(np.mean(
                   result["train"]["gold_chosen"] > result["train"]["gold_rejected"])),
               "samples": task.response_texts(result["train"]["chosen"][:4],
                                              result["train"]["chosen_mask"][:4])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return result["train"], result["test"]


def reward_model(spec: RealSpec, stack: Stack, ref_params: Any, pairs: tuple[dict, dict],
                 root: pathlib.Path) -> dict:
    """The proxy's head ({"w", "b"}), fitted on the train pairs' trunk features (or reused)."""
    out = root / "reward_model"
    settings = {"pairs": json.loads((root / "pairs" / "summary.json").read_text())["settings"],
                **dataclasses.asdict(spec.rm)}
    if _refuse_other(out / "metrics.json", settings):
        data = np.load(out / "head.npz")
        return {"w": data["w"], "b": data["b"]}
    # The trunk's features depend on the pairs and the pooling only: kept, so that a head with
    # another l2 or step count refits in seconds.
    cached = out / f"features_{spec.rm.pooling}.npz"
    t0 = time.perf_counter()
    if cached.exists():
        data = np.load(cached)
        train, test = (data["train_chosen"], data["train_rejected"]), (data["test_chosen"],
                                                                       data["test_rejected"])
    else:
        train, test = (pair_features(stack.reward, ref_params, p, spec.pairs.batch_size)
                       for p in pairs)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(cached, train_chosen=train[0], train_rejected=train[1], test_chosen=test[0],
                 test_rejected=test[1])
    features_seconds = time.perf_counter() - t0
    l2, cv = select_l2(*train, spec.rm.l2_grid, folds=spec.rm.cv_folds, steps=spec.rm.steps,
                       learning_rate=spec.rm.learning_rate, seed=spec.seed)
    head, losses = fit_head(*train, l2=l2, steps=spec.rm.steps, learning_rate=spec.rm.learning_rate)
    margin = lambda p: p["gold_chosen"] - p["gold_rejected"]  # noqa: E731
    metrics = {"settings": settings, "features_seconds": features_seconds, "l2": l2, "cv": cv,
               "train": head_accuracy(head, *train, margin(pairs[0])),
               "test": head_accuracy(head, *test, margin(pairs[1])), "fit_losses": losses}
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "head.npz", **head)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return head


def without_base(params: Any) -> Any:
    """``params`` with every "base" subtree (the frozen pretrained weights) left out."""
    if isinstance(params, dict):
        return {k: without_base(v) for k, v in params.items() if k != "base"}
    return params


def with_base(params: Any, template: Any) -> Any:
    """`without_base`'s inverse: ``params`` with each "base" subtree taken from ``template``."""
    if isinstance(template, dict):
        return {k: v if k == "base" else with_base(params[k], v) for k, v in template.items()}
    return params


def with_remat(base: pretrained.PretrainedLM, remat: bool) -> pretrained.PretrainedLM:
    """``base`` with its layers rematerialised in the backward pass or not (`ArchConfig.remat`)."""
    if base.config.remat == remat:
        return base
    return dataclasses.replace(base, config=dataclasses.replace(base.config, remat=remat))


def policy_model(spec: RealSpec, base: pretrained.PretrainedLM):
    """The policy: LoRA adapters on the base, under a value head for methods with a critic.
    ``spec.remat`` rematerialises the base's layers in the policy's backward pass (the reference
    and the proxy's trunk are never differentiated, so they keep the plain forward)."""
    model = lora.LoRAModel(with_remat(base, spec.remat), spec.lora)
    if not METHODS.get(spec.method).critic:
        return model
    return ValueHead(model)


def run_policy(spec: RealSpec, stack: Stack, ref_params: Any, head: dict, pairs: tuple[dict, dict],
               root: pathlib.Path, overwrite: bool = False) -> dict:
    """The policy stage: ``num_updates`` of ``spec.method`` (or best-of-n), evaluations every
    ``updates_per_eval``; results.json with the final evaluation and the alignment tax."""
    out = root / spec.name
    method = METHODS.get(spec.method)
    claim = workdirs.claim_workdir(f"prepare.{out.name}", out, spec.config_json,
                                   policy_outputs.claim_rules(resumable=method.trains),
                                   overwrite=overwrite)
    task, base = stack.task, stack.base
    eval_prompts = task.prompts("test")[:spec.num_eval_prompts]
    rm_params = {"trunk": ref_params, "head": jax.tree.map(jnp.asarray, head)}
    frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(task.prompts("train")),
                        jnp.asarray(eval_prompts), task,
                        {k: jnp.asarray(pairs[0][k]) for k in PAIR_KEYS}
                        if method.offline_pairs else None)
    policy = policy_model(spec, base)
    static = dataclasses.replace(spec.static, policy=policy, reference=base,
                                 reward_model=stack.reward)
    if not method.trains:
        return _best_of_n(spec, stack, static, frozen, out)
    trainer = rlhf.Trainer(static)
    seeds = np.arange(spec.num_seeds, dtype=np.int32) + spec.seed
    hp = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (len(seeds),)),
                      spec.hparams_values)
    t0 = time.perf_counter()
    state = jax.jit(jax.vmap(trainer.init, in_axes=(0, 0, None)))(jnp.asarray(seeds), hp, frozen)
    chunk = jax.jit(jax.vmap(trainer.run_chunk, in_axes=(0, 0, None))).lower(
        state, hp, frozen).compile()
    eval_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s), 7919))(
        jnp.asarray(seeds))
    evaluate = jax.jit(jax.vmap(trainer.evaluate, in_axes=(0, None, 0))).lower(
        state, frozen, eval_keys).compile()
    compile_seconds = time.perf_counter() - t0
    upe, evals = spec.updates_per_eval, []
    num_chunks = spec.num_updates // upe
    kl_guard = KLGuard(spec.guards, trainer, state, None, len(seeds))  # None: one device, no mesh

    def evaluation(i: int, state) -> tuple[dict, list[dict]]:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, i)
        metrics, responses = jax.device_get(evaluate(state, frozen, keys))
        rows = [{"update": i * upe, "seed": int(seed), **tok.scalars({k: v[r] for k, v in metrics.items()}),
                 **tok.diversity(np.asarray(responses[r]), task.pad_id),
                 "samples": [task.decode(np.concatenate([eval_prompts[j], responses[r][j]]))
                             for j in range(3)]} for r, seed in enumerate(seeds)]
        return metrics, rows

    def between(i: int, carry):
        """The evaluation after ``i`` chunks, then the KL guard, which may roll runs back."""
        carry, rows = kl_guard.between(evaluation, i, carry, seeds, num_chunks,
                                       out / "events.jsonl")
        evals.extend(rows)
        tok.append_jsonl(out / "eval.jsonl", rows)
        return carry

    write_rows = tok.update_rows_writer(out / "metrics.jsonl", seeds, upe)

    def advance(carry):
        state, metrics = chunk(carry[0], carry[1], frozen)
        return (state, carry[1]), metrics

    # Checkpoints leave the base out (it never changes and the optimiser holds no state for it,
    # `tok.adam`): the adapters, value head, Adam moments and counters only (of the state and of
    # the KL guard's last passing one), with the hyperparameters the guard may have changed;
    # restored around the base of the initial state. Two are kept: with the guard on, the older
    # one is the last passing evaluation's when the newest fails.
    strip = lambda st: st.replace(params=without_base(st.params))  # noqa: E731
    unstrip = lambda st: st.replace(params=with_base(st.params, state.params))  # noqa: E731
    chunks = host.Chunks(
        name="policy", advance=advance, num_chunks=num_chunks, updates_per_chunk=upe, seeds=seeds,
        max_nonfinite_updates=spec.guards.max_nonfinite_updates, write_rows=write_rows,
        rows_files=(host.RowsFile("eval.jsonl", "update", lambda done: done - 1, evals.extend),
                    kl_guard.rows_file(upe)),
        saved=lambda carry: kl_guard.saved(carry, strip),
        restored=lambda saved: kl_guard.restored(saved, unstrip),
        between=between, keep_checkpoints=2)
    ran = host.run(chunks, (state, hp), workdir=out, resume=claim is workdirs.Claim.RESUME)
    if ran.preempted:
        return {"preempted": True}
    params = ran.carry[0].params
    final = [row for row in evals if row["update"] == spec.num_updates]
    for r, row in enumerate(final):
        row["perplexity"] = perplexity(policy, jax.tree.map(lambda x: x[r], params),
                                       HELD_OUT_ENGLISH)
    tokens_sampled = 0 if method.offline_pairs else (
        spec.num_updates * static.batch_size * task.response_len * len(seeds))
    results = {"final": final, "reference_perplexity": perplexity(base, ref_params, HELD_OUT_ENGLISH),
               "compile_seconds": compile_seconds, "run_seconds": ran.chunk_seconds,
               "tokens_sampled": tokens_sampled}
    (out / "adapters.msgpack").write_bytes(
        flax.serialization.to_bytes(jax.device_get(without_base(params))))
    policy_outputs.plot_gold_proxy_vs_kl(evals, out / "gold_proxy_vs_kl.png", spec.name)
    (out / "results.json").write_text(json.dumps(results, indent=2))  # last: the stage is done
    return results


def _best_of_n(spec: RealSpec, stack: Stack, static: rlhf.Static, frozen: tok.Frozen,
               out: pathlib.Path) -> dict:
    """Best-of-n from the reference against the proxy for every n of ``spec.best_of_n`` (its KL is
    the analytic upper bound log n − (n−1)/n); n = 1 is the reference itself."""
    task, rows = stack.task, []
    t0 = time.perf_counter()
    for n in spec.best_of_n:
        # The frozen inputs (the base weights) are an argument: closed over, they would be
        # compiled in as constants (XLA then constant-folds 100 MB matrices for minutes).
        fn = jax.jit(lambda frozen, key, n=n: best_of_n.sample(static.reference, static.reward_model,
                                                             frozen, key, n,
                                                             static.stats_chunk))
        for seed in range(spec.seed, spec.seed + spec.num_seeds):
            got = jax.device_get(fn(frozen, jax.random.fold_in(jax.random.PRNGKey(seed), n)))
            responses = np.asarray(got.pop("responses"))
            rows.append({"n": n, "seed": seed, **tok.scalars(got),
                         **tok.diversity(responses, task.pad_id),
                         "samples": [task.decode(np.concatenate([frozen.eval_prompts[j], responses[j]]))
                                     for j in range(3)]})
    tok.append_jsonl(out / "eval.jsonl", rows)
    results = {"final": rows, "reference_perplexity": perplexity(
        stack.base, frozen.ref_params, HELD_OUT_ENGLISH), "run_seconds": time.perf_counter() - t0}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def run(spec: RealSpec, root: str | pathlib.Path, overwrite: bool = False,
        stack: Stack | None = None) -> dict:
    """Every stage the spec needs under ``root``, then its own (module docstring). ``stack``
    replaces the loaded model and task (tests: a tiny random decoder with its own tokenizer)."""
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stack = stack or load_stack(spec, root)
    ref_params = jax.tree.map(jnp.asarray, stack.base.init(jax.random.PRNGKey(0)))
    pairs = reference_pairs(spec, stack, ref_params, root)
    head = reward_model(spec, stack, ref_params, pairs, root)
    return run_policy(spec, stack, ref_params, head, pairs, root, overwrite)
