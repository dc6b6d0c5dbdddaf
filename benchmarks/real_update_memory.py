"""Compiled memory of one real-model RLHF update: full fine-tune vs LoRA, whole-batch vs chunked
teacher-forced statistics (``rl.stats_chunk``).

    PYTHONPATH=. python -m benchmarks.real_update_memory [--model=smollm2-135m --presets=grpo,ppo
        --policies=full,lora --chunks=0,4,1 --remat=false,true --run=grpo/lora/0/false]

The program is the real-model program's own (`kltrust.train.real_rlhf`, presets configs/real.py):
the same `rlhf.Trainer` with the pretrained base as the reference, the `TrunkReward` proxy on its
trunk and the sentiment task's prompts (built in memory, prompt length = the longest prompt),
one seed (no vmap), ``trainer.update(state, hp, frozen)`` jitted with every weight an argument
and nothing donated, as the program compiles it. The policy is either

    full   the pretrained model itself (params = a copy of the base, every leaf trained, Adam
           moments for all of them); PPO's value head wraps it (`kltrust.models.heads.ValueHead`)
    lora   `real_rlhf.policy_model`: LoRA (the preset's rank 8 on attention) on the base, Adam
           moments for the adapters (and the value head) only

Nothing runs for the table: every number is XLA's ``memory_analysis()`` of the compiled update,
built from `jax.ShapeDtypeStruct`s (the proxy's head is shape-only too). Argument bytes count
each jit argument separately: the base appears as ``frozen.ref_params``, as the proxy's
``rm_params["trunk"]`` (one buffer at run time: the program passes the same arrays) and, for LoRA,
as ``state.params["base"]`` (a separate copy at run time: the jitted ``init`` returns one, and
each update returns a new one, nothing being donated); the base's size is printed first.

``--remat``: ``config.model.remat`` (each layer recomputed in the policy's backward pass; for
*full* the trained model itself is rematerialised), so its effect on the temporaries can be read
off row against row.

``--run=PRESET/POLICY/CHUNK/REMAT`` afterwards runs one update of that cell on the real weights and
prints the process's peak RSS (`resource.getrusage`, which includes everything the process
touched before: the loaded weights, the compiles).
"""

from __future__ import annotations

import dataclasses
import itertools
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import real as real_configs
from kltrust.models import pretrained
from kltrust.models.heads import ValueHead
from kltrust.models.pretrained.config import ArchConfig
from kltrust.models.trunk_reward import TrunkReward
from kltrust.tasks.sentiment import SentimentTask
from kltrust.train import real_config, real_rlhf, rlhf
from kltrust.train import tokens as tok
from kltrust.train.methods import METHODS

flags.DEFINE_string("model", "smollm2-135m", "pretrained model name (kltrust.models.pretrained)")
flags.DEFINE_string("dtype", "float32", "weights' dtype")
flags.DEFINE_list("presets", ["grpo", "ppo"], "configs/real.py presets (their sizes)")
flags.DEFINE_list("policies", ["full", "lora"], "full (fine-tune) and/or lora")
flags.DEFINE_list("chunks", ["0", "4", "1"], "rl.stats_chunk values (0: whole batch)")
flags.DEFINE_list("remat", ["false"], "config.model.remat values (false and/or true)")
flags.DEFINE_integer("prompt_len", 0, "prompt tokens (0: the task's longest prompt)")
flags.DEFINE_string("run", "", "PRESET/POLICY/CHUNK/REMAT: run one update of that cell, print "
                    "peak RSS")
FLAGS = flags.FLAGS

MiB = 2.0 ** 20


def _bytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _stack(name: str, dtype: str, prompt_len: int):
    """The base (cache length cut to prompt + response, as `real_rlhf.load_stack`), its
    weights' shapes and the sentiment task with its prompts built in memory."""
    base = pretrained.load(name, dtype)
    task = SentimentTask.create(base.tokenizer, prompt_len or None, 24)
    cfg = ArchConfig.from_dict({**base.config.to_dict(),
                                "max_len": task.prompt_len + task.response_len})
    base = dataclasses.replace(base, config=cfg)
    ref = jax.tree.map(lambda w: jax.ShapeDtypeStruct(w.shape, jnp.dtype(dtype)), base.weights)
    return base, ref, task


def _cell(preset: str, policy_kind: str, chunk: int, remat: bool, base, ref, task,
          model_name: str):
    """(trainer, state shapes, hp, frozen shapes, frozen arrays builder) of one cell."""
    config = real_configs.get_config(preset)
    config.model.name = model_name
    config.model.remat = remat
    config.rl.stats_chunk = chunk
    spec = real_config.spec_from_config(config)
    method = METHODS.get(spec.method)
    if policy_kind == "lora":
        policy = real_rlhf.policy_model(spec, base)
    elif policy_kind == "full":
        trained = real_rlhf.with_remat(base, remat)
        policy = ValueHead(trained) if method.critic else trained
    else:
        raise ValueError(f"policy {policy_kind!r}: full or lora")
    reward = TrunkReward(base, spec.rm.pooling)
    static = dataclasses.replace(spec.static, policy=policy, reference=base, reward_model=reward)
    trainer = rlhf.Trainer(static)
    hp = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), spec.hparams_values)

    def frozen_of(ref_params):
        head = {"w": jnp.zeros((base.width,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
        return tok.Frozen(ref_params, {"trunk": ref_params, "head": head},
                          jnp.asarray(task.prompts("train")), jnp.asarray(task.prompts("test")[:32]),
                          task, None)

    frozen = jax.eval_shape(frozen_of, ref)
    state = jax.eval_shape(trainer.init, jnp.int32(spec.seed), hp, frozen)
    return trainer, state, hp, frozen, frozen_of, spec


def main(argv) -> None:
    del argv
    if set(FLAGS.remat) - {"false", "true"}:
        raise app.UsageError(f"--remat={','.join(FLAGS.remat)}: each value false or true")
    t0 = time.perf_counter()
    base, ref, task = _stack(FLAGS.model, FLAGS.dtype, FLAGS.prompt_len)
    base_mib = _bytes(ref) / MiB
    v = base.vocab_size
    print(f"{FLAGS.model} {FLAGS.dtype}: V = {v}, base weights {base_mib:.1f} MiB, prompt "
          f"{task.prompt_len} + response {task.response_len} tokens (loaded in "
          f"{time.perf_counter() - t0:.0f} s); jax {jax.__version__}, {jax.devices()[0].platform}")
    print("MiB per compiled update (XLA memory_analysis; args count each argument, the base "
          "several times: module docstring)")
    header = (f"{'preset':6s} {'rows':>4s} {'policy':6s} {'chunk':>5s} {'remat':>5s} {'temp':>8s} "
              f"{'args':>8s} "
              f"{'out':>8s} {'trained':>8s} {'adam':>8s} {'[B,L,V]':>8s} {'compile':>7s}")
    print(header)
    cells = {}
    for preset in FLAGS.presets:
        for policy_kind in FLAGS.policies:
            for chunk, remat in itertools.product(map(int, FLAGS.chunks), FLAGS.remat):
                trainer, state, hp, frozen, frozen_of, spec = _cell(
                    preset, policy_kind, chunk, remat == "true", base, ref, task, FLAGS.model)
                rows = spec.static.batch_size
                t1 = time.perf_counter()
                compiled = jax.jit(trainer.update).lower(state, hp, frozen).compile()
                seconds = time.perf_counter() - t1
                m = compiled.memory_analysis()
                trained = _bytes(real_rlhf.without_base(state.params)) if policy_kind == "lora" \
                    else _bytes(state.params)
                logits = rows * task.response_len * v * 4 / MiB
                print(f"{preset:6s} {rows:4d} {policy_kind:6s} {chunk:5d} {remat:>5s} "
                      f"{m.temp_size_in_bytes / MiB:8.1f} {m.argument_size_in_bytes / MiB:8.1f} "
                      f"{m.output_size_in_bytes / MiB:8.1f} {trained / MiB:8.1f} "
                      f"{_bytes(state.opt_state) / MiB:8.1f} {logits:8.1f} {seconds:6.0f}s",
                      flush=True)
                cells[f"{preset}/{policy_kind}/{chunk}/{remat}"] = (compiled, trainer, hp, frozen_of, spec)
    print(f"(trained: the policy's trained leaves; adam: the whole optimiser state; [B,L,V]: one "
          f"float32 logits array of the rollout's rows; total {time.perf_counter() - t0:.0f} s)")
    if FLAGS.run:
        _run_one(FLAGS.run, cells, base)


def _run_one(name: str, cells, base) -> None:
    """One update of cell ``name`` on the real weights; the process's peak RSS before and after."""
    compiled, trainer, hp, frozen_of, spec = cells[name]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    frozen = frozen_of(jax.tree.map(jnp.asarray, base.init(jax.random.PRNGKey(0))))
    state = jax.jit(trainer.init)(jnp.int32(spec.seed), hp, frozen)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    state, metrics = compiled(state, hp, frozen)
    jax.block_until_ready(state)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ran {name}: {time.perf_counter() - t0:.1f} s; peak RSS {before:.0f} MiB before the "
          f"weights, {loaded:.0f} after the initial state, {after:.0f} after one update; "
          f"proxy {float(metrics['proxy']):.3f}")


if __name__ == "__main__":
    app.run(main)
