"""Compile time of the default presets' training programs.

    python -m benchmarks.compile_times [--presets=ppo:cartpole_clip,trpo:cartpole_trpo,rlhf:dpo]
    python -m benchmarks.compile_times --presets=all

Control presets (configs/ppo.py, configs/trpo.py): what `kltrust.train.loop.train` reports as
``compile_seconds`` (the jitted init called, the chunk of ``updates_per_chunk`` updates lowered and
compiled), measured the same way on the program `loop.train` builds, without running it, and split
into init (eager parameter init + the jitted init), tracing + lowering, and XLA compilation.
With JAX's persistent cache on (``JAX_COMPILATION_CACHE_DIR``) `kltrust.program_cache` is on too,
as in ``loop.train``: a warm run loads chunk and initial state (``program_cached``, no split).
Token presets (configs/rlhf.py, policy stages): what `kltrust.train.pipeline.run_policy` reports as
``compile_seconds`` (init, the chunk of ``updates_per_eval`` updates and the evaluation, with the
preset's seeds vmapped), from a one-chunk run on random reference and reward-model weights (data
sets are generated in a temporary directory first, not timed). ``best_of_n`` compiles no update and
the ``sft`` / ``reward_model`` stages are other programs: they are not listed.

Each preset is timed in this one process, one after the other; nothing is cached between them
(distinct programs), but the first one also pays JAX's one-time start-up.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from absl import app, flags, logging

from benchmarks import bench_util

DEFAULT_PRESETS = ["ppo:cartpole_clip", "ppo:cartpole_kl_adaptive", "trpo:cartpole_trpo",
                   "rlhf:ppo", "rlhf:grpo", "rlhf:dpo"]
_PRESETS = flags.DEFINE_list("presets", DEFAULT_PRESETS,
                             "FAMILY:PRESET entries (families ppo, trpo, rlhf), or 'all'.")
_WARM = flags.DEFINE_bool("warm_start", True, "Compile one throw-away program first so the first "
                          "preset does not pay JAX's one-time start-up.")


def all_presets() -> list[str]:
    from configs import ppo, rlhf, trpo

    skip = {"sft", "sft_shakespeare", "reward_model", "best_of_n"}
    return ([f"ppo:{p}" for p in ppo.PRESETS] + [f"trpo:{p}" for p in trpo.PRESETS]
            + [f"rlhf:{p}" for p in rlhf.PRESETS if p not in skip])


def control_compile(family: str, preset: str) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from configs import ppo, trpo
    from kltrust import program_cache, sharding
    from kltrust import train as programs
    from kltrust.train import control_config

    config = (ppo if family == "ppo" else trpo).get_config(preset)
    spec = control_config.spec_from_config(config)
    program = programs.program(spec.algorithm)
    mesh = sharding.mesh_from_sizes(dict(spec.mesh))
    trainer = program.make_trainer(spec.static, mesh)
    seeds = spec.seeds
    hparams = jax_tree_broadcast(spec.hparams, len(seeds))
    split = {}

    def compile_fn():  # as loop.train compiles, split in three
        init, run_chunk = program.compile_run(trainer)
        start = time.perf_counter()
        state = jax.block_until_ready(init(jnp.asarray(seeds), hparams))
        initialised = time.perf_counter()
        lowered = run_chunk.lower(state, hparams)
        traced = time.perf_counter()
        compiled = lowered.compile()
        end = time.perf_counter()
        split.update(init_s=initialised - start, trace_lower_s=traced - initialised,
                     xla_compile_s=end - traced)
        return state, compiled

    start = time.perf_counter()
    # With JAX's cache on (JAX_COMPILATION_CACHE_DIR), the program cache is too, as in loop.train
    _, _, cached = program_cache.init_and_compile(compile_fn, spec.algorithm, spec.static, mesh,
                                                  seeds, hparams)
    return {"compile_s": time.perf_counter() - start, **split, "program_cached": cached,
            "seeds": len(seeds), "updates_per_chunk": config.updates_per_chunk}


def jax_tree_broadcast(tree: Any, n: int) -> Any:
    import jax
    import numpy as np

    return jax.tree.map(lambda x: np.broadcast_to(x, (n,) + np.shape(x)), tree)


def rlhf_compile(preset: str, root: pathlib.Path) -> dict[str, Any]:
    import jax
    import numpy as np

    from configs import rlhf
    from kltrust.train import pipeline, reward_model
    from kltrust.train import tokens as tok

    config = rlhf.get_config(preset)
    config.rl.num_updates = config.rl.updates_per_eval  # one chunk: compile, then one short run
    spec = pipeline.spec_from_config(config)
    ref_params = tok.Policy(spec.policy).init(jax.random.PRNGKey(1))
    shapes = {"prompt": np.zeros((1, config.task.prompt_len), np.int32),
              "chosen": np.zeros((1, config.task.response_len), np.int32)}
    rm_params = reward_model.init_params(spec.reward_model, shapes, 2)
    result = pipeline.run_policy(spec, root, ref_params, rm_params, write=False)
    return {"compile_s": result.compile_seconds, "seeds": config.num_seeds,
            "updates_per_chunk": config.rl.updates_per_eval}


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    threads = bench_util.apply_threads()
    presets = all_presets() if _PRESETS.value == ["all"] else _PRESETS.value
    root = pathlib.Path(tempfile.mkdtemp(prefix="kltrust_compile_"))
    if _WARM.value:
        import jax
        import jax.numpy as jnp

        jax.jit(lambda x: jnp.tanh(x) @ x).lower(jnp.ones((8, 8))).compile()
    rows = []
    for entry in presets:
        family, _, preset = entry.partition(":")
        if family in ("ppo", "trpo"):
            rows.append({"preset": entry, **control_compile(family, preset)})
        elif family == "rlhf":
            rows.append({"preset": entry, **rlhf_compile(preset, root)})
        else:
            raise app.UsageError(f"--presets: unknown family in {entry!r} (ppo, trpo, rlhf)")
        print(f"{entry}: {rows[-1]['compile_s']:.1f} s", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    bench_util.emit({"bench": "compile_times", "impl": "kltrust", "threads": threads,
                     "presets": rows, "versions": bench_util.versions()})


if __name__ == "__main__":
    app.run(main)
