"""Does KV-cache decoding of SmolLM2-135M get faster if the layers' weights are not sliced out of
the stacked [layers, …] arrays at every token step?

    python -m benchmarks.decode_layout [--repeats=5]

`benchmarks.grpo_profile --profile` found a quarter of the sampling call in copies of each layer's
weights out of the stacked arrays (``lax.scan`` over the layers slices them dynamically at every
token step). This compiles `rollout.sample_tokens` (the token rollouts' sampler: a prefill,
then one categorical draw per token) at the GRPO row's shapes (16 sequences, a 19-token prompt,
24 new tokens, float32, no adapters) three ways and times them, interleaved, median of
``--repeats`` calls after one untimed call:

    stacked scan     the model's own decode: ``lax.scan`` over the stacked layer weights
    static slices    a Python loop over the layers inside the token step, slicing the stacked
                     weights at constant indices (an unrolled layer loop)
    per-layer arrays a Python loop over 30 separate weight arrays, split once outside the program:
                     nothing is sliced inside it (an extra copy of every layer weight in memory)

The share of tokens equal to the stacked scan's is printed (the same key; float32 rounding
between the layouts may flip a rare draw). The printed table goes into docs/results/speed.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kltrust import rollout
from kltrust.models import pretrained
from kltrust.models.pretrained import model as lm

_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per variant (median reported).")

BATCH, PROMPT, NEW = 16, 19, 24  # benchmarks.trl_real's GRPO row


def _decode_layers(cfg, params, layers, tokens, cache_kv, length):
    """One cached decoding step with the layers run by a Python loop over ``layers`` (a list of
    per-layer weight dicts) and ``cache_kv`` (a list of per-layer (keys, values)). It restates
    `model.trunk` around the layers for llama models only (no gemma input scale): SmolLM2 is all
    this probe loads, and the tokens are checked against the model's own decode."""
    positions = length + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    consts = lm.layer_constants(cfg)
    x = params["embed"][tokens]
    new_kv = []
    for i, p in enumerate(layers):
        const = {k: jnp.asarray(v[i]) for k, v in consts.items()}
        x, kv = lm._layer(cfg, x, p, const, positions, cache_kv[i])
        new_kv.append(kv)
    hidden = lm.rms_norm(x, params["final_norm"], cfg.norm_eps)
    return lm.lm_head(cfg, params, hidden), new_kv


def _per_layer(layers: dict, num_layers: int) -> list[dict]:
    """The stacked [layers, …] weights as one dict of arrays per layer."""
    return [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)]


def decoder(model, variant: str):
    """(decode_fn, empty_cache) for `rollout.sample_tokens`, reading the layer weights as
    ``variant`` says. decode_fn takes (params, per-layer weights or None) as its parameters."""
    if variant == "stacked scan":
        return (lambda weights, tokens, cache: model.decode(weights[0], tokens, cache),
                model.empty_cache)
    cfg = model.config

    def decode(weights, tokens, cache):
        (params, split), (kv, length) = weights, cache
        layers = split if variant == "per-layer arrays" else _per_layer(params["layers"],
                                                                       cfg.num_layers)
        logits, kv = _decode_layers(cfg, params, layers, tokens, kv, length)
        return logits, (kv, length + tokens.shape[1])

    def empty_cache(batch):
        cache = model.empty_cache(batch)
        return [(cache.key[i], cache.value[i]) for i in range(cfg.num_layers)], cache.length

    return decode, empty_cache


def make_sampler(model, variant: str):
    """A jitted `rollout.sample_tokens` (the sampler the token rollouts use: prefill, then one
    categorical draw per step): ((params, per-layer weights or None), prompt, key) -> tokens."""
    decode, empty_cache = decoder(model, variant)
    eos, pad = model.tokenizer.eos_id, model.tokenizer.pad_id

    def sample(weights, prompt, key):
        return rollout.sample_tokens(decode, weights, prompt, empty_cache(prompt.shape[0]), key,
                                     max_new_tokens=NEW, eos_id=eos, pad_id=pad)[0]

    return jax.jit(sample)


def main(argv: Sequence[str]) -> None:
    """Compiles the three samplers, checks their tokens agree and prints the timing table."""
    del argv
    model = pretrained.load("smollm2-135m", "float32", max_len=PROMPT + NEW)  # as trl_real's
    params = model.init(jax.random.key(0))
    split = _per_layer(params["layers"], model.config.num_layers)
    prompt = jax.random.randint(jax.random.key(1), (BATCH, PROMPT), 0, model.vocab_size)
    key = jax.random.key(2)
    variants = ("stacked scan", "static slices", "per-layer arrays")
    calls, compile_s, tokens = {}, {}, {}
    for name in variants:
        args = ((params, split if name == "per-layer arrays" else None), prompt, key)
        start = time.perf_counter()
        compiled = make_sampler(model, name).lower(*args).compile()
        compile_s[name] = time.perf_counter() - start
        tokens[name] = np.asarray(compiled(*args))  # the untimed call
        calls[name] = (compiled, args)
    for name in variants[1:]:
        same = np.mean(tokens[name] == tokens[variants[0]])
        print(f"{name}: {100 * same:.1f}% of tokens equal to the stacked scan's")
    times = {name: [] for name in variants}
    for _ in range(_REPEATS.value):
        for name, (compiled, args) in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[variants[0]])
    print("| layer weights in the token step | compile s | call s, median (min–max) "
          "| ÷ stacked scan |")
    print("|---|---|---|---|")
    for name in variants:
        t = times[name]
        print(f"| {name} | {compile_s[name]:.1f} | {statistics.median(t):.2f} "
              f"({min(t):.2f}–{max(t):.2f}) | {statistics.median(t) / base:.2f} |")


if __name__ == "__main__":
    app.run(main)
