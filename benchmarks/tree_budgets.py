"""Choose the draft tree's budgets by measurement: τ and tokens/s of the own loop on the trained pair, per tree shape.

    python benchmarks/tree_budgets.py --pair PAIR_DIR --data DATA_DIR --out DIR [--shapes 16,8,4 32,8,4 ...]

Every shape (draft nodes, depth, width: `TreeConfig`) drafts with the "DynaSpec 1/16" assistant in the package's own
loop (`dynaspec_hf.generate`), beside the own loop's chain of 6 drafts (the benchmark's, the ratios' base) and chains
of other lengths (`--chains`, so a tree is weighed against the best chain too), at T = 0 and T = 1, on prompts sampled
with another seed than the benchmark's. Writes DIR/tree_budgets.{json,md,png} and prints the shape with the highest
geometric mean of tokens/s over the temperatures, the one to make `TreeConfig`'s default.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_benchmark import (DRAFT_TOKENS, chosen_methods, encoded_prompts, generate, grouped_bars,  # noqa: E402
                           hardware_block, load_models, timed_generate)

from dynaspec_hf import TreeConfig  # noqa: E402

# Every level costs a drafter forward, and a width-4 forward about 1.4 chain steps (results/history/2026-12-01-engine/): shallower and
# narrower trees than the 2026-11-30 sweep tried (16-64 nodes, depth 8-12; 16/8/4 won). On 2026-12-01 16/7/4 and
# 16/6/4 won (results/history/2026-12-01-engine-pair/).
SHAPES = ["12,6,3", "16,6,4", "16,7,4", "16,8,4", "16,8,2", "24,8,4"]


def measure(args, saved) -> list[dict]:
    calibration = json.loads((args.pair / "calibration.json").read_text())
    target, drafter, assistants = load_models(args, args.device)
    base = chosen_methods(calibration, ["DynaSpec 1/16"])[0]
    shapes = {"chain (own loop)": TreeConfig.chain(DRAFT_TOKENS)}
    shapes.update({f"chain of {length}": TreeConfig.chain(length) for length in args.chains if length != DRAFT_TOKENS})
    shapes.update({f"tree {shape}": TreeConfig(*map(int, shape.split(","))) for shape in args.shapes})
    prompts = [p for ps in encoded_prompts(args).values() for p in ps]
    rows = []
    for temperature in args.temperatures:
        for name, tree in tqdm(shapes.items(), desc=f"T={temperature:g}"):
            method = dict(base, method=name, engine="dynaspec-tree", tree=tree)
            generate(method, target, drafter, assistants, prompts[0][None].to(args.device), temperature,
                     args.max_new_tokens)  # warm-up at the timed length
            tokens = calls = 0
            seconds = 0.0
            for number, prompt in enumerate(prompts):
                torch.manual_seed(args.seed + number)
                out, stats, spent = timed_generate(method, target, drafter, assistants, prompt[None].to(args.device),
                                                   temperature, args.max_new_tokens)
                tokens, calls, seconds = tokens + out.numel(), calls + stats.target_passes, seconds + spent
            rows.append(dict(shape=name, num_nodes=tree.num_nodes, max_depth=tree.max_depth, width=tree.width,
                             temperature=temperature, tau=tokens / calls, tokens_per_s=tokens / seconds,
                             prompts=len(prompts), tokens=tokens))
            saved(rows)
            print(f"T={temperature:g} {name}: τ {tokens / calls:.2f}, {tokens / seconds:.1f} tokens/s", flush=True)
    return rows


def save(rows: list[dict], args) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "tree_budgets.json").write_text(json.dumps(dict(hardware=hardware_block(), settings=settings,
                                                                rows=rows), indent=2))
    (args.out / "tree_budgets.md").write_text(table(rows))


def best_shape(rows: list[dict]) -> dict:
    """The tree shape with the highest geometric mean of tokens/s over the measured temperatures."""
    trees = {r["shape"] for r in rows if r["shape"].startswith("tree")}
    score = {s: math.exp(sum(math.log(r["tokens_per_s"]) for r in rows if r["shape"] == s) /
                         sum(r["shape"] == s for r in rows)) for s in trees}
    name = max(score, key=score.get)
    return next(r for r in rows if r["shape"] == name)


def table(rows: list[dict]) -> str:
    lines = ["| T | shape (nodes, depth, width) | τ | τ / chain | tokens/s | tokens/s / chain |", "|---|---|---|---|---|---|"]
    for r in rows:
        chain = next(c for c in rows if c["shape"] == "chain (own loop)" and c["temperature"] == r["temperature"])
        lines.append(f"| {r['temperature']:g} | {r['shape']} | {r['tau']:.2f} | {r['tau'] / chain['tau']:.3f} | "
                     f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / chain['tokens_per_s']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    temperatures = sorted({r["temperature"] for r in rows})
    for ax, key, label in ((axes[0], "tau", "τ (tokens per target pass)"), (axes[1], "tokens_per_s", "tokens/s")):
        grouped_bars(ax, shapes, {f"T = {t:g}": [next((r[key] for r in rows if r["shape"] == s and r["temperature"] == t),
                                                      0) for s in shapes] for t in temperatures})
        ax.set_ylabel(label)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="NODES,DEPTH,WIDTH per tree")
    parser.add_argument("--chains", type=int, nargs="*", default=[4, 8], help="further chain lengths to time")
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seed", type=int, default=1, help="prompt sample (the benchmark's is 0)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = measure(args, lambda rows: save(rows, args))  # saved after every shape: a time limit keeps what ran
    best = best_shape(rows)
    (args.out / "best.txt").write_text(f"{best['num_nodes']} {best['max_depth']} {best['width']}\n")
    print(table(rows))
    print(f"best: {best['num_nodes']} {best['max_depth']} {best['width']}")
    plot(rows, args.out / "tree_budgets.png")


if __name__ == "__main__":
    main()
