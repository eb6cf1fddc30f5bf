"""How much faster than the best chain any tree can be, at a pair's acceptance rates and measured round costs.

    python benchmarks/diagnostics/tree_ceiling.py RESULTS.json --row "tree: DynaSpec 1/16" --temperature 0 \
        --rates 0.88 0.37 0.2 0.1 [--tree-forward-as-chain-step]

The automatic shape's own model (`budget.py`): every candidate's expected accepted drafts from the rates at which a
node's i-th child is accepted once the earlier ones failed (`--rates`: the first child's, then the runner-up's, ...),
and its round's seconds from the round costs a benchmark run measured for `--row` (RESULTS' calibration). Prints
the best chain, the best tree and the fixed 16/7/4 tree with their τ, round time and tokens/s.
`--tree-forward-as-chain-step` prices a tree's node forward as a chain's draft step: the ceiling for trees whose
bookkeeping costs nothing; `--costs` replaces measured costs (e.g. another pair's shapes). No GPU needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dynaspec_hf import TreeConfig  # noqa: E402
from dynaspec_hf.budget import RoundCosts, expected_drafts  # noqa: E402
from dynaspec_hf.tree import SiblingAcceptance  # noqa: E402

EVIDENCE = 1e6  # rounds behind each rate: the rates as given, not pulled toward the prior


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="a benchmark results file (its calibration's round costs)")
    parser.add_argument("--costs", nargs="+", default=[], metavar="FIELD=SECONDS",
                        help="round costs to use instead of the run's (`RoundCosts` fields), e.g. other shapes'")
    parser.add_argument("--row", default="tree: DynaSpec 1/16")
    parser.add_argument("--temperature", default="0.0")
    parser.add_argument("--rates", type=float, nargs="+", required=True,
                        help="acceptance of a node's 1st, 2nd, ... child once the earlier ones failed")
    parser.add_argument("--tree-forward-as-chain-step", action="store_true")
    args = parser.parse_args(argv)
    costs = RoundCosts(**json.loads(args.results.read_text())["calibration"]["round_costs"][args.row][
        str(float(args.temperature))])
    costs = dataclasses.replace(costs, **{field: float(value) for field, value in
                                          (item.split("=") for item in args.costs)})
    if args.tree_forward_as_chain_step:
        costs = dataclasses.replace(costs, tree_fixed=costs.chain_fixed, tree_forward=costs.chain_step)
    rates = SiblingAcceptance(accepted=[rate * EVIDENCE for rate in args.rates], reached=[EVIDENCE] * len(args.rates))
    fixed = TreeConfig(16, 7, 4)
    rows = []
    for shape in TreeConfig().candidates() + [fixed]:
        tau = 1 + expected_drafts(shape, rates)
        rows.append(dict(shape=shape, tau=tau, ms=costs.seconds(shape) * 1e3, speed=tau / costs.seconds(shape)))
    best_chain = max((r for r in rows if r["shape"].is_chain), key=lambda r: r["speed"])
    best_tree = max((r for r in rows if not r["shape"].is_chain), key=lambda r: r["speed"])
    print(f"| {args.row}, T = {args.temperature} | shape | τ | ms a round | tokens/s | / best chain |")
    print("|---|---|---|---|---|---|")
    for label, row in (("best chain", best_chain), ("best tree", best_tree),
                       ("tree 16/7/4", next(r for r in rows if r["shape"] == fixed))):
        shape = row["shape"]
        name = (f"chain of {shape.max_depth}" + (f" + {shape.runner_ups} runner-up" if shape.runner_ups else "")
                if shape.is_chain else f"{shape.num_nodes}/{shape.max_depth}/{shape.width}")
        print(f"| {label} | {name} | {row['tau']:.2f} | {row['ms']:.2f} | {row['speed']:.0f} | "
              f"{row['speed'] / best_chain['speed']:.3f} |")


if __name__ == "__main__":
    main()
