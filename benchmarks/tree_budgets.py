"""Choose the draft tree's budgets by measurement: τ and tokens/s of the own loop on the trained pair, per tree shape.

    python benchmarks/tree_budgets.py --pair PAIR_DIR --data DATA_DIR --out DIR [--shapes 16,8,4 32,8,4 ...]

Every shape (draft nodes, depth, width: `TreeConfig`) drafts with the "DynaSpec 1/16" assistant in the package's own
loop (`dynaspec_hf.generate`), beside the own loop's chain of 6 drafts (the benchmark's, the ratios' base) and chains
of other lengths (`--chains`, so a tree is weighed against the best chain too), at T = 0 and T = 1, on prompts sampled
with another seed than the benchmark's. `auto` among the shapes times the automatic shape (`TreeConfig()`). Writes
DIR/tree_budgets.{json,md,png} (after every shape: run again, it goes on where a time limit stopped it) and prints
the tree and the chain with the highest geometric mean of tokens/s over the temperatures.
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
from dynaspec_hf.report import pyplot  # noqa: E402

# every level costs a drafter forward: shapes around the depth a chain of 6-8 reaches (the history of earlier sweeps
# is in results/history/2026-11-30-trees/ and 2026-12-01-engine-pair/)
SHAPES = ["12,6,3", "16,6,4", "16,7,4", "16,8,4", "16,8,2", "24,8,4"]


def measure(args, saved, rows: list[dict]) -> list[dict]:
    """Times every shape at every temperature after `rows` (those of an earlier, stopped call: skipped)."""
    calibration = json.loads((args.pair / "calibration.json").read_text())
    target, drafters, assistants = load_models(args, args.device)  # none stops at EOS
    base = chosen_methods(calibration, ["DynaSpec 1/16"])[0]
    shapes = {"chain (own loop)": TreeConfig.chain(DRAFT_TOKENS)}
    shapes.update({f"chain of {length}": TreeConfig.chain(length) for length in args.chains if length != DRAFT_TOKENS})
    shapes.update({f"tree {shape}": parse_shape(shape) for shape in args.shapes})
    prompts = encoded_prompts(args)
    first = next(iter(prompts.values()))[0][None].to(args.device)  # each shape's warm-up
    done = {(r["shape"], r["temperature"]) for r in rows}
    for temperature in args.temperatures:
        for name, tree in tqdm(shapes.items(), desc=f"T={temperature:g}"):
            if (name, temperature) in done:
                continue
            method = dict(base, method=name, engine="dynaspec-tree", tree=tree)
            generate(method, target, drafters, assistants, first, temperature, args.max_new_tokens)
            totals = {}  # category -> [tokens, target passes, seconds, draft nodes, longest paths]
            for category, texts in prompts.items():
                total = totals.setdefault(category, [0, 0, 0.0, 0, 0])
                for number, prompt in enumerate(texts):
                    torch.manual_seed(args.seed + number)
                    out, stats, spent = timed_generate(method, target, drafters, assistants,
                                                       prompt[None].to(args.device), temperature, args.max_new_tokens)
                    for i, value in enumerate((out.numel(), stats.target_passes, spent, stats.drafted_tokens,
                                               sum(stats.depths))):
                        total[i] += value
            tokens, calls, seconds, nodes, depths = (sum(t[i] for t in totals.values()) for i in range(5))
            rows.append(dict(shape=name, num_nodes=tree.num_nodes, max_depth=tree.max_depth, width=tree.width,
                             temperature=temperature, tau=tokens / calls, tokens_per_s=tokens / seconds,
                             nodes_per_round=nodes / calls, depth_per_round=depths / calls,
                             per_category={c: t[0] / t[2] for c, t in totals.items()},
                             prompts=sum(map(len, prompts.values())), tokens=tokens))
            saved(rows)
            print(f"T={temperature:g} {name}: τ {tokens / calls:.2f}, {tokens / seconds:.1f} tokens/s, "
                  f"{nodes / calls:.1f} nodes and depth {depths / calls:.1f} a round", flush=True)
    return rows


def parse_shape(shape: str) -> TreeConfig:
    """`auto`: the automatic shape (`TreeConfig()`); else NODES,DEPTH,WIDTH."""
    return TreeConfig() if shape == "auto" else TreeConfig(*map(int, shape.split(",")))


def save(rows: list[dict], args) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "tree_budgets.json").write_text(json.dumps(dict(hardware=hardware_block(), settings=settings,
                                                                rows=rows), indent=2))
    (args.out / "tree_budgets.md").write_text(table(rows))


def best_shape(rows: list[dict], prefix: str = "tree") -> dict:
    """The shape named `prefix`... with the highest geometric mean of tokens/s over the measured temperatures."""
    trees = {r["shape"] for r in rows if r["shape"].startswith(prefix)}
    score = {s: math.exp(sum(math.log(r["tokens_per_s"]) for r in rows if r["shape"] == s) /
                         sum(r["shape"] == s for r in rows)) for s in trees}
    name = max(score, key=score.get)
    return next(r for r in rows if r["shape"] == name)


def table(rows: list[dict]) -> str:
    """τ and tokens/s per shape, against the chain of 6 and against the best chain at the same temperature (tokens/s
    over all prompts; "per category": the geometric mean and the least of the shape's ratios to the best chain)."""
    lines = ["| T | shape (nodes, depth, width) | nodes · depth a round | τ | τ / chain | tokens/s | tokens/s / chain "
             "| / best chain | per category: geometric mean, least |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = [c for c in rows if c["temperature"] == r["temperature"]]
        chain = next((c for c in same if c["shape"] == "chain (own loop)"), None)
        chains = [c for c in same if c["shape"].startswith("chain")]
        if chain is None:
            continue
        best = max(chains, key=lambda c: c["tokens_per_s"])
        ratios = [r["per_category"][c] / best["per_category"][c] for c in r.get("per_category", {})]
        spread = f"{geometric_mean(ratios):.3f}, {min(ratios):.3f}" if ratios else ""
        lines.append(f"| {r['temperature']:g} | {r['shape']} | {r.get('nodes_per_round', 0):.1f} · "
                     f"{r.get('depth_per_round', 0):.1f} | {r['tau']:.2f} | {r['tau'] / chain['tau']:.3f} | "
                     f"{r['tokens_per_s']:.1f} | {r['tokens_per_s'] / chain['tokens_per_s']:.3f} | "
                     f"{r['tokens_per_s'] / best['tokens_per_s']:.3f} ({best['shape']}) | {spread} |")
    return "\n".join(lines) + "\n"


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        print(f"{path.name} not written: matplotlib is not installed (pip install 'dynaspec-hf[plot]')")
        return
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
    parser.add_argument("--shapes", nargs="+", default=SHAPES,
                        help="NODES,DEPTH,WIDTH per tree, or auto (the automatic shape, TreeConfig())")
    parser.add_argument("--chains", type=int, nargs="*", default=[4, 8], help="further chain lengths to time")
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--seed", type=int, default=1, help="prompt sample (the benchmark's is 0)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "tree_budgets.json"  # a call stopped by a time limit kept what ran: go on from there
    rows = json.loads(saved.read_text())["rows"] if saved.exists() else []
    rows = measure(args, lambda rows: save(rows, args), rows)
    best = best_shape(rows)
    (args.out / "best.txt").write_text(f"{best['shape']}\n")
    print(table(rows))
    print(f"best tree: {best['shape']}; best chain: {best_shape(rows, 'chain')['shape']}")
    plot(rows, args.out / "tree_budgets.png")


if __name__ == "__main__":
    main()
