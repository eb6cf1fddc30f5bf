"""The benchmark's summary tables: means over categories and tokens/s side by side with a reference method."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize.py"
spec = importlib.util.spec_from_file_location("summarize", SCRIPT)
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)


def row(method, category, tokens_per_s, temperature=0.0, timed_tokens=None):
    return dict(method=method, category=category, temperature=temperature, tokens_per_s=tokens_per_s,
                shortlist_fraction=None, tau=None, recovery=None, speedup=None, timed_tokens=timed_tokens)


def test_side_by_side_is_the_geometric_mean_of_per_category_ratios():
    rows = [row(summarize.ASSISTED, "a", 100.0), row(summarize.ASSISTED, "b", 50.0),
            row("mine", "a", 200.0), row("mine", "b", 400.0),  # ratios 2 and 8: geometric mean 4
            row("untimed", "a", None), row("mine", "c", 90.0)]  # no reference in category c: left out
    lines = summarize.side_by_side_table(rows).splitlines()
    assert len(lines) == 3  # header, separator, one method: the reference itself is not listed
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[1] == "mine" and cells[2] == "2"
    assert [float(c) for c in cells[3:6]] == pytest.approx([4.0, 2.0, 8.0])
    assert cells[6:] == ["-", "-"]  # no timed token counts: nothing to pool


def test_side_by_side_pools_timed_tokens_over_timed_seconds():
    rows = [row(summarize.ASSISTED, "a", 100.0, timed_tokens=200), row(summarize.ASSISTED, "b", 10.0, timed_tokens=40),
            row("mine", "a", 400.0, timed_tokens=200), row("mine", "b", 10.0, timed_tokens=40)]
    cells = [c.strip() for c in summarize.side_by_side_table(rows).splitlines()[2].strip("|").split("|")]
    # geometric mean of 4 and 1 is 2; pooled, by tokens: 240 tokens in 4.5 s against 240 in 6 s
    assert float(cells[3]) == pytest.approx(2.0)
    assert float(cells[6]) == pytest.approx(240 / 4.5, abs=0.05) and float(cells[7]) == pytest.approx(6 / 4.5, abs=0.005)


def test_generations_ended_early_are_left_out_of_comparisons_and_named():
    short = summarize.MIN_TIMED_TOKENS - 1
    rows = [row(summarize.COMPILED_PLAIN, "a", 100.0, timed_tokens=128), row(summarize.COMPILED_PLAIN, "b", 100.0,
                                                                                timed_tokens=128),
            row(summarize.PACKAGE_DEFAULT, "a", 200.0, timed_tokens=128),
            row(summarize.PACKAGE_DEFAULT, "b", 5.0, timed_tokens=short)]  # a sampled EOS after a few tokens
    lines = summarize.headline_table(rows).splitlines()
    assert [line.split("|")[2].strip() for line in lines[4:]] == ["a", "**geometric mean**"]
    assert f"T = 0, b, {summarize.PACKAGE_DEFAULT} ({short})" in summarize.left_out_note(rows)
    assert summarize.left_out_note(rows[:3]) == ""


def test_headline_takes_the_fastest_baseline_per_category():
    rows = [row(summarize.COMPILED_PLAIN, "a", 100.0), row(summarize.PROMPT_LOOKUP, "a", 150.0),
            row(summarize.ASSISTED_DEFAULTS, "b", 80.0), row(summarize.COMPILED_PLAIN, "b", 40.0),
            row("autoregressive", "b", 1000.0),  # not a baseline a speed-minded user picks: never the strongest
            row(summarize.PACKAGE_DEFAULT, "a", 300.0), row(summarize.PACKAGE_DEFAULT, "b", 240.0)]
    lines = summarize.headline_table(rows).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4:]]
    assert cells[0][1:3] == ["a", summarize.PROMPT_LOOKUP] and float(cells[0][5]) == pytest.approx(2.0)
    assert cells[1][1:3] == ["b", summarize.ASSISTED_DEFAULTS] and float(cells[1][5]) == pytest.approx(3.0)
    assert float(cells[2][5].strip("*")) == pytest.approx(6 ** 0.5, abs=0.005)  # geometric mean of 2 and 3


def test_ratio_table_has_a_column_per_measured_reference():
    rows = [row("mine", "a", 300.0), row("mine", "b", 100.0), row("x", "a", 100.0), row("x", "b", 100.0),
            row("y", "a", 150.0)]
    lines = summarize.ratio_table(rows, "mine", ("x", "y", "never timed"), "title").splitlines()
    assert lines[2] == "| T | category | over x | over y |"
    assert [c.strip() for c in lines[4].strip("|").split("|")] == ["0", "a", "3.00", "2.00"]
    assert [c.strip() for c in lines[5].strip("|").split("|")] == ["0", "b", "1.00", "-"]  # y not timed on b
    assert [c.strip() for c in lines[6].strip("|").split("|")] == ["0", "**geometric mean**", f"**{3 ** 0.5:.2f}**",
                                                                   "**2.00**"]


def test_the_best_chain_is_one_configuration_not_each_categorys_fastest():
    """Chain x wins category a and y category b; y's geometric mean is higher, so the tree is compared with y in
    both categories, not with the faster of the two in each."""
    tree = "tree: DynaSpec 1/16"
    rows = [row("chain (own loop): x", "a", 200.0), row("chain (own loop): x", "b", 50.0),
            row("chain (own loop): y", "a", 100.0), row("chain (own loop): y", "b", 150.0),
            row(tree, "a", 150.0), row(tree, "b", 150.0)]
    cells = [c.strip() for c in summarize.best_chain_table(rows, tree).splitlines()[4].strip("|").split("|")]
    assert cells[1] == "chain (own loop): y" and float(cells[2]) == pytest.approx((100 * 150) ** 0.5, abs=0.05)
    assert float(cells[3].strip("*")) == pytest.approx(1.5 ** 0.5, abs=0.005)  # 1.5 on a, 1.0 on b
    assert cells[4] == "1.00 (b)" and cells[5] == "0 of 2"
    assert summarize.best_chain_table(rows[:4], tree) == ""  # no tree timed


def test_round_time_table_averages_each_part_over_categories():
    rows = [dict(row(summarize.PACKAGE_DEFAULT, "a", 500.0, timed_tokens=128),
                 round_ms=dict(draft=5.0, verify=2.0, accept=0.5, commit=0.5)),
            dict(row(summarize.PACKAGE_DEFAULT, "b", 400.0, timed_tokens=128),
                 round_ms=dict(draft=7.0, verify=4.0, accept=0.5, commit=0.5)),
            row(summarize.COMPILED_PLAIN, "a", 300.0)]  # no rounds: not listed
    lines = summarize.round_time_table(rows).splitlines()
    assert lines[2] == "| T | method | draft | verify | accept | commit | round |"
    assert lines[4:] == [f"| 0 | {summarize.PACKAGE_DEFAULT} | 6.00 | 3.00 | 0.50 | 0.50 | 10.00 |"]


def test_sampled_acceptance_table_lists_the_tail_by_rank_and_names_the_kept_one():
    tail = {"0.0": 0.71, "1.0": 0.736}
    acceptance = dict(shortlist_size=8016, full=0.757, tail=tail, best_shortlist=0.73, target_mass_in_shortlist=0.88,
                      target_mass_in_best_shortlist=0.93)
    check = dict(kept=False, tau_greedy_split=2.58, tail_weight=1.0, tail_rank=32, tail_kept=True, tau_tail=2.9,
                 acceptance=acceptance, acceptance_by_rank={"0": tail, "32": {"0.0": 0.71, "1.0": 0.745}})
    table = summarize.sampled_acceptance_table({"sampling_checks": {"16": check}})
    assert "| 1.0, rank 32 (2.580 → 2.900) |" in table
    assert "| 8016 | 0 | 0.710 | 0.736 |" in table and "| 8016 | 32 | 0.710 | 0.745 |" in table
