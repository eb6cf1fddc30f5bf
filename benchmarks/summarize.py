"""Mean τ and recovery per method over all categories, from a benchmark results file.

    python benchmarks/summarize.py benchmarks/results/latest.json

(`run_benchmark.py` prints this too; this script reproduces the summary from committed results without a GPU.)
"""

import json
import sys
from collections import defaultdict


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

if __name__ == "__main__":
    print(summary_table(json.load(open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json"))["rows"]))
