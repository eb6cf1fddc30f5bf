"""Mean τ, recovery and speedup per method over all categories, and tokens/s side by side with transformers' own
assisted generation, from a benchmark results file.

    python benchmarks/summarize.py benchmarks/results/latest.json

(`run_benchmark.py` prints this too; this script reproduces the summary from committed results without a GPU.)
"""

import json
import math
import sys
from collections import defaultdict

ASSISTED = "transformers assisted (drafter, full head)"


def summary_table(rows: list[dict]) -> str:
    """Per method and temperature: means over categories of τ, recovery and speedup (where measured)."""
    groups = defaultdict(list)
    for row in rows:
        groups[(row["temperature"], row["method"])].append(row)

    def mean(group, key, spec):
        values = [r[key] for r in group if r.get(key) is not None]
        return "-" if not values else format(sum(values) / len(values), spec)

    lines = ["| T | method | shortlist / vocabulary | categories | mean τ | mean recovery | mean speedup |",
             "|---|---|---|---|---|---|---|"]
    for (temperature, method), group in groups.items():
        fraction = group[0]["shortlist_fraction"]
        lines.append(
            f"| {temperature:.0f} | {method} | {'-' if fraction is None else format(fraction, '.4f')} | {len(group)} | "
            f"{mean(group, 'tau', '.2f')} | {mean(group, 'recovery', '.3f')} | {mean(group, 'speedup', '.2f')} |")
    return "\n".join(lines) + "\n"


def side_by_side_table(rows: list[dict], reference: str = ASSISTED) -> str:
    """Tokens/s of each timed method over `reference`'s, prompt set by prompt set in the same run: geometric mean,
    lowest and highest over the categories. Steadier than speedups over plain decoding, whose launch-bound speed
    moves between runs and within one. Where rows give their timed tokens, also pooled: all timed tokens over all
    their seconds, which weighs a prompt that ends after a few tokens by those tokens only."""
    speed = {(r["temperature"], r["method"], r["category"]): r["tokens_per_s"] for r in rows if r.get("tokens_per_s")}
    groups = defaultdict(list)
    for (temperature, method, category), value in speed.items():
        base = speed.get((temperature, reference, category))
        if base and method != reference:
            groups[(temperature, method)].append(value / base)
    pooled = pooled_tokens_per_s(rows)
    lines = [f"| T | method | categories | tokens/s over {reference}: geometric mean | lowest | highest | "
             "pooled tokens/s | pooled over the reference's |", "|---|---|---|---|---|---|---|---|"]
    for (temperature, method), ratios in groups.items():
        mean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        mine, base = pooled.get((temperature, method)), pooled.get((temperature, reference))
        lines.append(f"| {temperature:.0f} | {method} | {len(ratios)} | {mean:.2f} | {min(ratios):.2f} | "
                     f"{max(ratios):.2f} | {'-' if mine is None else f'{mine:.1f}'} | "
                     f"{'-' if mine is None or base is None else f'{mine / base:.2f}'} |")
    return "\n".join(lines) + "\n"


def pooled_tokens_per_s(rows: list[dict]) -> dict:
    """Per (temperature, method): timed tokens over timed seconds, summed over the categories."""
    tokens, seconds = defaultdict(float), defaultdict(float)
    for r in rows:
        if r.get("tokens_per_s") and r.get("timed_tokens"):
            key = (r["temperature"], r["method"])
            tokens[key] += r["timed_tokens"]
            seconds[key] += r["timed_tokens"] / r["tokens_per_s"]
    return {key: tokens[key] / seconds[key] for key in tokens}


def realism_table(realism: dict) -> str:
    """Per category: greedy tokens inside the static frequency shortlists (T = 0), the drafter's and the target's
    probability mass inside them and the target's mean top-1 probability (T = 1)."""
    names = list(next(iter(realism.values()))["greedy_in_static"])
    header = ([f"greedy in static {n}" for n in names] + [f"drafter mass in {n}" for n in names]
              + [f"target mass in {n}" for n in names] + ["target top-1 p"])
    lines = ["| category | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for category, row in realism.items():
        values = [row.get(key, {}).get(n) for key in ("greedy_in_static", "drafter_mass_in_static",
                                                      "target_mass_in_static") for n in names]
        values.append(row.get("target_top1"))
        lines.append(f"| {category} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], realism: dict | None = None) -> str:
    tables = [summary_table(rows), side_by_side_table(rows)] + ([realism_table(realism)] if realism else [])
    return "\n".join(tables)


if __name__ == "__main__":
    results = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json"))
    print(summary(results["rows"], results.get("realism")))
