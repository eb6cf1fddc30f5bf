"""Compare drafting methods on the trained pair: τ on ≥ 20 prompts per category, tokens/s on a smaller sample.

    python benchmarks/run_benchmark.py --pair PAIR_DIR --data DATA_DIR --out RESULTS_DIR --phase calibrate
    python benchmarks/run_benchmark.py ... --phase tau --temperatures 0
    python benchmarks/run_benchmark.py ... --phase tau --temperatures 1
    python benchmarks/run_benchmark.py ... --phase timing --temperatures 0 1
    python benchmarks/run_benchmark.py ... --phase merge         # writes RESULTS_DIR/latest.{json,md,png}
    accelerate launch --multi_gpu --num_processes N benchmarks/run_benchmark.py ... --phase tau   # data parallel

(`--phase all` runs them in turn; on the device tool each phase fits one 10-minute call on the warm machine,
which keeps PAIR_DIR.) Prompts: Spec-Bench's six categories + HumanEval, a fixed seeded sample per category.

τ (tokens per target forward pass) is measured on every sampled prompt by worker processes spread over the
visible GPUs: drafting is bound by Python and kernel launches, so several processes share a GPU, and τ does not
depend on timing. Tokens/s are measured afterwards by one process alone on the first `--timing-per-category`
prompts of each category. Every method goes through the unchanged `target.generate(assistant_model=...)`, except
the tree rows and "chain (own loop)", which use the package's own loop (`dynaspec_hf.generate`).

Beside τ, every prompt yields the realism statistics of the pair (`corpora.py` and BENCHMARKS.md say why they
matter): on the target's greedy continuation, the fraction of its tokens inside the static frequency shortlists;
on its T = 1 continuation, the probability mass the drafter and the target put inside those shortlists, and the
target's top-1 probability.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import gzip
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig  # noqa: E402

import dynaspec_hf  # noqa: E402
from dynaspec_hf import DynaSpecAssistant, TreeConfig  # noqa: E402
from dynaspec_hf.calibrate import (best_splits, calibrate, check_sampling_schedule, drafter_output_counts,  # noqa: E402
                                   split_schedule)
from dynaspec_hf.measure import count_forward_calls, gap_at_first_difference  # noqa: E402
from dynaspec_hf.report import pyplot  # noqa: E402
from corpora import DOCS, OUT_OF_DOMAIN, docs_prompts, header_prompts  # noqa: E402
from summarize import ASSISTED, ASSISTED_DEFAULTS, COMPILED_PLAIN, PACKAGE_DEFAULT, PROMPT_LOOKUP, summary  # noqa: E402

DRAFT_TOKENS = 6
MAX_PROMPT_TOKENS = 512  # a prompt's last tokens kept
LAUNCHER_VARIABLES = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU"}
FRACTIONS = {"1/64": 64, "1/32": 32, "1/16": 16}  # shortlist sizes compared, as fractions of the vocabulary
BASELINES = ("autoregressive", COMPILED_PLAIN, PROMPT_LOOKUP, ASSISTED_DEFAULTS)
PROMPT_LOOKUP_TOKENS = 10  # transformers' documented example value; no default exists
# the shortlists compared in the package's own loop, each a chain of DRAFT_TOKENS drafts
OWN_LOOP_CHAINS = ("full vocabulary", "static frequency 1/16", "VocabTrim 1/16", "DynaSpec 1/16", "DynaSpec 1/64")
OWN_LOOP_TAU_ONLY = ("static frequency 1/64", "VocabTrim 1/64")  # their τ only: DynaSpec 1/64's comparison
# the same chains with each draft's runner-up beside it (the full head's for its τ only)
RUNNER_UP_CHAINS = ("full vocabulary", "DynaSpec 1/16")


def load_prompts(data: Path, per_category: int, seed: int) -> dict[str, list[str]]:
    """A fixed, seeded sample of Spec-Bench prompts per category (first turn), HumanEval, and the two out-of-domain
    categories (C/C++ headers and package documentation of site-packages, which the pair never trained on)."""
    categories: dict[str, list[str]] = {}
    for line in (data / "spec_bench" / "question.jsonl").read_text().splitlines():
        record = json.loads(line)
        category = "mt_bench" if record["category"] not in {
            "translation", "summarization", "qa", "math_reasoning", "rag"} else record["category"]
        categories.setdefault(category, []).append(record["turns"][0])
    with gzip.open(data / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        categories["humaneval"] = [json.loads(line)["prompt"] for line in f]
    rng = random.Random(seed)
    prompts = {name: rng.sample(texts, min(per_category, len(texts))) for name, texts in categories.items()}
    prompts[OUT_OF_DOMAIN] = header_prompts(per_category, seed)
    prompts[DOCS] = docs_prompts(per_category, seed)
    return dict(sorted(prompts.items()))


# ------------------------------------------------------------------------------------------------ methods


GREEDY, SAMPLED, BOTH, NONE = (0.0,), (1.0,), (0.0, 1.0), ()  # temperatures a row is measured at


def methods(calibration: dict, trees: bool = True, tree: TreeConfig | None = None) -> list[dict]:
    """Every compared method, one row each, in the order of the results: its engine, shortlist schedule, which
    assistant drafts, and the temperatures at which τ is measured (`temperatures`) and tokens/s are timed
    (`timed_temperatures`), both given where the row is declared. `trees=False` leaves out the tree rows (the
    slowest to measure); `tree`: their shape (default: `TreeConfig()`, the package's)."""
    num_clusters, cluster_size, vocab = (calibration[k] for k in ("num_clusters", "cluster_size", "vocab_size"))
    out = []

    def row(method: str, engine: str, fraction, tau=BOTH, timed=NONE, **settings) -> dict:
        out.append(dict(method=method, engine=engine, fraction=fraction, temperatures=list(tau),
                        timed_temperatures=list(timed), **settings))
        return out[-1]

    def schedule(k, core=0, context=0, sampling_split=None, tail=0.0, rank=0):  # every part named: an assistant
        # keeps what the previous method set; `sampling_split`: the band that sampling at any temperature drafts
        # with; `tail`, `rank`: the sampling tail's weight and rank
        bands = [] if sampling_split is None else [dict(max_temperature=None, **split_schedule(sampling_split))]
        return dict(k_by_position=k if isinstance(k, list) else [k], core_by_position=[core],
                    num_context_tokens=context, temperature_bands=bands, sampling_tail=tail,
                    sampling_tail_rank=rank if tail else 0)

    # plain decoding (τ 1 by definition) and what a speed-minded user would pick instead (BASELINES)
    row("autoregressive", "transformers", None, tau=NONE, timed=BOTH)
    row(COMPILED_PLAIN, "compiled-plain", None, tau=NONE, timed=BOTH)
    row(PROMPT_LOOKUP, "prompt-lookup", None, timed=BOTH)
    row(ASSISTED_DEFAULTS, "transformers", 1.0, timed=BOTH, drafter="defaults")
    row("transformers assisted (drafter, full head)", "transformers", 1.0, tau=GREEDY, timed=BOTH)
    row("full vocabulary", "dynaspec-graph", 1.0, timed=GREEDY, schedule=schedule(num_clusters))
    for name, k in calibration["ks"].items():
        rows, headline = k * cluster_size, name == "1/16"
        fraction = rows / vocab
        row(f"static frequency {name}", "dynaspec-graph", fraction, timed=BOTH if headline else NONE,
            schedule=schedule(0, rows))
        row(f"VocabTrim {name}", "dynaspec-graph", fraction, timed=GREEDY if headline else NONE,
            schedule=schedule(0, rows), assistant="vocabtrim")
        # the package's routed setting at this size: the core/routed/context split calibration chose for greedy
        # decoding, and the one it chose for sampling as the sampling band and the tail, where end-to-end τ
        # confirmed them
        split, sampled = calibration["splits"][str(k)], calibration["sampled_splits"][str(k)]
        check = calibration["sampling_checks"][str(k)]
        band = sampled if check["kept"] else None
        tail = check["tail_weight"] if check.get("tail_kept") else 0.0
        rank = check.get("tail_rank", 0)
        chosen = schedule(split["k"], split["core"], split["context"], band, tail, rank)
        row(f"DynaSpec {name}", "dynaspec-graph", fraction, timed=BOTH if headline else NONE, schedule=chosen)
        if name not in ("1/16", "1/64"):
            continue
        # ablations at T = 1: the sampling band, and the tail (the calibrated weight, or 1 where none beat no tail)
        for label, other in (("greedy", None), ("sampled", sampled)):
            row(f"DynaSpec {name}, {label} split when sampling", "dynaspec-graph", fraction, tau=SAMPLED,
                schedule=schedule(split["k"], split["core"], split["context"], other, tail, rank))
        weight = check.get("tail_weight") or 1.0
        for label, value in (("no tail", 0.0), ("with tail", weight)):
            row(f"DynaSpec {name}, {label} when sampling", "dynaspec-graph", fraction, tau=SAMPLED,
                timed=SAMPLED if headline and label == "no tail" else NONE,
                schedule=schedule(split["k"], split["core"], split["context"], band, value, rank))
        # ablations: no context tokens; routed clusters only; the argmax router
        plain = calibration["splits_without_context"][str(k)]
        row(f"DynaSpec {name}, no context tokens", "dynaspec-graph", fraction, tau=BOTH if headline else GREEDY,
            schedule=schedule(plain["k"], plain["core"]))
        row(f"DynaSpec {name}, routed only", "dynaspec-graph", fraction, tau=BOTH if headline else GREEDY,
            schedule=schedule(k))
        if headline:
            row(f"DynaSpec {name}, argmax router", "dynaspec-graph", fraction, schedule=chosen, assistant="argmax")
    pa = calibration["k_by_position"]
    row("DynaSpec position-aware", "dynaspec-graph", sum(pa) / len(pa) * cluster_size / vocab, timed=GREEDY,
        schedule=schedule(pa))
    dynaspec_16 = next(m for m in out if m["method"] == "DynaSpec 1/16")
    settings = {key: dynaspec_16[key] for key in ("fraction", "schedule")}
    row("DynaSpec 1/16, eager drafting", "dynaspec-eager", tau=NONE, timed=GREEDY, **settings)  # τ: the graph's
    for base in [m for m in out if m["method"] in ("full vocabulary", "DynaSpec 1/16")] if trees else []:
        name = f"tree: {base['method']}"
        row(name, "dynaspec-tree", base["fraction"], tau=BOTH if base is dynaspec_16 else GREEDY, timed=BOTH,
            schedule=base["schedule"], tree=tree or TreeConfig(),
            round_costs=calibration.get("round_costs", {}).get(name))  # the automatic shape's, `measure_round_costs`
    for name in OWN_LOOP_CHAINS + OWN_LOOP_TAU_ONLY:  # the package's own loop, where drafting is a large share
        base = next(m for m in out if m["method"] == name)  # of a round
        timed = BOTH if name in OWN_LOOP_CHAINS else NONE
        row(f"chain (own loop): {name}", "dynaspec-tree", base["fraction"], timed=timed,
            **{key: base[key] for key in ("schedule", "assistant") if key in base}, tree=TreeConfig.chain(DRAFT_TOKENS))
    for name in ("full vocabulary", "DynaSpec 1/16"):  # sampled τ of the same chains drafted eagerly: whether the
        base = next(m for m in out if m["method"] == name)  # graph drafter's sampled steps draft what eager ones do
        row(f"chain (own loop, eager drafting): {name}", "dynaspec-tree", base["fraction"], tau=SAMPLED,
            schedule=base["schedule"], tree=TreeConfig.chain(DRAFT_TOKENS), eager_drafting=True)
    for name in RUNNER_UP_CHAINS:
        base = next(m for m in out if m["method"] == name)
        row(f"chain + runner-ups (own loop): {name}", "dynaspec-tree", base["fraction"],
            timed=BOTH if name == "DynaSpec 1/16" else NONE,
            schedule=base["schedule"], tree=TreeConfig.chain(DRAFT_TOKENS, runner_ups=1))
    return out


def timing_order(method: dict) -> int:
    """Where a row is timed: the strongest baseline, the package's default, the rest of the own loop (seconds to
    time once warm), the other baselines (transformers' loops: minutes), then transformers' loop with the package's
    heads, so a timing pass the time limit stops has the package's rows beside the baseline they are read against."""
    if method["method"] == COMPILED_PLAIN:
        return 0
    if method["method"] == PACKAGE_DEFAULT:
        return 1
    if method["engine"] == "dynaspec-tree":
        return 2
    return 3 if method["method"] in BASELINES + (ASSISTED,) else 4


def is_ablation(name: str) -> bool:
    """Rows that earlier runs settled (`--no-ablations` leaves them out): DynaSpec's variants, its position-aware
    schedule and the 1/32 size."""
    return (name.startswith("DynaSpec") and "," in name) or "1/32" in name or name == "DynaSpec position-aware"


def chosen_methods(calibration: dict, names: list[str] | None, trees: bool = True,
                   tree: TreeConfig | None = None, ablations: bool = True) -> list[dict]:
    """`methods`, or only those named (`--methods`: a run of a few rows, e.g. an ablation on a retrained pair);
    `ablations=False` leaves out the rows `is_ablation` names."""
    every = [m for m in methods(calibration, trees, tree) if ablations or not is_ablation(m["method"])]
    if not names:
        return every
    unknown = set(names) - {m["method"] for m in every}
    if unknown:
        raise SystemExit(f"Unknown method(s) {sorted(unknown)}; known: {[m['method'] for m in every]}")
    return [m for m in every if m["method"] in names]


def run_methods(calibration: dict, args) -> list[dict]:
    """The rows this run measures, as its options choose them."""
    return chosen_methods(calibration, args.methods, not args.no_trees, tree_config(args), not args.no_ablations)


def generate(method: dict, target, drafters: dict, assistants: dict, ids: torch.Tensor, temperature: float,
             new_tokens: int, compile: bool | None = None):
    """One generation with `method`; returns the new tokens, the number of target forward passes and, for the own
    loop, its `GenerationStats` (None otherwise). `compile`: the own loop's (None: its default, compiled on CUDA;
    τ passes False, since counting accepted tokens needs no compiled kernels)."""
    options = decoding_options(temperature, new_tokens)
    assistant = None
    if method["engine"].startswith("dynaspec"):
        assistant = assistants[method["method"]] if method["method"] in assistants else assistants[
            method.get("assistant", "dynaspec")]  # the timing phase gives each method an instance of its own
        assistant.set_schedule(**method["schedule"])
        # the own loop's chains draft with the graph drafter unless a row says otherwise; its trees replay graphs
        # of their own wherever they can
        assistant.use_cuda_graphs = method["engine"] in ("dynaspec-graph", "dynaspec-tree") and not method.get(
            "eager_drafting")
        costs = (method.get("round_costs") or {}).get(str(temperature))
        assistant.drafting.round_costs = dynaspec_hf.RoundCosts(**costs) if costs else None
    elif method["engine"] == "transformers" and method["method"] != "autoregressive":
        assistant = drafters[method.get("drafter", "like-for-like")]
    elif method["engine"] == "prompt-lookup":
        options["prompt_lookup_num_tokens"] = PROMPT_LOOKUP_TOKENS
    elif method["engine"] == "compiled-plain":  # transformers compiles the decoding step for a static cache on
        # CUDA; one cache size for every prompt, so the compiled step is built once
        options.update(cache_implementation="static", max_cache_len=MAX_PROMPT_TOKENS + new_tokens)
    stats = None
    with count_forward_calls(target) as calls:
        if method["engine"] == "dynaspec-tree":
            out, stats = dynaspec_hf.generate(target, assistant, ids, tree=method["tree"], return_stats=True,
                                              time_phases=True, compile=compile, **options)  # events: the loop's pace unchanged
            calls[0] = stats.target_passes  # replayed passes call no forward
        else:
            out = target.generate(ids, assistant_model=assistant, **options)
    return out[0, ids.shape[1] :].cpu(), calls[0], stats


def decoding_options(temperature: float, new_tokens: int) -> dict:
    """`generate` options of a row at `temperature` (0: greedy; else pure sampling, no top-k or top-p)."""
    options = dict(do_sample=temperature > 0, max_new_tokens=new_tokens)
    if temperature > 0:
        options.update(temperature=temperature, top_k=0, top_p=1.0)
    return options


def timed_generate(method: dict, target, drafters: dict, assistants: dict, ids: torch.Tensor, temperature: float,
                   new_tokens: int):
    """`generate`, timed from an idle device to its last kernel: (new tokens, own loop's stats or None, seconds)."""
    synchronize = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    gc.collect()  # the earlier generations' garbage is not collected inside this one's timing
    synchronize()
    start = time.perf_counter()
    out, _, stats = generate(method, target, drafters, assistants, ids, temperature, new_tokens)
    synchronize()
    return out, stats, time.perf_counter() - start


def tree_config(args) -> TreeConfig | None:
    return TreeConfig(*args.tree) if args.tree else None


def load_models(args, device: str, with_assistants: bool = True):
    """The target, the plain drafter twice (`drafters["like-for-like"]` drafts blocks of DRAFT_TOKENS as the
    assistants do; `drafters["defaults"]` keeps transformers' assisted-generation defaults) and the calibrated
    assistants by kind, none of them stopping at EOS."""
    dtype = getattr(torch, args.dtype)
    target = AutoModelForCausalLM.from_pretrained(args.pair / "target", dtype=dtype).to(device).eval()
    drafters = {name: AutoModelForCausalLM.from_pretrained(args.pair / "drafter", dtype=dtype).to(device).eval()
                for name in ("like-for-like", "defaults")}
    # transformers' own assisted-generation settings (20 tokens, confidence threshold 0.4, as a user gets them)
    drafters["defaults"].generation_config = GenerationConfig.from_model_config(drafters["defaults"].config)
    drafter = drafters["like-for-like"]
    drafter.generation_config.num_assistant_tokens = DRAFT_TOKENS
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    drafter.generation_config.assistant_confidence_threshold = 0.0
    assistants = {}
    for name in ("dynaspec", "vocabtrim", "argmax") if with_assistants else ():
        if not (args.pair / f"assistant-{name}").exists():  # calibrated for named rows that do not use it
            continue
        assistant = DynaSpecAssistant.from_pretrained(args.pair / f"assistant-{name}", dtype=dtype).to(device)
        assistant.generation_config.num_assistant_tokens = DRAFT_TOKENS
        assistant.generation_config.assistant_confidence_threshold = 0.0
        assistants[name] = assistant.eval()
    for model in (target, *drafters.values(), *assistants.values()):
        # every generation makes `max_new_tokens` (benchmarks' "ignore EOS"): an EOS would otherwise end one method's
        # generation after a token and another's at the full length (sampled), or a whole category's at its first
        # token (greedy, where the target ends the text the prompt began), and neither τ nor tokens/s would compare
        model.generation_config.eos_token_id = None
    return target, drafters, assistants


def encoded_prompts(args) -> dict[str, list[torch.Tensor]]:
    tokenizer = AutoTokenizer.from_pretrained(args.pair / "target")
    prompts = load_prompts(args.data, args.per_category, args.seed)
    return {c: [torch.tensor(tokenizer(t)["input_ids"][-MAX_PROMPT_TOKENS:]) for t in texts]
            for c, texts in prompts.items()}


# ------------------------------------------------------------------------------------------------ phases


def hardware_block() -> dict:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (CPU)"
    return {"gpu": gpu, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def run_calibration(args) -> None:
    started = time.time()
    target, drafters, _ = load_models(args, args.device, with_assistants=False)
    drafter = drafters["like-for-like"]
    tokens = torch.load(args.pair / "tokens.pt")
    vocab = target.config.vocab_size
    generator = torch.Generator().manual_seed(args.seed)
    sequences, domains = [], []
    for name, stream in tokens["train"].items():  # held-in text: windows of 256 tokens per training domain
        for start in torch.randint(0, stream.numel() - 257, (args.calibration_windows,), generator=generator).tolist():
            sequences.append(stream[start : start + 256].long())
            domains.append(name)
    counts = torch.bincount(torch.cat(list(tokens["train"].values())).long(), minlength=vocab)
    cluster_size = -(-vocab // args.num_clusters)
    ks = {name: max(1, round(vocab / d / cluster_size)) for name, d in FRACTIONS.items()}
    core_size = max(ks.values()) * cluster_size
    options = dict(domains=domains, num_clusters=args.num_clusters, frequency_counts=counts, core_size=core_size,
                   router_hidden_size=512, continuation_tokens=0, epochs=6, seed=args.seed, progress=False,
                   cache_dir=args.pair / "features", check_prompts=args.check_prompts)
    # a run of named rows (`--methods`) builds only what they use: the argmax router, VocabTrim and the sampling
    # band checks at the other sizes each cost minutes
    named = " ".join(args.methods) if args.methods else None
    if named is None and args.no_ablations:  # the argmax router and the 1/32 size serve ablations alone
        named = "full vocabulary static frequency VocabTrim DynaSpec 1/16 1/64"
    assistant, report = calibrate(target, drafter, sequences, **options)  # the mass objective, the default
    argmax_report = {}
    if named is None or "argmax router" in named:
        argmax_assistant, argmax_report = calibrate(target, drafter, sequences, objective="argmax",
                                                    **{**options, "check_prompts": 0})
        argmax_assistant.save_pretrained(args.pair / "assistant-argmax")
    calibrated = time.time() - started
    # the sampling band's and tail's end-to-end checks at every compared size (calibrate ran them at 1/16, what it
    # saves)
    default = dict(assistant.config.schedule()._asdict(), temperature_bands=assistant.config.temperature_bands,
                   sampling_tail=assistant.config.sampling_tail,
                   sampling_tail_rank=assistant.config.sampling_tail_rank)
    checks = {str(ks["1/16"]): report["sampling_check"]}
    for name, k in ks.items():
        if str(k) in checks:
            continue
        if (named is not None and name not in named) or name not in args.sampling_checks:
            checks[str(k)] = dict(kept=False, reason="not checked: no named row drafts at this size"
                                  if name in args.sampling_checks else "not checked (--sampling-checks)")
            continue
        checks[str(k)] = check_sampling_schedule(target, assistant, report["splits"][str(k)],
                                                 report["sampled_splits"][str(k)],
                                                 [sequences[i] for i in report["heldout"][:args.check_prompts]], 128)
    assistant.set_schedule(**default)
    checked = time.time() - started - calibrated
    assistant.save_pretrained(args.pair / "assistant-dynaspec")
    trim_counts = torch.zeros(vocab)
    if named is None or "VocabTrim" in named:
        trim_counts = drafter_output_counts(drafter, sequences[::4])
        clusters = dynaspec_hf.TokenClusters(assistant.lm_head.cluster_token_ids.cpu(), torch.zeros(0, dtype=torch.long),
                                             vocab)
        vocabtrim = DynaSpecAssistant.from_drafter(drafter, clusters.with_core(trim_counts, core_size),
                                                   k_by_position=[0], core_by_position=[core_size])
        vocabtrim.save_pretrained(args.pair / "assistant-vocabtrim")
    calibration = dict(num_clusters=args.num_clusters, cluster_size=cluster_size, vocab_size=vocab, ks=ks,
                       k_by_position=report["k_by_position"], splits=report["splits"],
                       sampled_splits=report["sampled_splits"], sampling_checks=checks, check_seconds=checked,
                       splits_without_context=best_splits(report["curves"], contexts=(0,)), curves=report.get("curves"),
                       argmax_curves=argmax_report.get("curves"), train_pairs=report["train_pairs"],
                       calibration_seconds=calibrated, vocabtrim_tokens=int(trim_counts.sum()),
                       hardware=hardware_block())
    calibration["round_costs"] = measure_round_costs(args, calibration)
    (args.pair / "calibration.json").write_text(json.dumps(calibration, indent=2))
    tails = {k: (c.get("tail_weight"), c.get("tail_rank")) if c.get("tail_kept") else 0 for k, c in checks.items()}
    print(f"calibrated on {report['train_pairs']} positions in {calibrated:.0f}s; position-aware k: "
          f"{report['k_by_position']}; splits {report['splits']}; sampled splits {report['sampled_splits']}; "
          f"sampling bands kept {({k: c['kept'] for k, c in checks.items()})}, tails kept "
          f"{tails} ({checked:.0f}s); "
          f"VocabTrim counts from {int(trim_counts.sum())} drafter tokens", flush=True)


def measure_round_costs(args, calibration: dict) -> dict:
    """The round costs of every automatic-tree row at each temperature (`dynaspec_hf.RoundCosts`: sampled drafts
    cost more), timed here, with the device to itself, once: every τ worker (they share the device, which would skew
    their own timings) and the timing phase then choose shapes by the same costs."""
    rows = [m for m in run_methods(calibration, args) if m["engine"] == "dynaspec-tree" and m["tree"].is_automatic]
    if not rows:
        return {}
    target, _, assistants = load_models(args, args.device)
    prompt = next(iter(encoded_prompts(args).values()))[0][None].to(args.device)
    costs = {}
    for method in rows:
        assistant = assistants[method.get("assistant", "dynaspec")]
        assistant.set_schedule(**method["schedule"])
        assistant.drafting.round_costs = None
        for temperature in args.temperatures:
            _, stats = dynaspec_hf.generate(target, assistant, prompt, tree=method["tree"], return_stats=True,
                                            **decoding_options(temperature, 8))
            costs.setdefault(method["method"], {})[str(temperature)] = dataclasses.asdict(stats.costs)
    return costs


def run_tau(args, state) -> None:
    """Spawn workers over the GPUs, wait, merge their per-prompt counts into PAIR_DIR/tau-T*.json.

    Alone, this process spreads `--workers` over every visible GPU. Under `accelerate launch` (or torchrun) each
    process starts its share of the workers on its own GPU, and the main process merges once all have finished.
    """
    started = time.time()
    shards = args.pair / "shards"
    shards.mkdir(exist_ok=True)
    temperatures = ",".join(str(t) for t in args.temperatures)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(max(torch.cuda.device_count(), 1))]
    share = max(args.workers // state.num_processes, 1)
    total = share * state.num_processes
    workers = []
    for index in range(state.process_index * share, (state.process_index + 1) * share):
        command = [sys.executable, __file__, "--pair", str(args.pair), "--data", str(args.data), "--out", str(args.out),
                   "--per-category", str(args.per_category), "--max-new-tokens", str(args.max_new_tokens),
                   "--seed", str(args.seed), "--temperatures", *map(str, args.temperatures), "--dtype", args.dtype,
                   *(["--tau-per-category", str(args.tau_per_category)] if args.tau_per_category else []),
                   *(["--own-loop-tau-per-category", str(args.own_loop_tau_per_category)]
                     if args.own_loop_tau_per_category else []),
                   *(["--methods", *args.methods] if args.methods else []), *(["--no-trees"] if args.no_trees else []),
                   *(["--no-ablations"] if args.no_ablations else []),
                   *(["--tree", *map(str, args.tree)] if args.tree else []),
                   "--device", args.device, "--worker", f"{index}/{total}"]
        env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}  # a worker is a process of its own
        env["OMP_NUM_THREADS"] = "1"
        if args.device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = gpus[state.local_process_index if state.num_processes > 1 else index % len(gpus)]
        workers.append(subprocess.Popen(command, env=env))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a time limit's SIGTERM ends the workers too
    try:
        failed = sum(bool(worker.wait()) for worker in workers)
    finally:  # no worker outlives this process: one left running would share the device with the next phase
        for worker in workers:
            worker.kill()
    state.wait_for_everyone()
    if failed:
        raise SystemExit(f"{failed} τ worker(s) of process {state.process_index} failed")
    if not state.is_main_process:
        return
    records, seen = [], set()
    for index in range(total):
        for record in json.loads((shards / f"T{temperatures}-{index}.json").read_text()):
            key = (record["method"], record["category"], record["prompt"], record["temperature"])
            if key not in seen:  # a run resumed with another subset can have given a prompt to two workers
                seen.add(key)
                records.append(record)
    (args.pair / f"tau-T{temperatures}.json").write_text(json.dumps(records))
    print(f"τ for T={temperatures}: {len(records)} generations by {total} workers from {state.num_processes} "
          f"process(es) in {time.time() - started:.0f}s", flush=True)


def run_worker(args) -> None:
    """τ of every method on this worker's share of the prompts, method by method (a method's CUDA graphs are
    captured once, not once per prompt)."""
    index, count = map(int, args.worker.split("/"))
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()  # progress is the parent's to show, once
    calibration = json.loads((args.pair / "calibration.json").read_text())
    target, drafters, assistants = load_models(args, args.device)
    encoded = encoded_prompts(args)
    own_limit = args.own_loop_tau_per_category or args.tau_per_category
    prompts, own_loop_prompts = (
        [(c, i, p) for c, ps in encoded.items() for i, p in enumerate(ps[:limit])][index::count]
        for limit in (args.tau_per_category, own_limit))
    temperatures = ",".join(str(t) for t in args.temperatures)
    shard = args.pair / "shards" / f"T{temperatures}-{index}.json"
    records = json.loads(shard.read_text()) if shard.exists() else []  # resume an interrupted run
    shard.write_text(json.dumps(records))  # a worker with no prompts still reports
    done = {(r["method"], r["category"], r["prompt"], r["temperature"]) for r in records}
    shortlist_ranks = frequency_ranks(assistants["dynaspec"], calibration)
    for temperature in args.temperatures:
        for method in run_methods(calibration, args):
            if temperature not in method["temperatures"]:
                continue
            for category, number, prompt in own_loop_prompts if method["engine"] == "dynaspec-tree" else prompts:
                if (method["method"], category, number, temperature) in done:
                    continue
                ids = prompt[None].to(args.device)
                torch.manual_seed(args.seed + number)
                tokens, calls, stats = generate(method, target, drafters, assistants, ids, temperature,
                                                args.max_new_tokens, compile=False)
                record = dict(method=method["method"], category=category, prompt=number, temperature=temperature,
                              tokens=tokens.numel(), target_calls=calls)
                if stats is not None:  # the own loop's draft shapes: draft nodes and longest path, summed over rounds
                    record.update(drafted=stats.drafted_tokens, depths=sum(stats.depths))
                if method["method"] == "full vocabulary":
                    record["realism"] = realism(target, drafters["like-for-like"], ids, tokens.to(args.device), temperature,
                                                shortlist_ranks)
                records.append(record)
                partial = shard.with_suffix(".tmp")
                partial.write_text(json.dumps(records))
                partial.replace(shard)  # after every generation, so a run stopped by a time limit resumes here


def frequency_ranks(assistant, calibration: dict) -> tuple[torch.Tensor, dict[str, int]]:
    """Each token's rank in the static frequency shortlist (the assistant's frequency core; the core's size past
    the end) and the size of each compared shortlist."""
    head = assistant.lm_head
    rank = torch.full((calibration["vocab_size"],), head.core_size, dtype=torch.long, device=head.weight.device)
    rank[head.core_token_ids] = torch.arange(head.core_size, device=rank.device)
    return rank, {name: k * calibration["cluster_size"] for name, k in calibration["ks"].items()}


@torch.no_grad()
def realism(target, drafter, prompt: torch.Tensor, continuation: torch.Tensor, temperature: float,
            shortlist_ranks) -> dict:
    """How a real model's regime looks on this prompt: greedy (T = 0) tokens inside each static shortlist, or at
    T = 1 the drafter's and the target's probability mass inside them and the target's top-1 probability, over
    the positions that predicted the continuation. Sums and a count, so categories pool by token."""
    rank, sizes = shortlist_ranks
    if temperature == 0:
        return dict(positions=continuation.numel(),
                    greedy_in_static={n: int((rank[continuation] < size).sum()) for n, size in sizes.items()})
    sequence = torch.cat([prompt[0], continuation])[None]
    start = prompt.shape[1] - 1  # the logits at this position predict the continuation's first token
    target_probs = target(input_ids=sequence).logits[0, start:-1].float().softmax(-1)
    drafter_probs = drafter(input_ids=sequence).logits[0, start:-1].float().softmax(-1)
    mass = lambda probs, size: float(probs[:, rank < size].sum())  # noqa: E731
    return dict(positions=continuation.numel(), target_top1=float(target_probs.max(-1).values.sum()),
                drafter_mass_in_static={n: mass(drafter_probs, size) for n, size in sizes.items()},
                target_mass_in_static={n: mass(target_probs, size) for n, size in sizes.items()})


def run_timing(args) -> None:
    """Tokens/s of every method on the timing sample, one process on one GPU; saved to PAIR_DIR/timing-T*.json.

    With `--timing-rounds R` every method is timed R times, in R passes over all methods, and each prompt's
    fastest run counts (as `timeit` advises): a slow spell of the host (drafting is bound by Python and kernel
    launches) then decides no ratio unless it falls on every pass. tokens/s = the fastest runs' tokens over their
    seconds. Progress is saved after every method's pass, so a run stopped by a time limit resumes there (in a new
    process, after its own warm-up)."""
    calibration = json.loads((args.pair / "calibration.json").read_text())
    target, drafters, assistants = load_models(args, args.device)
    sample = {c: ps[: args.timing_per_category] for c, ps in encoded_prompts(args).items()}
    warm = next(iter(sample.values()))[0][None].to(args.device)
    rows = run_methods(calibration, args)
    unknown = set(args.timed_methods or ()) - {m["method"] for m in rows}
    if unknown:
        raise SystemExit(f"Unknown --timed-methods {sorted(unknown)}; known: {[m['method'] for m in rows]}")
    timed = [(t, m) for t in args.temperatures for m in rows
             if t in m["timed_temperatures"] and (not args.timed_methods or m["method"] in args.timed_methods)]
    timed.sort(key=lambda item: timing_order(item[1]))
    for method in {m["method"]: m for _, m in timed if m["engine"].startswith("dynaspec")}.values():
        # an assistant of its own per method: no timed call re-captures graphs for another method's schedule
        assistants[method["method"]] = copy.deepcopy(assistants[method.get("assistant", "dynaspec")])
    temperatures = ",".join(str(t) for t in args.temperatures)
    progress_file = args.pair / f"timing-progress-T{temperatures}.json"
    state = json.loads(progress_file.read_text()) if progress_file.exists() else dict(done=[], totals={}, reference={})
    totals, reference = state["totals"], state["reference"]  # keyed "method|category|T" and "category|prompt"
    with gpu_clocks(args.pair / "gpu_clocks.csv"):
        for round_ in range(args.timing_rounds):
            for temperature, method in timed:
                if [round_, temperature, method["method"]] in state["done"]:
                    continue
                # warm-up (graphs, kernels, compilation) at the timed length: the compiled plain decoding's static
                # cache is sized by it
                generate(method, target, drafters, assistants, warm, temperature, args.max_new_tokens)
                for category, prompts in sample.items():
                    total = totals.setdefault(f"{method['method']}|{category}|{temperature}",
                                              dict(tokens=0, seconds=0.0, exact=0, runs=0))
                    for number, prompt in enumerate(prompts):
                        torch.manual_seed(args.seed + number)
                        out, stats, seconds = timed_generate(method, target, drafters, assistants,
                                                             prompt[None].to(args.device), temperature,
                                                             args.max_new_tokens)
                        count_run(total, out, stats, seconds, number)
                        if temperature == 0:  # greedy: every method must reproduce plain decoding token for token
                            expected = reference.setdefault(f"{category}|{number}", out.tolist())
                            total["exact"] += out.tolist() == expected
                            if out.tolist() != expected:  # bf16: how close the plain target's call was there
                                _, gap = gap_at_first_difference(target, torch.cat([prompt, torch.tensor(expected)]),
                                                                 torch.cat([prompt, out.cpu()]))
                                total.setdefault("gaps", []).append(gap)
                state["done"].append([round_, temperature, method["method"]])
                partial = progress_file.with_suffix(".tmp")
                partial.write_text(json.dumps(state))
                partial.replace(progress_file)
                print(f"timed T={temperature:.0f} {method['method']} (round {round_ + 1}/{args.timing_rounds})",
                      flush=True)
    (args.pair / f"timing-T{temperatures}.json").write_text(json.dumps(timing_rows(totals, args.timing_per_category)))


def count_run(total: dict, out: torch.Tensor, stats, seconds: float, number: int) -> None:
    """One timed run of prompt `number` into its row's totals: tokens and seconds, the prompt's fastest run, when
    it ran (epoch seconds, to read beside `gpu_clocks`) and, for the own loop, where its rounds' time went and what
    they drafted (draft nodes, longest paths, rounds by shape)."""
    total["tokens"] += out.numel()
    total["seconds"] += seconds
    total["runs"] += 1
    fastest = total.setdefault("fastest", {})
    if str(number) not in fastest or seconds < fastest[str(number)][1]:
        fastest[str(number)] = [out.numel(), seconds]
    now = time.time()
    total.setdefault("spans", []).append([round(now - seconds, 3), round(now, 3)])
    if stats is not None:
        total["rounds"] = total.get("rounds", 0) + stats.target_passes
        total["drafted"] = total.get("drafted", 0) + stats.drafted_tokens
        total["depths"] = total.get("depths", 0) + sum(stats.depths)
        shapes = total.setdefault("shapes", {})  # rounds by the shape drafted, "nodes/depth"
        for shape in stats.shapes:
            name = f"{shape.num_nodes}/{shape.max_depth}"
            shapes[name] = shapes.get(name, 0) + 1
        phases = total.setdefault("phase_seconds", {})
        for part, value in stats.phase_seconds.items():
            phases[part] = phases.get(part, 0.0) + value


@contextmanager
def gpu_clocks(path: Path):
    """`nvidia-smi` samples the GPU's SM clock, utilization and power every 100 ms into `path` (appended to, with
    host timestamps) while the block runs, so a slow timed generation (its `spans` in the progress file, in epoch
    seconds) can be read against the clocks it ran at. Nothing without `nvidia-smi`."""
    if shutil.which("nvidia-smi") is None:
        yield
        return
    with open(path, "a") as log:
        monitor = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,utilization.gpu,power.draw",
                                    "--format=csv,noheader", "-lms", "100"], stdout=log, stderr=subprocess.DEVNULL)
        try:
            yield
        finally:
            monitor.terminate()


def timing_rows(totals: dict, prompts_per_category: int) -> list[dict]:
    """Rows of tokens/s from the timing phase's totals (keyed "method|category|T"), whatever rounds they hold."""
    rows = []
    for key, total in totals.items():
        method, category, temperature = key.split("|")
        fastest = total["fastest"].values()  # each prompt's fastest run (`run_timing`)
        tokens_per_s = sum(tokens for tokens, _ in fastest) / sum(seconds for _, seconds in fastest)
        rows.append(dict(method=method, category=category, temperature=float(temperature),
                         tokens_per_s=tokens_per_s, timed_tokens=total["tokens"],
                         timing_prompts=prompts_per_category, timing_runs=total["runs"],
                         exact=total["exact"] if float(temperature) == 0 else None,
                         gaps_at_first_difference=total.get("gaps", []),
                         round_ms={part: 1e3 * value / total["rounds"] for part, value in total["phase_seconds"].items()}
                         if total.get("rounds") else None))
    return rows


def merge(args) -> dict:
    calibration = json.loads((args.pair / "calibration.json").read_text())
    records, timing = [], []
    for path in sorted(args.pair.glob("tau-T*.json")):
        records += json.loads(path.read_text())
    for path in sorted(args.pair.glob("timing-T*.json")):
        timing += json.loads(path.read_text())
    for path in sorted(args.pair.glob("timing-progress-T*.json")):  # a timing the time limit stopped: its rounds
        if not (args.pair / path.name.replace("timing-progress-", "timing-")).exists():  # done so far
            timing += timing_rows(json.loads(path.read_text())["totals"], args.timing_per_category)
    speed = {(r["method"], r["category"], r["temperature"]): r for r in timing}
    rows = []
    categories = sorted({r["category"] for r in records + timing})  # a run stopped before τ still has its timings
    for method in run_methods(calibration, args):
        for temperature in sorted(set(method["temperatures"] + method["timed_temperatures"])):
            for category in categories:
                mine = [r for r in records if (r["method"], r["category"], r["temperature"]) ==
                        (method["method"], category, temperature)]
                reference = reference_row(method["method"])
                full = [r for r in records if (r["method"], r["category"], r["temperature"]) ==
                        (reference, category, temperature)]
                timed = speed.get((method["method"], category, temperature))
                base = speed.get(("autoregressive", category, temperature))
                tau = sum(r["tokens"] for r in mine) / max(sum(r["target_calls"] for r in mine), 1) if mine else None
                tau = 1.0 if method["method"] == "autoregressive" else tau
                full_tau = sum(r["tokens"] for r in full) / sum(r["target_calls"] for r in full) if full else None
                tau_se, full_se = standard_error(mine), standard_error(full)
                recovery = None if tau is None or full_tau is None or method["fraction"] is None else tau / full_tau
                shaped = [r for r in mine if "drafted" in r]
                passes = sum(r["target_calls"] for r in shaped)
                rows.append(dict(
                    method=method["method"], engine=method["engine"], shortlist_fraction=method["fraction"],
                    category=category, temperature=temperature, tau=tau, tau_se=tau_se, recovery=recovery,
                    recovery_se=None if recovery is None or tau_se is None or full_se is None
                    else recovery * ((tau_se / tau) ** 2 + (full_se / full_tau) ** 2) ** 0.5,
                    prompts=len(mine), exact=timed and timed["exact"],
                    tokens_per_s=timed and timed["tokens_per_s"],
                    speedup=timed and base and timed["tokens_per_s"] / base["tokens_per_s"],
                    timing_prompts=timed and timed["timing_prompts"], timing_runs=timed and timed["timing_runs"],
                    timed_tokens=timed and timed["timed_tokens"],
                    gaps_at_first_difference=timed and timed.get("gaps_at_first_difference"),
                    round_ms=timed and timed.get("round_ms"),
                    draft_nodes=sum(r["drafted"] for r in shaped) / passes if shaped else None,
                    draft_depth=sum(r["depths"] for r in shaped) / passes if shaped else None))
    hardware = calibration.pop("hardware", None) or hardware_block()  # where the measurements ran, not the merge
    return {"hardware": hardware, "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "tau_prompts_per_category": {f"T={t}": {c: len({r["prompt"] for r in records if (r["category"], r["temperature"]) == (c, t)})
                                                     for c in sorted({r["category"] for r in records})}
                                         for t in sorted({r["temperature"] for r in records})},
            "calibration": calibration, "recipe": json.loads((args.pair / "recipe.json").read_text()),
            "realism": pooled_realism(records), "rows": rows}


def reference_row(method: str) -> str:
    """The full-vocabulary row a row's recovery is measured against: the same loop's and shape's (a row named
    "shape: shortlist" against "shape: full vocabulary")."""
    shape, _, _ = method.rpartition(": ")
    return f"{shape}: full vocabulary" if shape else "full vocabulary"


def standard_error(records: list[dict]) -> float | None:
    """The standard error of τ (all tokens over all target passes) over prompts, by the delta method for a ratio;
    None below two prompts. A recovery's adds its two τs' relative errors in quadrature (as if independent: the
    two rows' prompts are the same, so this overstates it)."""
    n = len(records)
    if n < 2:
        return None
    tau = sum(r["tokens"] for r in records) / sum(r["target_calls"] for r in records)
    calls = sum(r["target_calls"] for r in records) / n
    residuals = sum((r["tokens"] - tau * r["target_calls"]) ** 2 for r in records)
    return (residuals / (n * (n - 1))) ** 0.5 / calls


def pooled_realism(records: list[dict]) -> dict:
    """Per category, the realism statistics pooled over every token of its prompts' full-vocabulary generations:
    `greedy_in_static` at T = 0, the rest at T = 1 (see `realism`)."""
    pooled = {}
    for record in records:
        stats = record.get("realism")
        if not stats:
            continue
        into = pooled.setdefault(record["category"], {}).setdefault(record["temperature"], {})
        for key, value in stats.items():
            if isinstance(value, dict):
                for name, amount in value.items():
                    into.setdefault(key, {}).setdefault(name, 0.0)
                    into[key][name] += amount
            else:
                into[key] = into.get(key, 0.0) + value
    out = {}
    for category, by_temperature in sorted(pooled.items()):
        row = {}
        for sums in by_temperature.values():
            positions = max(sums.pop("positions"), 1)
            for key, value in sums.items():
                row[key] = {n: v / positions for n, v in value.items()} if isinstance(value, dict) else value / positions
        out[category] = row
    return out


def write_results(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    table, means = markdown_table(results["rows"]), summary(results["rows"], results.get("realism"),
                                                                      results.get("calibration"))
    (out / "latest.md").write_text(table)
    (out / "summary.md").write_text(means)
    plot(results["rows"], out / "latest.png")
    print(table)
    print(means)


def markdown_table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    lines = ["| T | method | category | τ | recovery | exact | tokens/s | speedup |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        exact = "" if r.get("exact") is None else f"{r['exact']}/{r['timing_runs']}"
        if r.get("gaps_at_first_difference"):  # bf16 rounding: the plain target's top-two gaps where they differ
            exact += " (gaps " + ", ".join(f"{g:.2f}" for g in sorted(r["gaps_at_first_difference"])) + ")"
        lines.append(f"| {r['temperature']:.0f} | {r['method']} | {r['category']} | {fmt(r['tau'], '.2f')} | "
                     f"{fmt(r['recovery'], '.3f')} | {exact} | {fmt(r['tokens_per_s'], '.1f')} | "
                     f"{fmt(r['speedup'], '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Bars per category: recovery at T = 0 and T = 1, and speedup at T = 0 (each panel only where measured)."""
    plt = pyplot()
    if plt is None:  # the `plot` extra; the tables are written without it
        print(f"{path.name} not written: matplotlib is not installed (pip install 'dynaspec-hf[plot]')")
        return
    panels = [(key, t, label) for key, t, label in (("recovery", 0, "recovery of full-vocabulary τ, greedy"),
                                                   ("recovery", 1, "recovery of full-vocabulary τ, T = 1"),
                                                   ("speedup", 0, "speedup over autoregressive, greedy"))
              if any(r["temperature"] == t and r.get(key) is not None for r in rows)]
    if not panels:  # nothing measured yet (a merge before any τ record)
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
    for ax, (key, temperature, label) in zip(axes[0], panels):
        chosen = [r for r in rows if r["temperature"] == temperature and r.get(key) is not None]
        categories = sorted({r["category"] for r in chosen})
        names = list(dict.fromkeys(r["method"] for r in chosen))
        grouped_bars(ax, categories, {name: [next((r[key] for r in chosen if r["method"] == name and r["category"] == c),
                                                  0) for c in categories] for name in names})
        ax.set_ylabel(label)
        ax.set_ylim(0.5 if key == "recovery" else 0, None)
        ax.legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def grouped_bars(ax, groups: list[str], series: dict[str, list[float]]) -> None:
    """One bar per series in each group, side by side, groups labelled on the x axis."""
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(groups))], values, width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(groups))], groups, rotation=20, fontsize=8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--phase", choices=["calibrate", "tau", "timing", "merge", "all"], default="all")
    parser.add_argument("--per-category", type=int, default=20)
    parser.add_argument("--timing-per-category", type=int, default=1)
    parser.add_argument("--timing-rounds", type=int, default=1, help="passes over all methods when timing")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--num-clusters", type=int, default=256)
    parser.add_argument("--calibration-windows", type=int, default=1100,
                        help="256-token windows per training domain the router calibrates on")
    parser.add_argument("--check-prompts", type=int, default=32,
                        help="held-out prompts of calibration's end-to-end sampling checks (0: none, the sampling "
                             "band and tail stay off; a shorter calibration)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--workers", type=int, default=10,
                        help="τ worker processes, spread over the GPUs (each holds the pair and three assistants, ~6.6 GB: "
                             "12 overfilled an 80 GB H100)")
    parser.add_argument("--note", help="how the run went, kept in the results' settings")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test of the pipeline")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="what users run; greedy rows then report agreement with plain bf16 decoding (bf16 "
                             "numerics differ between pass shapes; float32 exactness is tests/gpu's)")
    parser.add_argument("--methods", nargs="+", help="run only these methods (names as in the results' rows)")
    parser.add_argument("--timed-methods", nargs="+",
                        help="time only these rows (τ is still measured for every row): a shorter timing pass")
    parser.add_argument("--sampling-checks", nargs="+", default=list(FRACTIONS), choices=list(FRACTIONS),
                        help="sizes whose sampling band and tail calibration checks end to end (1/16 always: the "
                             "assistant's own); the others sample with their greedy split and no tail")
    parser.add_argument("--no-trees", action="store_true", help="leave out the tree rows")
    parser.add_argument("--no-ablations", action="store_true",
                        help="leave out the rows earlier runs settled: DynaSpec's variants and the 1/32 size")
    parser.add_argument("--tree", type=int, nargs=3, metavar=("NODES", "DEPTH", "WIDTH"),
                        help="the tree rows' shape (default: TreeConfig(), the package's default)")
    parser.add_argument("--tau-per-category", type=int, default=None,
                        help="measure τ on the first N prompts of each category's sample (default: all)")
    parser.add_argument("--own-loop-tau-per-category", type=int, default=None,
                        help="the own loop's rows on the first N prompts instead (default: --tau-per-category): "
                             "they replay graphs, so many more prompts cost little")
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)
    started = time.time()
    state = PartialState(cpu=args.device == "cpu")  # under `accelerate launch`: one process per GPU
    if args.phase in ("calibrate", "all"):
        if state.is_main_process:
            run_calibration(args)
        state.wait_for_everyone()
    if args.phase in ("tau", "all"):
        run_tau(args, state)
    if not state.is_main_process:
        return  # tokens/s are timed by one process alone; merging is the main process's
    if args.phase in ("timing", "all"):
        run_timing(args)
    if args.phase in ("merge", "all"):
        write_results(merge(args), args.out)
    print(f"phase {args.phase}: {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
