"""Load time, throughput and a sanity sample of a pretrained model:

    python -m kltrust.models.pretrained.bench --name=smollm2-135m [--cold] [--dtype=float32]

Prints: cold load (``--cold``: into a fresh temporary cache, so the GGUF is parsed and
dequantised) and warm load seconds; full-forward tokens/s at batch × length (default 8 × 64);
cached-decoding new tokens/s (batch 8, a 8-token prompt, then ``--new`` greedy tokens in one
`lax.scan`); the greedy continuation of a prompt; perplexity of a few sentences vs their
shuffled words. Times are the median of ``--repeats`` runs after one compile-and-warm-up run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from kltrust.models import pretrained
from kltrust.models.pretrained.text import HELD_OUT_ENGLISH, perplexity

SENTENCES = list(HELD_OUT_ENGLISH[:4])  # the figures in docs/pretrained.md are on these four


def _median_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def greedy(model, params, prompt: str, new: int) -> str:
    """The greedy continuation (``new`` tokens) of ``prompt``, decoded with the model's cache."""
    tok = model.tokenizer
    ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prompt)
    decode = jax.jit(model.decode)
    logits, cache = decode(params, jnp.asarray([ids]), model.empty_cache(1))
    out = []
    for _ in range(new):
        out.append(int(jnp.argmax(logits[0, -1])))
        logits, cache = decode(params, jnp.asarray([[out[-1]]]), cache)
    return tok.decode(out)


def main() -> None:
    """The command line above: parses the flags, times the model and prints the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", default="smollm2-135m", choices=sorted(pretrained.MODELS))
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--cold", action="store_true", help="also time a load into an empty cache")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--new", type=int, default=56)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    max_len = max(args.length, 8 + args.new)

    if args.cold:
        with tempfile.TemporaryDirectory() as empty:
            start = time.perf_counter()
            pretrained.load(args.name, args.dtype, cache_dir=empty, max_len=max_len)
            print(f"cold load: {time.perf_counter() - start:.1f} s {pretrained.load.last_timings}")
    start = time.perf_counter()
    model = pretrained.load(args.name, args.dtype, max_len=max_len)
    params = model.init(jax.random.PRNGKey(0))
    print(f"warm load (cache {pretrained.default_cache_dir()}): "
          f"{time.perf_counter() - start:.1f} s {pretrained.load.last_timings}")

    tokens = jax.random.randint(jax.random.PRNGKey(1), (args.batch, args.length), 3,
                                model.vocab_size)
    forward = jax.jit(model.sequence)
    t = _median_time(lambda: forward(params, tokens)[0], args.repeats)
    print(f"forward {args.batch}x{args.length}: {t:.3f} s = {args.batch * args.length / t:.0f} "
          "tokens/s")

    @jax.jit
    def generate(params, prompt):
        logits, cache = model.decode(params, prompt, model.empty_cache(prompt.shape[0]))

        def step(carry, _):
            last, cache = carry
            token = jnp.argmax(last, -1).astype(jnp.int32)
            logits, cache = model.decode(params, token[:, None], cache)
            return (logits[:, -1], cache), token

        _, out = jax.lax.scan(step, (logits[:, -1], cache), None, length=args.new)
        return out

    t = _median_time(lambda: generate(params, tokens[:, :8]), args.repeats)
    print(f"decode {args.batch} rows x {args.new} new tokens (8-token prompt): {t:.3f} s = "
          f"{args.batch * args.new / t:.0f} new tokens/s")
    print("greedy 'The capital of France is' ->", repr(greedy(model, params,
                                                               "The capital of France is", 12)))
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(s.split())) for s in SENTENCES]
    a, b = perplexity(model, params, SENTENCES), perplexity(model, params, shuffled)
    print(f"perplexity: sentences {a:.1f}, shuffled words {b:.1f}, factor {b / a:.1f}")


if __name__ == "__main__":
    main()
