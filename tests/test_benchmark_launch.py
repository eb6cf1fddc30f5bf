"""The benchmark's τ phase data-parallel over 2 CPU processes (torchrun + accelerate's gloo backend) equals 1 process;
its timing phase times every method in every pass and checks greedy exactness.

A tiny pair in the recipe's folder layout and a tiny prompt set in Spec-Bench's and HumanEval's formats are built
here; the benchmark script runs as users run it, as a program.
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dynaspec_hf
from dynaspec_hf.demo import llama_pair, stdlib_texts, train_tokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_benchmark.py"
CATEGORIES = ["writing", "translation", "summarization", "qa", "math_reasoning", "rag"]


def build_pair(pair: Path, data: Path) -> None:
    corpus = "\n".join(stdlib_texts(300_000))
    tokenizer = train_tokenizer([corpus], vocab_size=512)
    torch.manual_seed(0)
    target, drafter = llama_pair(len(tokenizer), 64, 2, 64, 1)
    drafter.load_state_dict({k: v + 0.02 * torch.randn_like(v) for k, v in target.state_dict().items()
                             if k in drafter.state_dict() and v.shape == drafter.state_dict()[k].shape}, strict=False)
    for model, name in ((target, "target"), (drafter, "drafter")):
        model.save_pretrained(pair / name)
        tokenizer.save_pretrained(pair / name)
    stream = torch.tensor(tokenizer(corpus[:100_000])["input_ids"])
    torch.save({"train": {"stdlib": stream}}, pair / "tokens.pt")
    (pair / "recipe.json").write_text("{}")
    (data / "spec_bench").mkdir(parents=True)
    (data / "humaneval").mkdir()
    prompts = [corpus[start : start + 300] for start in range(150_000, 290_000, 10_000)]
    lines = [json.dumps({"category": CATEGORIES[i % 6], "turns": [p]}) for i, p in enumerate(prompts[:12])]
    (data / "spec_bench" / "question.jsonl").write_text("\n".join(lines) + "\n")
    with gzip.open(data / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts[12:14])


def run(arguments: list[str], launcher: list[str] = (), script: Path = SCRIPT, succeeds: bool = True) -> str:
    """The script's output (stdout; stderr where it is to fail), after checking how it exited."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([*launcher, str(script), *arguments], capture_output=True, text=True, env=env, timeout=900)
    assert (result.returncode == 0) == succeeds, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout if succeeds else result.stderr


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> Path:
    """A tiny pair and prompt set, calibrated by the benchmark once for this module's tests."""
    root = tmp_path_factory.mktemp("calibrated")
    build_pair(root / "pair", root / "data")
    run(arguments(root) + ["--phase", "calibrate"], [sys.executable])
    return root


def arguments(root: Path) -> list[str]:
    return ["--pair", str(root / "pair"), "--data", str(root / "data"), "--out", str(root / "out"), "--device", "cpu",
            "--num-clusters", "8", "--per-category", "1", "--max-new-tokens", "8", "--temperatures", "0",
            "--dtype", "float32"]  # exact on the CPU


def calibrated_pair(calibrated: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the calibrated pair for one test; returns its pair folder and the common arguments."""
    for name in ("pair", "data"):
        shutil.copytree(calibrated / name, tmp_path / name)
    return tmp_path / "pair", arguments(tmp_path)


def test_tau_phase_two_processes_equal_one(calibrated, tmp_path):
    pair, common = calibrated_pair(calibrated, tmp_path)
    runs = {}
    for processes, launcher in ((1, [sys.executable]),
                                (2, [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node", "2"])):
        shutil.rmtree(pair / "shards", ignore_errors=True)  # each run starts afresh instead of resuming
        (pair / "tau-T0.0.json").unlink(missing_ok=True)
        printed = run(common + ["--phase", "tau", "--workers", "2"], launcher)
        assert printed.count("τ for T=0.0") == 1, printed  # progress is printed once, by the main process
        assert f"from {processes} process(es)" in printed
        records = json.loads((pair / "tau-T0.0.json").read_text())
        runs[processes] = sorted(records, key=lambda r: (r["method"], r["category"], r["prompt"]))
    # every greedy τ method (autoregressive and eager drafting need none), one prompt per category: Spec-Bench's
    # six, HumanEval and the two out-of-domain ones, headers and package documentation
    assert len(runs[1]) == 30 * 9
    assert {r["category"] for r in runs[1]} >= {"humaneval", "cpp_headers", "package_docs"}
    assert runs[1] == runs[2]  # the automatic trees chose by the round costs calibration timed, not their own
    assert set(json.loads((pair / "calibration.json").read_text())["round_costs"]) == {
        "tree: full vocabulary", "tree: DynaSpec 1/16"}
    assert any(r["target_calls"] < r["tokens"] for r in runs[1])  # drafts were accepted: τ > 1 somewhere
    own = [r for r in runs[1] if r["method"].startswith(("tree:", "chain"))]
    assert own and all(r["target_calls"] - 1 <= r["drafted"] and r["depths"] <= r["drafted"] for r in own)
    run(common + ["--phase", "merge"], [sys.executable])  # τ without timings: the own loop's draft shapes
    drafts = (tmp_path / "out" / "summary.md").read_text().split("The own loop's drafts per round:")[1]
    assert "| 0 | tree: DynaSpec 1/16 | cpp_headers |" in drafts.split("\n\n")[1]
    realism = [r["realism"] for r in runs[1] if r["method"] == "full vocabulary"]
    assert len(realism) == 9
    for stats in realism:  # greedy tokens inside the static shortlists: counts that grow with the shortlist
        inside = stats["greedy_in_static"]
        assert 0 <= inside["1/64"] <= inside["1/32"] <= inside["1/16"] <= stats["positions"]


def test_own_loop_rows_take_more_prompts_and_report_standard_errors(calibrated, tmp_path):
    """`--own-loop-tau-per-category`: the own loop's rows on more prompts than transformers' loop's; their recovery
    is against the own loop's full-head chain, with a standard error once a category has two prompts."""
    pair, common = calibrated_pair(calibrated, tmp_path)
    run(common + ["--phase", "tau", "--workers", "2", "--per-category", "2", "--tau-per-category", "1",
                  "--own-loop-tau-per-category", "2", "--no-trees"], [sys.executable])
    records = json.loads((pair / "tau-T0.0.json").read_text())
    prompts = {}
    for r in records:
        prompts.setdefault(r["method"], set()).add((r["category"], r["prompt"]))
    assert len(prompts["chain (own loop): static frequency 1/64"]) == 2 * 9  # a τ-only own-loop row
    assert len(prompts["chain (own loop): DynaSpec 1/16"]) == 2 * 9 and len(prompts["DynaSpec 1/16"]) == 9
    run(common + ["--phase", "merge", "--no-trees"], [sys.executable])
    rows = [r for r in json.loads((tmp_path / "out" / "latest.json").read_text())["rows"] if r["temperature"] == 0]
    own = [r for r in rows if r["method"] == "chain (own loop): DynaSpec 1/16"]
    assert all(r["recovery_se"] is not None and r["recovery_se"] >= 0 and r["prompts"] == 2 for r in own)
    assert all(r["recovery_se"] is None for r in rows if r["method"] == "DynaSpec 1/16")
    full = {r["category"]: r["tau"] for r in rows if r["method"] == "chain (own loop): full vocabulary"}
    assert all(r["recovery"] == pytest.approx(r["tau"] / full[r["category"]]) for r in own)
    full = {r["category"]: r["tau"] for r in rows if r["method"] == "chain + runner-ups (own loop): full vocabulary"}
    assert all(r["recovery"] == pytest.approx(r["tau"] / full[r["category"]])  # against the same shape's full head
               for r in rows if r["method"] == "chain + runner-ups (own loop): DynaSpec 1/16")
    assert " ± " in (tmp_path / "out" / "summary.md").read_text().split("Recovery at T = 0:")[1]


def test_timing_phase_times_every_method_each_round_checks_exactness_and_resumes(calibrated, tmp_path):
    pair, common = calibrated_pair(calibrated, tmp_path)
    printed = run(common + ["--phase", "timing", "--timing-rounds", "2"], [sys.executable])
    assert "(round 2/2)" in printed
    rows = json.loads((pair / "timing-T0.0.json").read_text())
    assert len({r["category"] for r in rows}) == 9  # Spec-Bench's six, HumanEval, two out-of-domain ones
    # every timed row, the baselines a user would pick instead (prompt lookup, static-cache plain decoding,
    # assisted generation with transformers' defaults) and the own loop's chains per shortlist among them
    assert {r["method"] for r in rows} >= {"prompt lookup (transformers)",
                                           "plain decoding, static cache + torch.compile",
                                           "transformers assisted (drafter, transformers' defaults)",
                                           "chain (own loop): full vocabulary", "chain (own loop): VocabTrim 1/16",
                                           "chain (own loop): static frequency 1/16", "chain (own loop): DynaSpec 1/64"}
    assert len({r["method"] for r in rows}) == 19
    assert all(r["timing_runs"] == 2 and r["timed_tokens"] == 2 * 8 for r in rows)
    assert all(r["exact"] == 2 for r in rows), [r for r in rows if r["exact"] != 2]  # greedy equals plain decoding
    own_loop = [r for r in rows if r["method"].startswith(("chain", "tree"))]
    assert own_loop and all(set(r["round_ms"]) == {"draft", "verify", "accept", "commit"} for r in own_loop)
    assert all(r["round_ms"] is None for r in rows if r not in own_loop)  # where the own loop's rounds' time went
    # a merge after a time limit reads the rounds done so far from the progress file: here all of them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from run_benchmark import timing_rows

    progress = json.loads((pair / "timing-progress-T0.0.json").read_text())
    assert timing_rows(progress["totals"], 1) == rows
    for r in rows:  # tokens/s of each prompt's fastest run: at least the mean run's
        total = progress["totals"][f"{r['method']}|{r['category']}|0.0"]
        tokens, seconds = total["fastest"]["0"]
        assert r["tokens_per_s"] == pytest.approx(tokens / seconds) and seconds <= total["seconds"] / 2
        (first_start, first_end), (second_start, _) = total["spans"]  # when each run ran: in order, apart
        assert first_start < first_end <= second_start
    order = [method for round_, _, method in progress["done"] if round_ == 0]  # a stopped pass keeps the headline
    assert order[:2] == ["plain decoding, static cache + torch.compile", "chain (own loop): DynaSpec 1/16"]
    own_loop = [i for i, method in enumerate(order) if method.startswith(("chain", "tree"))]
    assert own_loop == list(range(1, len(own_loop) + 1)) and order[-1] == "DynaSpec 1/16, eager drafting"
    (pair / "timing-T0.0.json").unlink()  # as if the time limit had stopped it after its last method
    assert "timed" not in run(common + ["--phase", "timing", "--timing-rounds", "2"], [sys.executable])
    assert json.loads((pair / "timing-T0.0.json").read_text()) == rows  # resumed: nothing timed twice


def test_timed_methods_time_only_the_named_rows(calibrated, tmp_path):
    """`--timed-methods`: a shorter timing pass of the named rows; an unknown name is refused before any timing."""
    pair, common = calibrated_pair(calibrated, tmp_path)
    named = ["autoregressive", "chain (own loop): DynaSpec 1/16"]
    printed = run(common + ["--phase", "timing", "--no-ablations", "--timed-methods", *named], [sys.executable])
    assert printed.count("timed T=0") == 2
    rows = json.loads((pair / "timing-T0.0.json").read_text())
    assert {r["method"] for r in rows} == set(named) and len(rows) == 2 * 9
    refused = run(common + ["--phase", "timing", "--timed-methods", "tree"], [sys.executable], succeeds=False)
    assert "Unknown --timed-methods ['tree']" in refused


def test_tree_budgets_times_the_automatic_shape_beside_chains_and_resumes(calibrated, tmp_path):
    """`tree_budgets.py`: the automatic shape and fixed ones against chains, per category; a second call after a time
    limit goes on from the saved rows instead of timing them again."""
    pair, common = calibrated_pair(calibrated, tmp_path)
    script = SCRIPT.parent / "tree_budgets.py"
    options = ["--pair", str(pair), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "budgets"),
               "--device", "cpu", "--per-category", "1", "--max-new-tokens", "8", "--temperatures", "0",
               "--shapes", "auto", "4,3,2", "--chains", "3"]
    first = run(options, [sys.executable], script)
    saved = tmp_path / "budgets" / "tree_budgets.json"
    rows = json.loads(saved.read_text())["rows"]
    assert [r["shape"] for r in rows] == ["chain (own loop)", "chain of 3", "tree auto", "tree 4,3,2"]
    assert all(len(r["per_category"]) == 9 and r["tau"] >= 1 and r["nodes_per_round"] >= 1 for r in rows)
    assert next(r for r in rows if r["shape"] == "chain of 3")["depth_per_round"] <= 3
    assert "best chain" in first
    stopped = dict(json.loads(saved.read_text()), rows=rows[:3])  # as if a time limit had stopped the first call
    saved.write_text(json.dumps(stopped))
    again = run(options, [sys.executable], script)
    assert again.count("tokens/s, ") == 1 and "T=0 tree 4,3,2" in again  # only the missing shape
    assert [r["shape"] for r in json.loads(saved.read_text())["rows"]] == [r["shape"] for r in rows]


def test_methods_option_keeps_the_named_rows_and_refuses_unknown_names():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from run_benchmark import chosen_methods

    calibration = dict(num_clusters=256, cluster_size=501, vocab_size=128_256, ks={"1/64": 4, "1/32": 8, "1/16": 16},
                       k_by_position=[8, 4],
                       splits={"4": {"k": 3, "core": 245, "context": 256}, "8": {"k": 6, "core": 1002, "context": 0},
                               "16": {"k": 12, "core": 1748, "context": 256}},
                       sampled_splits={"4": {"k": 4, "core": 0, "context": 0}, "8": {"k": 6, "core": 1002, "context": 0},
                                       "16": {"k": 14, "core": 746, "context": 256}},
                       sampling_checks={"4": {"kept": False}, "8": {"kept": False},
                                        "16": {"kept": True, "tail_kept": True, "tail_weight": 0.3,
                                               "tail_rank": 16}},
                       splits_without_context={"4": {"k": 4, "core": 0, "context": 0},
                                               "8": {"k": 6, "core": 1002, "context": 0},
                                               "16": {"k": 12, "core": 2004, "context": 0}})
    names = ["static frequency 1/16", "DynaSpec 1/16", "DynaSpec 1/16, routed only", "DynaSpec 1/16, argmax router",
             "DynaSpec 1/16, no context tokens", "DynaSpec 1/16, greedy split when sampling", "DynaSpec 1/64",
             "DynaSpec 1/16, no tail when sampling"]
    chosen = chosen_methods(calibration, names)
    assert [m["method"] for m in chosen] == [names[i] for i in (6, 0, 1, 5, 7, 4, 2, 3)]
    # the split calibration chose for 16 clusters, with its sampled split as the band and the tail the τ check
    # kept; every part named, so no row inherits the previous row's
    band = dict(max_temperature=None, k_by_position=[14], core_by_position=[746], num_context_tokens=256)
    greedy = dict(k_by_position=[12], core_by_position=[1748], num_context_tokens=256)
    calibrated = dict(greedy, temperature_bands=[band], sampling_tail=0.3, sampling_tail_rank=16)
    assert chosen[0]["schedule"] == dict(k_by_position=[3], core_by_position=[245], num_context_tokens=256,
                                         temperature_bands=[], sampling_tail=0.0,
                                         sampling_tail_rank=0)  # 1/64: no band, no tail kept
    assert chosen[1]["schedule"] == dict(k_by_position=[0], core_by_position=[16 * 501], num_context_tokens=0,
                                         temperature_bands=[], sampling_tail=0.0, sampling_tail_rank=0)
    assert chosen[2]["schedule"] == calibrated and "assistant" not in chosen[2]
    assert chosen[3]["schedule"] == dict(calibrated, temperature_bands=[]) and chosen[3]["temperatures"] == [1.0]
    assert chosen[4]["schedule"] == dict(calibrated, sampling_tail=0.0, sampling_tail_rank=0)
    assert chosen[4]["temperatures"] == [1.0]
    assert chosen[5]["schedule"] == dict(k_by_position=[12], core_by_position=[2004], num_context_tokens=0,
                                         temperature_bands=[], sampling_tail=0.0, sampling_tail_rank=0)
    assert chosen[6]["schedule"] == dict(k_by_position=[16], core_by_position=[0], num_context_tokens=0,
                                         temperature_bands=[], sampling_tail=0.0, sampling_tail_rank=0)
    assert chosen[7]["schedule"] == calibrated and chosen[7]["assistant"] == "argmax"
    tree, own_chain = chosen_methods(calibration, ["chain (own loop): DynaSpec 1/16", "tree: DynaSpec 1/16"],
                                     tree=dynaspec_hf.TreeConfig(24, 9, 3))
    assert own_chain["schedule"] == tree["schedule"] == calibrated and own_chain["engine"] == tree["engine"] == "dynaspec-tree"
    assert own_chain["tree"] == dynaspec_hf.TreeConfig.chain(6) and tree["tree"] == dynaspec_hf.TreeConfig(24, 9, 3)
    eager, = chosen_methods(calibration, ["chain (own loop, eager drafting): DynaSpec 1/16"])  # τ at T = 1 only
    assert eager["eager_drafting"] and eager["temperatures"] == [1.0] and not eager["timed_temperatures"]
    assert eager["schedule"] == own_chain["schedule"] and eager["tree"] == own_chain["tree"]
    assert len(chosen_methods(calibration, None)) == len(chosen_methods(calibration, []))
    assert not any(m["method"].startswith("tree") for m in chosen_methods(calibration, None, trees=False))
    with pytest.raises(SystemExit, match="Unknown method"):
        chosen_methods(calibration, ["DynaSpec 1/7"])
    kept = {m["method"] for m in chosen_methods(calibration, None, trees=False, ablations=False)}
    assert {"DynaSpec 1/16", "DynaSpec 1/64", "VocabTrim 1/16", "chain (own loop): DynaSpec 1/64"} <= kept
    assert not any(name.startswith("DynaSpec") and "," in name or "1/32" in name or "position-aware" in name
                   for name in kept)
