"""One DPO training-step benchmark row: kltrust (JAX) vs a plain PyTorch DPO step, equal decoders.

    python -m benchmarks.dpo_peers --impl=kltrust|torch [--layers=2 --width=64 --heads=4
        --vocab=23 --prompt_len=4 --response_len=12 --pairs=64 --repeats=20 --json_out=row.json]

A step: draw ``pairs`` (chosen, rejected) pairs from a data set of ``dataset_pairs`` random pairs,
log-probabilities of both responses under the frozen reference (no gradient) and under the policy,
the DPO loss (sigmoid, β = 0.1), backward, global-norm clipping at 1 and Adam (lr 1e-4). Four
teacher-forced forwards of ``pairs`` sequences each (policy and reference × chosen and rejected) of
``prompt_len + response_len − 1`` positions, one backward.

kltrust: `kltrust.train.rlhf.Trainer` of the ``dpo`` preset (configs/rlhf.py) with the model and
task sizes overridden, ``Trainer.run_chunk`` (``--chunk`` updates in one `lax.scan`, as the
pipeline runs them) jitted with the state, hyperparameters and frozen inputs as arguments; time per
step = chunk time / chunk. The FLOPs of one update are read from XLA (``cost_analysis`` of the
lowered ``Trainer.update``).

torch: the same decoder written as ``nn.Module``s (`TorchDecoder`: learned token and position
embeddings, pre-LN blocks of causal multi-head attention through
``F.scaled_dot_product_attention`` and a tanh-GELU MLP of 4 × width, final LayerNorm, LM head; biases
and LayerNorm ε = 1e-6 as Flax), float32, eager mode (``--torch_compile`` for ``torch.compile``).
The parameter counts are asserted equal (`kltrust_param_count` vs the module's).

Tokens per second = pairs × 2 × (prompt_len + response_len) / step time. Median of ``repeats``
timed steps after ``warmup`` steps (compile excluded; reported apart).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks import bench_util

_IMPL = flags.DEFINE_enum("impl", "kltrust", ["kltrust", "torch"], "Implementation.")
_LAYERS = flags.DEFINE_integer("layers", 2, "Decoder layers (dpo preset: 2).")
_WIDTH = flags.DEFINE_integer("width", 64, "Model width (dpo preset: 64).")
_HEADS = flags.DEFINE_integer("heads", 4, "Attention heads (dpo preset: 4).")
_VOCAB = flags.DEFINE_integer("vocab", 23, "Vocabulary size (dpo preset: 20 words + 3 = 23).")
_PROMPT = flags.DEFINE_integer("prompt_len", 4, "Prompt tokens (dpo preset: 4).")
_RESPONSE = flags.DEFINE_integer("response_len", 12, "Response tokens (dpo preset: 12).")
_PAIRS = flags.DEFINE_integer("pairs", 64, "Preference pairs per step (dpo preset: 64).")
_DATASET = flags.DEFINE_integer("dataset_pairs", 4096, "Pairs in the data set steps draw from.")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls (kltrust: chunks; torch: steps).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls first.")
_CHUNK = flags.DEFINE_integer("chunk", 10, "kltrust: updates per compiled call (the preset's "
                              "updates_per_eval is 10).")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "torch: wrap the model in torch.compile.")

BETA, LEARNING_RATE, MAX_GRAD_NORM = 0.1, 1e-4, 1.0  # the dpo preset's


def kltrust_param_count(vocab: int, width: int, layers: int, max_len: int) -> int:
    """Parameters of `kltrust.models.transformer.TokenActorCritic` with critic "none"."""
    block = (2 * width) * 2 + (width * 3 * width + 3 * width) + (width * width + width) \
        + (width * 4 * width + 4 * width) + (4 * width * width + width)
    return vocab * width + max_len * width + layers * block + 2 * width + width * vocab + vocab


def analytic_flops(params_matmul: int, layers: int, width: int, positions: int, sequences: int,
                   vocab: int) -> float:
    """FLOPs of one step: 4 forwards (policy, reference × chosen, rejected) and the policy's
    backward (≈ 2 forwards) of ``sequences`` sequences per forward of ``positions`` positions.

    Per position, a forward costs 2 × (matmul parameters) plus attention's QKᵀ and AV,
    2 × 2 × positions × width per layer (computed in full; the causal mask does not skip work).
    """
    del vocab
    per_position = 2 * params_matmul + layers * 4 * positions * width
    forwards = 2 + 2 + 2 * 2  # policy and reference forwards (chosen, rejected); backward ≈ 2 fwd
    return float(forwards * sequences * positions * per_position)


def matmul_params(vocab: int, width: int, layers: int) -> int:
    """Weights that enter matrix products (no embeddings, LayerNorms or biases)."""
    return layers * (3 * width * width + width * width + 8 * width * width) + width * vocab


# ---------------------------------------------------------------- kltrust


def run_kltrust(row: dict[str, Any], profile: Callable | None = None) -> None:
    """Times kltrust's DPO step into ``row``; ``profile(call)``, if given, is then run on the
    timed call (one chunk) and its result stored as ``row["profile"]``."""
    import jax
    import jax.numpy as jnp

    from configs import rlhf as rlhf_configs
    from kltrust.train import pipeline, rlhf, token_config
    from kltrust.train import tokens as tok

    config = rlhf_configs.get_config("dpo")
    config.model.update(num_layers=_LAYERS.value, width=_WIDTH.value, num_heads=_HEADS.value)
    config.task.update(num_words=_VOCAB.value - 3, prompt_len=_PROMPT.value,
                       response_len=_RESPONSE.value)
    config.rl.update(batch_prompts=_PAIRS.value, updates_per_eval=_CHUNK.value)
    assert (config.rl.hparams.beta, config.rl.hparams.learning_rate, config.rl.max_grad_norm) == (
        BETA, LEARNING_RATE, MAX_GRAD_NORM), "the dpo preset changed: update the torch side"
    assert (config.rl.preference_loss == "sigmoid"
            and config.rl.hparams.preference.sigmoid.label_smoothing == 0.0)
    spec = token_config.language_spec(config)
    static = pipeline.static_from_config(config)
    trainer = rlhf.Trainer(static)
    policy = trainer.policy
    ref_params = policy.init(jax.random.PRNGKey(0))
    count = sum(x.size for x in jax.tree.leaves(ref_params))
    max_len = spec.prompt_len + spec.response_len
    assert count == kltrust_param_count(_VOCAB.value, _WIDTH.value, _LAYERS.value, max_len), count

    rng = np.random.default_rng(0)
    n, p, r = _DATASET.value, spec.prompt_len, spec.response_len
    pairs = {"prompt": rng.integers(3, _VOCAB.value, (n, p)),
             "chosen": rng.integers(3, _VOCAB.value, (n, r)),
             "rejected": rng.integers(3, _VOCAB.value, (n, r))}
    pairs = {k: jnp.asarray(v, jnp.int32) for k, v in pairs.items()}
    pairs["chosen_mask"] = pairs["rejected_mask"] = jnp.ones((n, r), jnp.float32)
    # The offline DPO update reads only the reference and the pairs: no reward model, and no
    # task (its gold reward is for evaluations, which are not timed; a large vocabulary has no
    # synthetic language anyway).
    frozen = tok.Frozen(ref_params, None, pairs["prompt"][:8], pairs["prompt"][:8], None, pairs)
    hp = jax.tree.map(lambda x: x[0], pipeline.hparams_from_config(config, 1))

    start = time.perf_counter()
    state = jax.jit(trainer.init)(0, hp, frozen)
    chunk = jax.jit(trainer.run_chunk).lower(state, hp, frozen).compile()
    compile_s = time.perf_counter() - start
    # XLA's count for one update, from the lowered (unoptimised) program: compiling a second
    # program only for its count would add its compiler memory to this row's peak RSS.
    cost = jax.jit(trainer.update).lower(state, hp, frozen).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    holder = {"state": state}

    def call():
        holder["state"], metrics = chunk(holder["state"], hp, frozen)
        jax.block_until_ready((holder["state"], metrics))

    times = bench_util.call_times(call, _REPEATS.value, _WARMUP.value)
    if profile is not None:
        row["profile"] = profile(call)
    row.update(params=count, compile_s=compile_s, step_times_s=[t / _CHUNK.value for t in times],
               xla_flops=float(cost.get("flops", float("nan"))),
               xla_bytes_accessed=float(cost.get("bytes accessed", float("nan"))),
               chunk=_CHUNK.value, device=jax.devices()[0].device_kind,
               xla_flags=os.environ.get("XLA_FLAGS", ""))


# ---------------------------------------------------------------- torch


def torch_modules():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, width: int, heads: int):
            super().__init__()
            self.heads = heads
            self.ln_attn = nn.LayerNorm(width, eps=1e-6)
            self.qkv = nn.Linear(width, 3 * width)
            self.attn_out = nn.Linear(width, width)
            self.ln_mlp = nn.LayerNorm(width, eps=1e-6)
            self.mlp_in = nn.Linear(width, 4 * width)
            self.mlp_out = nn.Linear(4 * width, width)

        def forward(self, x):
            b, t, w = x.shape
            q, k, v = self.qkv(self.ln_attn(x)).view(b, t, 3, self.heads, w // self.heads).unbind(2)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                 v.transpose(1, 2), is_causal=True)
            x = x + self.attn_out(out.transpose(1, 2).reshape(b, t, w))
            return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))

    class TorchDecoder(nn.Module):
        """kltrust's TokenActorCritic(critic="none"), layer for layer."""

        def __init__(self, vocab: int, width: int, layers: int, heads: int, max_len: int):
            super().__init__()
            self.token_embed = nn.Embedding(vocab, width)
            self.position_embed = nn.Embedding(max_len, width)
            self.blocks = nn.ModuleList([Block(width, heads) for _ in range(layers)])
            self.ln_final = nn.LayerNorm(width, eps=1e-6)
            self.lm_head = nn.Linear(width, vocab)

        def forward(self, tokens):
            positions = torch.arange(tokens.shape[1], device=tokens.device)
            x = self.token_embed(tokens) + self.position_embed(positions)[None]
            for block in self.blocks:
                x = block(x)
            return self.lm_head(self.ln_final(x))

    return TorchDecoder


def run_torch(row: dict[str, Any], profile: Callable | None = None) -> None:
    """Times the PyTorch DPO step into ``row``; ``profile(step)`` as in `run_kltrust`."""
    import copy

    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    p, r = _PROMPT.value, _RESPONSE.value
    max_len = p + r
    policy = torch_modules()(_VOCAB.value, _WIDTH.value, _LAYERS.value, _HEADS.value, max_len)
    reference = copy.deepcopy(policy).requires_grad_(False).eval()
    count = sum(x.numel() for x in policy.parameters())
    expected = kltrust_param_count(_VOCAB.value, _WIDTH.value, _LAYERS.value, max_len)
    assert count == expected, (count, expected)
    optimizer = torch.optim.Adam(policy.parameters(), lr=LEARNING_RATE)  # eps 1e-8 as optax
    n = _DATASET.value
    g = torch.Generator().manual_seed(0)
    data = {"prompt": torch.randint(3, _VOCAB.value, (n, p), generator=g),
            "chosen": torch.randint(3, _VOCAB.value, (n, r), generator=g),
            "rejected": torch.randint(3, _VOCAB.value, (n, r), generator=g)}
    data["chosen_mask"] = data["rejected_mask"] = torch.ones(n, r)
    policy_fn, reference_fn = policy, reference
    start = time.perf_counter()
    if _TORCH_COMPILE.value:
        policy_fn, reference_fn = torch.compile(policy), torch.compile(reference)

    def seq_logp(model, prompt, response, mask):
        tokens = torch.cat([prompt, response], dim=1)[:, :-1]
        logits = model(tokens)[:, p - 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, response[..., None])[..., 0]
        return (logp * mask).sum(-1)

    def step():
        idx = torch.randint(0, n, (_PAIRS.value,))
        mb = {k: v[idx] for k, v in data.items()}
        with torch.no_grad():
            ref_c = seq_logp(reference_fn, mb["prompt"], mb["chosen"], mb["chosen_mask"])
            ref_r = seq_logp(reference_fn, mb["prompt"], mb["rejected"], mb["rejected_mask"])
        pol_c = seq_logp(policy_fn, mb["prompt"], mb["chosen"], mb["chosen_mask"])
        pol_r = seq_logp(policy_fn, mb["prompt"], mb["rejected"], mb["rejected_mask"])
        h = (pol_c - ref_c) - (pol_r - ref_r)
        loss = -F.logsigmoid(BETA * h).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        return loss.item()  # a host sync, as kltrust's block_until_ready

    step()  # the first step (and torch.compile's compilation) counted as "compile"
    compile_s = time.perf_counter() - start
    times = bench_util.call_times(step, _REPEATS.value, max(_WARMUP.value - 1, 0))
    if profile is not None:
        row["profile"] = profile(step)
    row.update(params=count, compile_s=compile_s, step_times_s=times,
               torch_compile=_TORCH_COMPILE.value, torch_threads=torch.get_num_threads())


def main(argv: Sequence[str]) -> None:
    del argv
    torch = None
    if _IMPL.value == "torch":
        import torch
    threads = bench_util.apply_threads(torch)
    seq = _PROMPT.value + _RESPONSE.value
    row: dict[str, Any] = {
        "bench": "dpo_step", "impl": _IMPL.value, "threads": threads, "layers": _LAYERS.value,
        "width": _WIDTH.value, "heads": _HEADS.value, "vocab": _VOCAB.value, "seq_len": seq,
        "pairs": _PAIRS.value}
    (run_kltrust if _IMPL.value == "kltrust" else run_torch)(row)
    step_s = float(np.median(row["step_times_s"]))
    positions = seq - 1
    analytic = analytic_flops(matmul_params(_VOCAB.value, _WIDTH.value, _LAYERS.value),
                              _LAYERS.value, _WIDTH.value, positions, _PAIRS.value, _VOCAB.value)
    row.update(step_s=step_s, tokens_per_s=_PAIRS.value * 2 * seq / step_s, analytic_flops=analytic,
               achieved_flops_per_s=analytic / step_s, versions=bench_util.versions())
    bench_util.emit(row)


if __name__ == "__main__":
    app.run(main)
