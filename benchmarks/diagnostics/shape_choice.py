"""How well the automatic shape chooses when the text changes: modeled tokens/s against fixed chains, on the CPU.

    python benchmarks/diagnostics/shape_choice.py [--temperature 1] [--prompts 16]

One assistant drafts a run of prompts with tiny random models (the test suite's `tiny_pair`): its drafter's weights
alternate before each prompt between a close and a far noisy copy of the target, as a benchmark's categories
alternate texts the drafter gets right and wrong. Each generation (the automatic `TreeConfig()` and fixed chains)
is priced by the round costs an H100 run measured for DynaSpec 1/16 in bf16 (conftest's `BF16_H100`; `--costs`
replaces fields): tokens per modeled millisecond is the generation's tokens over the sum of its rounds' predicted
seconds (`RoundCosts.seconds` of each round's shape). It scores the choice of shapes alone, not the engines'
speed. Greedy output is checked against the target's. No GPU needed; about a minute a temperature on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import dynaspec_hf  # noqa: E402
from conftest import BF16_H100, close_and_far_drafters, load_weights, random_cases  # noqa: E402
from dynaspec_hf import TreeConfig  # noqa: E402

SHAPES = {"automatic": TreeConfig(), **{f"chain of {n}": TreeConfig.chain(n) for n in (3, 4, 6, 7)}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--costs", nargs="+", default=[], metavar="FIELD=SECONDS")
    args = parser.parse_args(argv)
    costs = dataclasses.replace(BF16_H100, **{k: float(v) for k, v in (item.split("=") for item in args.costs)})
    target, assistant, weights = close_and_far_drafters()
    assistant.drafting.round_costs = costs
    options = dict(do_sample=True, temperature=args.temperature) if args.temperature else {}
    totals = {}
    for number, (ids, _) in enumerate(random_cases(args.prompts, seed=11)):
        text = ("close", "far")[number % 2]
        load_weights(assistant.drafter, weights[text])
        for name, shape in SHAPES.items():
            torch.manual_seed(number)
            out, stats = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=args.max_new_tokens, tree=shape,
                                              return_stats=True, **options)
            if not args.temperature:
                assert torch.equal(out, target.generate(ids, do_sample=False, max_new_tokens=args.max_new_tokens))
            total = totals.setdefault((text, name), [0, 0.0, 0])
            total[0] += stats.new_tokens
            total[1] += sum(costs.seconds(drafted) for drafted in stats.shapes)
            total[2] += stats.target_passes
    print(f"T = {args.temperature:g}: tokens per modeled ms (τ)")
    print("| text | " + " | ".join(SHAPES) + " | automatic / best chain |")
    print("|---" * (len(SHAPES) + 2) + "|")
    for text in ("close", "far"):
        rate = {name: totals[text, name][0] / totals[text, name][1] / 1e3 for name in SHAPES}
        tau = {name: totals[text, name][0] / totals[text, name][2] for name in SHAPES}
        best = max(rate[name] for name in SHAPES if name != "automatic")
        cells = " | ".join(f"{rate[name]:.3f} ({tau[name]:.2f})" for name in SHAPES)
        print(f"| {text} | {cells} | {rate['automatic'] / best:.2f}× |")


if __name__ == "__main__":
    main()
