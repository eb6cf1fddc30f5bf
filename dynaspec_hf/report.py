"""Reading a calibration report: the summary a user sees first, the verdict on whether speculation can pay, and
the plot of recall and greedy acceptance against shortlist size (DynaSpec vs. static)."""

from __future__ import annotations

# Held-out greedy acceptance of the drafter's full head below which speculation rarely pays: a round of 6 drafts
# then yields fewer than 1.43 tokens per target pass, before counting the drafter's own cost.
MIN_USEFUL_ACCEPTANCE = 0.3
SHORTLIST_RETENTION = 0.9  # below this share of the full head's acceptance, the summary says how to keep more


def expected_tau(acceptance: float, block: int) -> float:
    """Tokens per target pass for a block of `block` drafts, each accepted with probability `acceptance` given the
    ones before (the accepted prefix plus the target's own token)."""
    return float(block + 1) if acceptance >= 1 else (1 - acceptance ** (block + 1)) / (1 - acceptance)


def calibration_summary(report: dict, assistant) -> tuple[str, str | None]:
    """`(table, warning or None)`: held-out greedy acceptance and the τ it implies for the full head, the
    assistant's greedy shortlist and a static shortlist of the same size, with the target mass the routed clusters
    cover; the warning says why the assistant is unlikely to speed generation up."""
    if "curves" not in report:
        return ("No held-out texts: calibration needs at least two texts to measure anything.",
                "Nothing was measured: pass more calibration texts (each file's blank-line-separated blocks or jsonl "
                "records are texts).")
    config, curves = assistant.config, report["curves"]
    block = assistant.generation_config.num_assistant_tokens
    overall = curves["domains"]["all"]
    core, routed, context, _ = config.shortlist_at(0)
    rows = core + routed * config.cluster_size + context
    size = rows // config.cluster_size
    split = next((s for s in overall["splits"].get(str(size), [])
                  if (s["routed"], s["core"], s["context"]) == (routed, core, context)), None)
    lines = [f"Held-out greedy acceptance per draft position ({overall['pairs']} positions), and the tokens per "
             f"target pass it implies for blocks of {block} drafts:", "",
             "| drafting head | rows | acceptance | est. tokens per target pass |", "|---|---|---|---|"]

    def row(name: str, rows_: int, acceptance: float) -> None:
        lines.append(f"| {name} | {rows_:,} | {acceptance:.3f} | {expected_tau(acceptance, block):.2f} |")

    row("full vocabulary", config.vocab_size, overall["full_acceptance"])
    if split is not None:
        row(f"this assistant (DynaSpec: {routed} routed clusters + {core} core + {context} context)", rows,
            split["acceptance"])
    if str(size) in overall["splits"] and size in curves["ks"]:
        index = curves["ks"].index(size)
        row("static frequency shortlist of the same size", size * config.cluster_size,
            overall["static"]["acceptance"][index])
        if "mass" in overall["routed"]:
            mass, best = overall["routed"]["mass"][index], overall["routed"]["best_mass"][index]
            lines += ["", f"Target probability mass inside the {size} routed clusters: {mass:.3f} (best possible "
                          f"{best:.3f})."]
    if split is not None and split["acceptance"] < SHORTLIST_RETENTION * overall["full_acceptance"]:
        lines += ["", f"Note: this assistant's shortlist keeps {split['acceptance'] / overall['full_acceptance']:.0%} "
                      f"of the full head's acceptance. More calibration text trains a better router; a larger "
                      f"shortlist (`set_schedule`, sizes in calibration_report.json) keeps more."]
    warning = None
    if overall["full_acceptance"] < MIN_USEFUL_ACCEPTANCE:
        warning = (
            f"The drafter agrees with the target on only {overall['full_acceptance']:.1%} of held-out next tokens "
            f"(full vocabulary), below {MIN_USEFUL_ACCEPTANCE:.0%}: speculation with it will likely be slower than "
            f"the target alone. Likely causes: the drafter was not trained to imitate this target (another family, "
            f"or untrained), the two use different tokenizers, or the calibration texts are too few or unlike "
            f"what you generate.")
    return "\n".join(lines), warning


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None where matplotlib (the `plot` extra) is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict, path) -> bool:
    """Save a PNG; returns False (and writes nothing) when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False
    domains = curves["domains"]
    fig, axes = plt.subplots(2, len(domains), figsize=(4 * len(domains), 6), squeeze=False)
    fractions = [k * curves["cluster_size"] / curves["vocab_size"] for k in curves["ks"]]
    for column, (name, entry) in enumerate(domains.items()):
        for row, metric in enumerate(("recall", "acceptance")):
            ax = axes[row][column]
            ax.plot(fractions, entry["routed"][metric], "o-", label="DynaSpec (routed)")
            ax.plot(fractions, entry["static"][metric], "s--", label="static frequency")
            ax.set_xscale("log")
            ax.set_title(f"{name}: {metric}")
            ax.set_xlabel("shortlist / vocabulary")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
