"""Mean τ and recovery per method over all categories, from a benchmark results file.

    python benchmarks/summarize.py benchmarks/results/latest.json

(`run_benchmark.py` prints this too; this script reproduces the summary from committed results without a GPU.)
"""

import json
import sys
from collections import defaultdict


def summary_table(rows: list[dict]) -> str:
    groups = defaultdict(list)
    for row in rows:
        groups[(row["temperature"], row["method"])].append(row)
    lines = ["| T | method | shortlist / vocabulary | categories | mean τ | mean recovery |", "|---|---|---|---|---|---|"]
    for (temperature, method), group in groups.items():
        fraction = group[0]["shortlist_fraction"]
        recovery = [r["recovery"] for r in group if r.get("recovery") is not None]
        lines.append(
            f"| {temperature:.0f} | {method} | {'-' if fraction is None else format(fraction, '.4f')} | {len(group)} | "
            f"{sum(r['tau'] for r in group) / len(group):.2f} | "
            f"{'-' if not recovery else format(sum(recovery) / len(recovery), '.3f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summary_table(json.load(open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json"))["rows"]))
