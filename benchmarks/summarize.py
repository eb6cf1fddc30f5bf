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
# what a user would pick instead of this package, each as transformers offers it (BENCHMARKS.md says how)
COMPILED_PLAIN = "plain decoding, static cache + torch.compile"
PROMPT_LOOKUP = "prompt lookup (transformers)"
ASSISTED_DEFAULTS = "transformers assisted (drafter, transformers' defaults)"
STRONG_BASELINES = (ASSISTED_DEFAULTS, COMPILED_PLAIN, PROMPT_LOOKUP)
MIN_TIMED_TOKENS = 32  # a timed generation shorter than this is not compared (`comparable`)
# the package's default path: `dynaspec_hf.generate` (a chain of 6) with the calibrated assistant; shortlists are
# compared in the same loop, on chains of the same length
PACKAGE_DEFAULT = "chain (own loop): DynaSpec 1/16"
OWN_LOOP_REFERENCES = ("chain (own loop): full vocabulary", "chain (own loop): static frequency 1/16",
                       "chain (own loop): VocabTrim 1/16")


def geometric_mean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def speeds(rows: list[dict]) -> dict:
    """Tokens/s keyed (temperature, method, category), for the timed rows that are `comparable`."""
    return {(r["temperature"], r["method"], r["category"]): r["tokens_per_s"] for r in rows
            if r.get("tokens_per_s") and comparable(r)}


def comparable(row: dict) -> bool:
    """Whether a timed row generated enough tokens for its tokens/s to compare: a sampled generation that draws EOS
    after a few tokens is timed mostly on its prompt's pass (rows without a token count are taken as they are)."""
    return row.get("timed_tokens") is None or row["timed_tokens"] >= MIN_TIMED_TOKENS


def left_out_note(rows: list[dict]) -> str:
    """The timed rows `speeds` leaves out, so a reader sees why a category is missing from a comparison."""
    short = [r for r in rows if r.get("tokens_per_s") and not comparable(r)]
    if not short:
        return ""
    cells = "; ".join(f"T = {r['temperature']:.0f}, {r['category']}, {r['method']} ({r['timed_tokens']})"
                      for r in short)
    return (f"Left out of the tokens/s comparisons above, as generations of fewer than {MIN_TIMED_TOKENS} tokens "
            f"(a sampled EOS ended them; timed tokens in brackets): {cells}.\n")


def headline_table(rows: list[dict], method: str = PACKAGE_DEFAULT) -> str:
    """Per temperature and category: `method`'s tokens/s over the strongest baseline a user would pick instead
    (the fastest of STRONG_BASELINES in that category), and the geometric mean over the categories."""
    speed = speeds(rows)
    lines = [f"{method} against the strongest baseline per category:", "",
             "| T | category | strongest baseline | its tokens/s | tokens/s | ratio |", "|---|---|---|---|---|---|"]
    for temperature in sorted({t for t, m, _ in speed if m == method}):
        ratios = []
        for category in sorted({c for t, m, c in speed if (t, m) == (temperature, method)}):
            timed = {b: speed[(temperature, b, category)] for b in STRONG_BASELINES
                     if (temperature, b, category) in speed}
            if not timed:
                continue
            best = max(timed, key=timed.get)
            mine = speed[(temperature, method, category)]
            ratios.append(mine / timed[best])
            lines.append(f"| {temperature:.0f} | {category} | {best} | {timed[best]:.1f} | {mine:.1f} | "
                         f"{ratios[-1]:.2f} |")
        if ratios:
            lines.append(f"| {temperature:.0f} | **geometric mean** | | | | **{geometric_mean(ratios):.2f}** |")
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


def ratio_table(rows: list[dict], method: str, references: tuple[str, ...], title: str) -> str:
    """`method`'s tokens/s over each reference's, category by category in the same run: one column per reference,
    and the geometric mean over the categories."""
    speed = speeds(rows)
    present = [r for r in references if any(m == r for _, m, _ in speed)]
    lines = [title, "", "| T | category | " + " | ".join(f"over {r}" for r in present) + " |",
             "|---" * (len(present) + 2) + "|"]
    for temperature in sorted({t for t, m, _ in speed if m == method}):
        columns = {r: [] for r in present}
        for category in sorted({c for t, m, c in speed if (t, m) == (temperature, method)}):
            cells = []
            for reference in present:
                base = speed.get((temperature, reference, category))
                ratio = base and speed[(temperature, method, category)] / base
                cells.append("-" if ratio is None else f"{ratio:.2f}")
                if ratio:
                    columns[reference].append(ratio)
            lines.append(f"| {temperature:.0f} | {category} | " + " | ".join(cells) + " |")
        lines.append(f"| {temperature:.0f} | **geometric mean** | " + " | ".join(
            f"**{geometric_mean(v):.2f}**" if v else "-" for v in columns.values()) + " |")
    return "\n".join(lines) + "\n" if present and len(lines) > 4 else ""


def best_chain_table(rows: list[dict], tree: str = "tree: DynaSpec 1/16") -> str:
    """`tree`'s tokens/s over the best fixed chain, per temperature: of the own loop's timed chains (every head,
    with and without runner-ups), the one of the highest geometric mean over the categories. One configuration
    for all categories, as a user would fix it: the faster of several chains picked category by category would
    also pick each category's luckiest timing."""
    speed = speeds(rows)
    lines = [f"{tree} against the best fixed chain (the own loop's timed chain of the highest geometric mean "
             "tokens/s):", "", "| T | best chain | its geometric mean tokens/s | tree over it: geometric mean | "
             "lowest category | categories below 1.0 |", "|---|---|---|---|---|---|"]
    for temperature in sorted({t for t, m, _ in speed if m == tree}):
        categories = sorted(c for t, m, c in speed if (t, m) == (temperature, tree))
        chains = {m: geometric_mean([speed[(temperature, m, c)] for c in categories])
                  for m in {m for t, m, _ in speed if t == temperature and m.startswith("chain")}
                  if all((temperature, m, c) in speed for c in categories)}
        if not chains:
            continue
        best = max(chains, key=chains.get)
        ratios = {c: speed[(temperature, tree, c)] / speed[(temperature, best, c)] for c in categories}
        lowest = min(ratios, key=ratios.get)
        lines.append(f"| {temperature:.0f} | {best} | {chains[best]:.1f} | "
                     f"**{geometric_mean(list(ratios.values())):.2f}** | {ratios[lowest]:.2f} ({lowest}) | "
                     f"{sum(r < 1.0 for r in ratios.values())} of {len(ratios)} |")
    return "\n".join(lines) + "\n" if len(lines) > 4 else ""


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


def draft_shape_table(rows: list[dict]) -> str:
    """The own loop's drafts per round (target pass, the prompt's included), per category: mean draft nodes
    verified and mean longest path, with τ. For the automatic tree, what it chose."""
    shaped = [row for row in rows if row.get("draft_nodes") is not None]
    if not shaped:
        return ""
    lines = ["The own loop's drafts per round:\n", "| T | method | category | draft nodes | longest path | τ |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {row['temperature']:.0f} | {row['method']} | {row['category']} | {row['draft_nodes']:.1f} | "
              f"{row['draft_depth']:.1f} | {row['tau']:.2f} |" for row in shaped]
    return "\n".join(lines) + "\n"


def round_time_table(rows: list[dict]) -> str:
    """The own loop's milliseconds per round by part (draft, verify, accept, commit: `GenerationStats.phase_seconds`
    of the timed generations), averaged over the categories: where a round's time goes, per method."""
    groups = defaultdict(list)
    for row in rows:
        if row.get("round_ms") and comparable(row):
            groups[(row["temperature"], row["method"])].append(row["round_ms"])
    if not groups:
        return ""
    parts = ("draft", "verify", "accept", "commit")
    lines = ["The own loop's milliseconds per round, by part (mean over categories):", "",
             "| T | method | " + " | ".join(parts) + " | round |", "|---" * (len(parts) + 3) + "|"]
    for (temperature, method), timings in groups.items():
        means = [sum(t.get(part, 0.0) for t in timings) / len(timings) for part in parts]
        lines.append(f"| {temperature:.0f} | {method} | " + " | ".join(f"{m:.2f}" for m in means)
                     + f" | {sum(means):.2f} |")
    return "\n".join(lines) + "\n"


def side_by_side_table(rows: list[dict], reference: str = ASSISTED) -> str:
    """Tokens/s of each timed method over `reference`'s, prompt set by prompt set in the same run: geometric mean,
    lowest and highest over the categories. Steadier than speedups over plain decoding, whose launch-bound speed
    moves between runs and within one. Where rows give their timed tokens, also pooled: all timed tokens over all
    their seconds, which weighs a prompt that ends after a few tokens by those tokens only."""
    speed = speeds(rows)
    groups = defaultdict(list)
    for (temperature, method, category), value in speed.items():
        base = speed.get((temperature, reference, category))
        if base and method != reference:
            groups[(temperature, method)].append(value / base)
    pooled = pooled_tokens_per_s(rows)
    lines = [f"| T | method | categories | tokens/s over {reference}: geometric mean | lowest | highest | "
             "pooled tokens/s | pooled over the reference's |", "|---|---|---|---|---|---|---|---|"]
    for (temperature, method), ratios in groups.items():
        mean = geometric_mean(ratios)
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


def recovery_table(rows: list[dict], temperature: float) -> str:
    """Recovery of the full vocabulary's τ per category at `temperature`, for every shortlist row (static,
    VocabTrim, DynaSpec and its ablations), ± its standard error where a row has one, and the mean over
    categories (its error: the cells' in quadrature over their count)."""
    shortlists = [r for r in rows if r["temperature"] == temperature and r.get("recovery") is not None
                  and r["shortlist_fraction"] is not None and r["shortlist_fraction"] < 1]
    methods = list(dict.fromkeys(r["method"] for r in shortlists))
    if not methods:
        return ""
    cells = {(r["method"], r["category"]): (r["recovery"], r.get("recovery_se")) for r in shortlists}
    categories = sorted({r["category"] for r in shortlists})
    lines = [f"Recovery at T = {temperature:.0f}:", "", "| category | " + " | ".join(methods) + " |",
             "|---" * (len(methods) + 1) + "|"]
    for category in categories:
        lines.append(f"| {category} | " + " | ".join(_with_error(*cells.get((m, category), (None, None)))
                                                    for m in methods) + " |")
    means = []
    for method in methods:
        values = [cells[(method, c)] for c in categories if (method, c) in cells]
        errors = [se for _, se in values]
        error = None if None in errors else sum(se ** 2 for se in errors) ** 0.5 / len(errors)
        means.append(_with_error(sum(v for v, _ in values) / len(values), error))
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def _with_error(value: float | None, error: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if error is None else f"{value:.3f} ± {error:.3f}"


def sampled_acceptance_table(calibration: dict) -> str:
    """Per shortlist size, calibration's exact held-out sampled acceptance at T = 1 (sum_x min(p, q) over the whole
    vocabulary): the full head, the sampling schedule without and with the tail at each weight tried, the best
    possible shortlist of the same size, and the target mass inside the shortlists; then the tail's τ check."""
    checks = {k: c for k, c in (calibration or {}).get("sampling_checks", {}).items() if c.get("acceptance")}
    if not checks:
        return ""
    weights = list(next(iter(checks.values()))["acceptance"]["tail"])
    header = (["shortlist rows", "full head"] + [f"tail {w}" if float(w) else "schedule, no tail" for w in weights]
              + ["best possible shortlist", "target mass in shortlist", "target mass in best shortlist",
                 "tail kept (τ without → with)"])
    lines = ["Exact held-out sampled acceptance at T = 1 (calibration):", "", "| " + " | ".join(header) + " |",
             "|---" * len(header) + "|"]
    for _, check in sorted(checks.items(), key=lambda item: int(item[0])):
        a = check["acceptance"]
        without = check.get("tau_sampled_split") if check.get("kept") else check.get("tau_greedy_split")
        chosen = f"{check['tail_weight']}, rank {check.get('tail_rank', 0)}"
        kept = ("no weight beat no tail" if "tau_tail" not in check else
                f"{chosen if check['tail_kept'] else 'no'} ({without:.3f} → {check['tau_tail']:.3f})")
        values = ([a["shortlist_size"], f"{a['full']:.3f}"] + [f"{a['tail'][w]:.3f}" for w in weights]
                  + [f"{a[key]:.3f}" for key in ("best_shortlist", "target_mass_in_shortlist",
                                                  "target_mass_in_best_shortlist")] + [kept])
        lines.append("| " + " | ".join(map(str, values)) + " |")
    ranked = {k: c["acceptance_by_rank"] for k, c in checks.items() if c.get("acceptance_by_rank")}
    if ranked:  # the tail's estimate: routed mass by corpus counts (rank 0) or a rank-r copy of the head's logits
        lines += ["", "The tail's exact held-out sampled acceptance by its estimate (rank 0: the router's cluster "
                  "mass shared by corpus counts; r: the logits of a rank-r copy of the head):", "",
                  "| shortlist rows | rank | " + " | ".join(f"tail {w}" for w in weights) + " |",
                  "|---|---|" + "---|" * len(weights)]
        for key, by_rank in sorted(ranked.items(), key=lambda item: int(item[0])):
            for rank, tail in by_rank.items():
                lines.append(f"| {checks[key]['acceptance']['shortlist_size']} | {rank} | "
                             + " | ".join(f"{tail[w]:.3f}" for w in weights) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], realism: dict | None = None, calibration: dict | None = None) -> str:
    tables = [headline_table(rows),
              ratio_table(rows, PACKAGE_DEFAULT, STRONG_BASELINES + (ASSISTED, "autoregressive"),
                          f"{PACKAGE_DEFAULT}: tokens/s over each baseline:"),
              ratio_table(rows, PACKAGE_DEFAULT, OWN_LOOP_REFERENCES,
                          "Shortlists where drafting matters (the own loop, chains of the same length): "
                          f"{PACKAGE_DEFAULT}'s tokens/s over the other heads':"),
              ratio_table(rows, "tree: DynaSpec 1/16", (PACKAGE_DEFAULT,),
                          "Trees against chains (the own loop, the automatic shape against the default chain):"),
              ratio_table(rows, "tree: full vocabulary", ("chain (own loop): full vocabulary",),
                          "The same with the full-vocabulary head:"),
              best_chain_table(rows), best_chain_table(rows, "tree: full vocabulary"),
              ratio_table(rows, "chain + runner-ups (own loop): DynaSpec 1/16", (PACKAGE_DEFAULT,),
                          "Runner-ups (each draft's runner-up beside it as a leaf) against the plain chain:"),
              left_out_note(rows), summary_table(rows), draft_shape_table(rows), round_time_table(rows),
              side_by_side_table(rows)]
    tables += [realism_table(realism)] if realism else []
    tables += [recovery_table(rows, 0.0), recovery_table(rows, 1.0), sampled_acceptance_table(calibration)]
    return "\n".join(table for table in tables if table)


if __name__ == "__main__":
    results = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/latest.json"))
    print(summary(results["rows"], results.get("realism"), results.get("calibration")))
