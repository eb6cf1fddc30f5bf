"""Plots of calibration curves: recall and greedy acceptance vs. shortlist size, DynaSpec vs. static."""

from __future__ import annotations


def plot_curves(curves: dict, path) -> bool:
    """Save a PNG; returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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
