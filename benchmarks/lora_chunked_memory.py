"""Compiled memory of chunked sequence statistics and of LoRA training steps (issue 21).

    PYTHONPATH=. python -m benchmarks.lora_chunked_memory [--vocab=32768 --batch=16 --length=64]

Nothing runs: every number is XLA's ``memory_analysis()`` (and ``cost_analysis()`` FLOPs) of a
compiled program, so this takes a minute on a loaded machine and needs no memory of that size.

1. `kltrust.models.chunked.token_stats` (policy + reference, exact per-token KL) on a small
   decoder with a large vocabulary, forward and value_and_grad of a PPO-like loss, for each chunk
   size dividing the batch (chunk = batch is the whole-batch computation).
2. A LoRA step on the same decoder: temp/output bytes and FLOPs of (a) full fine-tuning, (b) the
   whole {"base", "lora"} tree through `lora.optimizer` (base returned as base + 0), (c) the same
   donated, (d) the adapters alone with the base as an argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

from kltrust.models import chunked, lora
from kltrust.models.transformer import TransformerConfig, TransformerLM

flags.DEFINE_integer("vocab", 32768, "vocabulary size V")
flags.DEFINE_integer("batch", 16, "rows B")
flags.DEFINE_integer("length", 64, "tokens per row T (prompt = T/2)")
flags.DEFINE_integer("width", 64, "decoder width")
flags.DEFINE_integer("layers", 2, "decoder layers")
FLAGS = flags.FLAGS

MiB = 2.0 ** 20


def _report(name: str, compiled, flops: bool = True) -> None:
    """One line of XLA's compiled memory analysis. FLOPs are left out for programs with a loop:
    ``cost_analysis`` counts a while loop's body once, not once per trip."""
    m = compiled.memory_analysis()
    line = (f"  {name:36s} temp {m.temp_size_in_bytes / MiB:7.1f} MiB  args "
            f"{m.argument_size_in_bytes / MiB:5.1f}  out {m.output_size_in_bytes / MiB:5.1f}  alias "
            f"{m.alias_size_in_bytes / MiB:5.1f}")
    if flops:
        line += f"  GFLOP {(compiled.cost_analysis() or {}).get('flops', float('nan')) / 1e9:6.2f}"
    print(line)


def main(argv) -> None:
    del argv
    v, b, t = FLAGS.vocab, FLAGS.batch, FLAGS.length
    base = TransformerLM(TransformerConfig(vocab_size=v, num_layers=FLAGS.layers, width=FLAGS.width,
                                           num_heads=4, max_len=t, critic="none"))
    params = jax.eval_shape(base.init, jax.random.PRNGKey(0))
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
    start = t // 2
    mask = jax.ShapeDtypeStruct((b, t - start), jnp.float32)
    print(f"token_stats, policy + reference, V={v} B={b} T={t} (start {start}); one [B, T, V] "
          f"float32 array = {b * t * v * 4 / MiB:.0f} MiB")

    def stats(p, ref, x, m, chunk):
        return chunked.token_stats(base.sequence, p, x, m, start=start, chunk=chunk,
                                   ref_sequence_fn=base.sequence, ref_params=ref)

    def loss(p, ref, x, m, chunk):
        s = stats(p, ref, x, m, chunk)
        return -jnp.sum(s.log_prob) + 0.1 * jnp.sum(s.kl)

    for chunk in [c for c in range(b, 0, -1) if b % c == 0]:
        fwd = jax.jit(stats, static_argnums=4).lower(params, params, tokens, mask, chunk).compile()
        _report(f"chunk {chunk:3d} forward", fwd, flops=chunk == b)
        grad = jax.jit(jax.value_and_grad(loss), static_argnums=4).lower(
            params, params, tokens, mask, chunk).compile()
        _report(f"chunk {chunk:3d} value_and_grad", grad, flops=chunk == b)

    config = lora.LoRAConfig(8, 16.0, lora.SMALL_DECODER_ATTENTION + lora.SMALL_DECODER_MLP)
    model = lora.LoRAModel(base, config)
    wrapped = jax.eval_shape(lambda p: model.wrap(p, jax.random.PRNGKey(1)), params)
    lm_tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)

    def nll(model, p, x):
        logits, _ = model.sequence(p, x[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[:, 1:, None], -1))

    print(f"LoRA rank {config.rank} on attention + MLP kernels, one Adam step on B={b} T={t}")
    adam = optax.adam(1e-4)

    def full(p, state, x):
        u, state = adam.update(jax.grad(lambda q: nll(base, q, x))(p), state, p)
        return optax.apply_updates(p, u), state

    _report("(a) full fine-tune", jax.jit(full).lower(
        params, jax.eval_shape(adam.init, params), lm_tokens).compile())
    tx = lora.optimizer(adam, lora.trainable_mask(wrapped))

    def whole(p, state, x):
        u, state = tx.update(jax.grad(lambda q: nll(model, q, x))(p), state, p)
        return optax.apply_updates(p, u), state

    state = jax.eval_shape(tx.init, wrapped)
    _report("(b) {base, lora} + lora.optimizer", jax.jit(whole).lower(wrapped, state, lm_tokens).compile())
    _report("(c) (b) donated", jax.jit(whole, donate_argnums=(0, 1)).lower(
        wrapped, state, lm_tokens).compile())

    def adapters_only(adapters, state, base_params, x):
        g = jax.grad(lambda a: nll(model, {"base": base_params, "lora": a}, x))(adapters)
        u, state = adam.update(g, state, adapters)
        return optax.apply_updates(adapters, u), state

    _report("(d) adapters only, base an argument", jax.jit(adapters_only).lower(
        wrapped["lora"], jax.eval_shape(adam.init, wrapped["lora"]), params, lm_tokens).compile())


if __name__ == "__main__":
    app.run(main)
