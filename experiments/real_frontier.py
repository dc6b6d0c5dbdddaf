"""The DPO paper's Fig. 2 analogue on a real model: gold (VADER) against the exact sequence KL.

    python -m experiments.real_frontier --workdir=runs/real [--model=smollm2-135m] [--gpu]
        [--seed=0] [--arms=grpo,ppo,...]

``--seed`` seeds everything of the root: the reference pairs, the proxy and every arm, so a
second seed is a second root (a replicate of the whole pipeline, not only of the policy stage).

runs every arm below under one root (one set of reference pairs and one proxy, shared), each
finished arm reused, then writes ``frontier.md`` (the table recorded in docs/real_models.md) and
``frontier.png`` there. An arm is a preset of configs/real.py with overrides:

    best_of_n       n = 1 (the reference), 4, 16
    grpo, rloo      β = 0.05
    ppo             β = 0.05 and 0.2; ppo_nokl (no KL: the overoptimisation arm)
    dpo             β = 0.1 and 0.5 (offline, on the reference pairs)

Per arm: final gold, proxy and exact KL (mean over the held-out prompts), perplexity of held-out
English (`kltrust.models.pretrained.text`) against the reference's (the alignment tax), distinct-1/2
of the responses, seconds per update, and three decoded samples.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from absl import flags

from configs import real as real_configs
from experiments import cli
from kltrust.train import real_config, real_rlhf

_WORKDIR = flags.DEFINE_string("workdir", None, "Root of the arms' stages.", required=True)
_MODEL = flags.DEFINE_string("model", "smollm2-135m", "model.name of every arm.")
_GPU = flags.DEFINE_bool("gpu", False, "The *_gpu presets (sizes for an accelerator).")
_SEED = flags.DEFINE_integer("seed", 0, "seed of every arm (pairs, proxy and policy).")
_ARMS = flags.DEFINE_list("arms", [], "Run only these arms (names below); default: all.")

ARMS = (  # (name, preset, rl.hparams overrides)
    ("best_of_n", "best_of_n", {}),
    ("grpo", "grpo", {}),
    ("rloo", "rloo", {}),
    ("ppo", "ppo", {}),
    ("ppo_b0.2", "ppo", {"beta": 0.2}),
    ("ppo_nokl", "ppo_nokl", {}),
    ("dpo", "dpo", {}),
    ("dpo_b0.5", "dpo", {"beta": 0.5}),
)


def arm_config(name: str, preset: str, hparams: dict, model: str, gpu: bool, seed: int = 0):
    config = real_configs.get_config(preset + ("_gpu" if gpu else ""))
    config.name = name
    config.seed = seed
    config.model.name = model
    config.rl.hparams.update(hparams)
    return config


def table(root: pathlib.Path, names: Sequence[str]) -> str:
    """The markdown table of the finished arms' results.json."""
    lines = ["| arm | gold | proxy | KL (nats/seq) | perplexity (ref {ref:.2f}) | distinct-1 | "
             "distinct-2 | s / update |", "|---|---|---|---|---|---|---|---|"]
    ref = None
    for name in names:
        path = root / name / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        ref = res["reference_perplexity"]
        per_update = ""
        if res.get("tokens_sampled") is not None and "run_seconds" in res and name != "best_of_n":
            cfg = json.loads((root / name / "config.json").read_text())
            per_update = f"{res['run_seconds'] / cfg['rl']['num_updates']:.1f}"
        for row in res["final"]:
            label = name if "n" not in row else f"best-of-{row['n']}"
            ppl = row.get("perplexity", ref if "n" in row else float("nan"))
            lines.append(f"| {label} (seed {row['seed']}) | {row['gold']:.3f} | {row['proxy']:.3f} | "
                         f"{'≤ ' if 'n' in row else ''}{row['kl']:.2f} | {ppl:.2f} | {row['distinct_1']:.3f} | "
                         f"{row['distinct_2']:.3f} | {per_update} |")
    lines[0] = lines[0].format(ref=ref or float("nan"))
    return "\n".join(lines)


def samples(root: pathlib.Path, names: Sequence[str]) -> str:
    out = []
    for name in names:
        path = root / name / "results.json"
        if path.exists():
            for row in json.loads(path.read_text())["final"]:
                label = name if "n" not in row else f"best-of-{row['n']}"
                out.append(f"**{label}**\n" + "\n".join(f"- {s!r}" for s in row["samples"]))
    return "\n\n".join(out)


def plot(root: pathlib.Path, names: Sequence[str]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name in names:
        path = root / name / "eval.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        rows = [r for r in rows if r.get("kl") is not None]
        bound = "n" in rows[0]  # best-of-n records the upper bound log n − (n−1)/n as its KL
        ax.plot([r["kl"] for r in rows], [r["gold"] for r in rows], "s--" if bound else "o-",
                label=f"{name} (KL: upper bound)" if bound else name, alpha=0.8)
    ax.set_xlabel("KL(π ‖ π_ref), nats per sequence (exact; best-of-n: upper bound)")
    ax.set_ylabel("gold reward (VADER compound)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "frontier.png", dpi=120)
    plt.close(fig)


def main(argv: Sequence[str]) -> None:
    del argv
    root = pathlib.Path(_WORKDIR.value)
    known = [n for n, _, _ in ARMS]
    for name in _ARMS.value:
        if name not in known:
            cli.fail(f"--arms: {name!r} is not an arm; allowed: {', '.join(known)}")
    arms = [a for a in ARMS if not _ARMS.value or a[0] in _ARMS.value]
    # Every arm's config is checked before the first one runs (a ConfigError: exit status 2).
    specs = [real_config.spec_from_config(arm_config(n, p, h, _MODEL.value, _GPU.value,
                                                     _SEED.value)) for n, p, h in arms]
    for spec in specs:
        if not (root / spec.name / "results.json").exists():
            real_rlhf.run(spec, root)  # an interrupted arm resumes from its checkpoint
        print(f"{spec.name}: done", flush=True)
    names = [s.name for s in specs]
    text = table(root, names) + "\n\n" + samples(root, names) + "\n"
    (root / "frontier.md").write_text(text)
    plot(root, names)
    print(text)


if __name__ == "__main__":
    cli.run(main)
