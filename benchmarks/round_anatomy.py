"""Where a round of the package's own loop spends its time: drafting, verification, acceptance and the rest.

    python benchmarks/round_anatomy.py --out DIR [--pair PAIR_DIR | --shape 8b-1b] [--dtype float32] [--compile]
        [--temperature 1]

Runs `dynaspec_hf.generate` (chain of 6, and the default tree; greedy, or sampling at `--temperature`) on the
trained pair's shapes (random weights unless `--pair` gives the trained pair; `--shape` picks other shapes) and
reports, per round: wall milliseconds of each
part (each timed from an idle device to its last kernel, so parts do not overlap), and the device's busy time
(kernel time from the profiler) over the whole round, and the kernels that take most of it. Wall time well above busy time is host work the device
waits for. Then it splits the last tree's expansion into the node forwards' bodies, their heads and the tree's own
work (graphs of each part replayed alone). Writes DIR/round_anatomy.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dynaspec_hf  # noqa: E402
from dynaspec_hf import DynaSpecAssistant, TreeConfig, generation  # noqa: E402
from dynaspec_hf.engines import kept_engine  # noqa: E402
from dynaspec_hf.static_cache import causal  # noqa: E402
from dynaspec_hf.tree import ChainDrafter, TreeDrafter, by_position  # noqa: E402
from dynaspec_hf.verification import TreeVerifier  # noqa: E402
from gpu_checks import DRAFTERS, TARGET_8B, llama_config, random_clusters  # noqa: E402
from timing import cuda_ms  # noqa: E402

VOCAB = 128_256
_TREE = TreeConfig(num_nodes=16, max_depth=7, width=4)  # the fixed tree tree_budgets.py found fastest
LOOPS = {"chain of 6": TreeConfig.chain(6), "automatic": TreeConfig(),  # the tree last: its drafter is split
         f"tree {_TREE.num_nodes}/{_TREE.max_depth}/{_TREE.width}": _TREE}


SHAPES = {  # --shape: (target config, drafter config), random weights
    "pair": (llama_config(768, 12, 3072), llama_config(768, 4, 3072)),  # the trained pair's shapes
    "8b-1b": (TARGET_8B, DRAFTERS["Llama-3.2-1B-shaped (16 x 2048)"]),
    "8b-eagle": (TARGET_8B, DRAFTERS["EAGLE-like (1 x 4096)"]),
}


def models(args):
    dtype = getattr(torch, args.dtype)
    if args.pair:
        target = AutoModelForCausalLM.from_pretrained(args.pair / "target", dtype=dtype).cuda().eval()
        assistant = DynaSpecAssistant.from_pretrained(args.pair / "assistant-dynaspec", dtype=dtype).cuda().eval()
        return target, assistant
    with torch.device("cuda"):
        target, drafter = (AutoModelForCausalLM.from_config(config, dtype=dtype).eval() for config in SHAPES[args.shape])
    return target, DynaSpecAssistant.from_drafter(drafter, random_clusters(), k_by_position=[16])


@contextmanager
def timed_parts(totals: dict):
    """Time each part of a round (wall, device synchronized before and after) while the block runs."""
    patches = [(ChainDrafter, "draft_nodes", "draft"), (TreeDrafter, "draft_nodes", "draft"),
               (TreeVerifier, "verify", "verify"), (TreeVerifier, "sample", "accept"), (generation, "accept", "accept")]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]

    def wrap(function, part):
        def timed(*args, **kwargs):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = function(*args, **kwargs)
            torch.cuda.synchronize()
            totals[part] += time.perf_counter() - start
            totals[part + " calls"] += 1
            return out
        return timed

    for (owner, name, part), (_, _, original) in zip(patches, originals):
        setattr(owner, name, wrap(original, part))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def measure(target, assistant, tree: TreeConfig, prompt, new_tokens: int, compile: bool = False,
            temperature: float = 0.0) -> dict:
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature else {}
    run = lambda: dynaspec_hf.generate(target, assistant, prompt, max_new_tokens=new_tokens, tree=tree,  # noqa: E731
                                       compile=compile, **sampling)
    started = time.perf_counter()
    run()  # captures the graphs
    warm_up = time.perf_counter() - started
    totals: dict = defaultdict(float)
    with timed_parts(totals):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = run()
        torch.cuda.synchronize()
        totals["round"] = time.perf_counter() - start
    rounds = totals["verify calls"]
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    unsynchronized = time.perf_counter() - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        run()
        torch.cuda.synchronize()
    events = profile.key_averages()
    busy = sum(event.self_device_time_total for event in events) / 1e3  # ms
    kernels = sum(event.count for event in events if event.self_device_time_total > 0)
    per_round = {part: totals[part] * 1e3 / rounds for part in ("draft", "verify", "accept")}
    per_round["rest (loop bookkeeping)"] = totals["round"] * 1e3 / rounds - sum(per_round.values())
    per_round["whole round, parts synchronized"] = totals["round"] * 1e3 / rounds
    per_round["whole round, as generate runs"] = unsynchronized * 1e3 / rounds
    per_round["device busy (kernel time)"] = busy / rounds
    heaviest = sorted((e for e in events if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)
    top = [dict(kernel=e.key[:120], per_round=e.count / rounds, ms_per_round=e.self_device_time_total / 1e3 / rounds)
           for e in heaviest[:25]]
    return dict(rounds=rounds, tokens=out.shape[1] - prompt.shape[1], ms=per_round, kernels_per_round=kernels / rounds,
                warm_up_s=warm_up, heaviest_kernels=top)


def node_forward_parts(drafter, width: int, heads: bool):
    """Device work of a tree's node forwards without the tree: the bodies over `width` tokens each (a tree's
    shapes: its width of nodes, each seeing the committed text and itself; or one token each, a chain step's
    body), and with `heads`, the head over their outputs."""
    ids = torch.zeros(1, width, dtype=torch.long, device=drafter.device)
    positions = drafter.base.expand(width)
    block = causal(1, drafter.device) if width == 1 else drafter.own_slots[0]

    def step():
        for shortlists in drafter.shortlist_plan(0.0, drafter.max_depth)[1:]:  # the node forwards'
            states = drafter.cache.forward(ids, positions, block, base=drafter.base).last_hidden_state[0]
            if heads:  # a greedy tree's: router, head and likeliest children from the shortlist's rows
                by_position(positions - drafter.base + 1, shortlists, lambda shortlist: drafter.greedy_children(
                    states, drafter.states[1:2].expand(width, -1), ids[0], shortlist))
    return step


@torch.no_grad()
def tree_forward_split(assistant) -> dict:
    """Where a tree node forward's time goes, from the tree drafter the last tree generation left on
    `assistant`: its whole expansion graph (median replay) against graphs of the same node forwards' bodies alone,
    bodies and heads, and bodies over one token each. What the expansion adds to bodies and heads is the tree's
    own work: choosing the next nodes, growing the candidate pool, q."""
    drafter = kept_engine(assistant, "tree drafter")
    cache = drafter.cache
    key = next(k for k in cache.graphs if k[0] == "tree")  # the expansion this script's generations replayed
    rollback = lambda: cache.set_length(drafter.base)  # noqa: E731  (node forwards write past the committed text)
    out = {"node forwards": drafter.forwards,
           "whole expansion": cuda_ms(cache.graphs[key].replay, repeats=200, before=rollback)}
    for name, width, heads in (("bodies", drafter.width, False), ("bodies and heads", drafter.width, True),
                               ("bodies over one token", 1, False)):
        rollback()
        cache.run(("split", name), node_forward_parts(drafter, width, heads))
        out[name] = cuda_ms(cache.graphs[("split", name)].replay, repeats=200, before=rollback)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pair", type=Path, help="the trained pair (recipe.py --out); default: random weights")
    parser.add_argument("--shape", default="pair", choices=sorted(SHAPES), help="random weights' shapes: the trained "
                        "pair's, or a Llama-3-8B-shaped target with a Llama-3.2-1B-shaped or EAGLE-like drafter")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="generate(compile=True): the loop's forwards compiled "
                        "by torch.compile, their kernels replayed inside the package's own graphs")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy; else sampling (top-k and top-p "
                        "off), which times recursive rejection sampling in the acceptance part")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    target, assistant = models(args)
    prompt = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(0)).cuda()
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "dtype": args.dtype,
               "weights": "trained pair" if args.pair else f"random ({args.shape} shapes)", "loops": {},
               "compiled": args.compile, "temperature": args.temperature}
    for name, tree in LOOPS.items():
        results["loops"][name] = loop = measure(target, assistant, tree, prompt, args.new_tokens, args.compile,
                                                args.temperature)
        print(f"{name}: warm-up {loop['warm_up_s']:.1f} s, ms per round {json.dumps(loop['ms'])}", flush=True)
    results["tree expansion split (ms per tree)"] = split = tree_forward_split(assistant)
    parts = list(next(iter(results["loops"].values()))["ms"])
    sampling = f", sampling at T = {args.temperature:g}" if args.temperature else ", greedy"
    lines = [f"GPU: {results['gpu']}, torch {results['torch']}, {args.dtype}, {results['weights']}{sampling}\n",
             "| ms per round | " + " | ".join(results["loops"]) + " |", "|---|" + "---|" * len(results["loops"])]
    lines += [f"| {part} | " + " | ".join(f"{loop['ms'][part]:.2f}" for loop in results["loops"].values()) + " |"
              for part in parts]
    lines.append("| rounds (tokens) | " + " | ".join(f"{loop['rounds']} ({loop['tokens']})"
                                                   for loop in results["loops"].values()) + " |")
    lines += ["\nThe last tree's expansion, replayed alone, against graphs of its node forwards' parts (ms per tree, "
              f"{split['node forwards']} node forwards)\n", "| graph | ms | per node forward |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.3f} | {ms / split['node forwards']:.3f} |" for name, ms in split.items()
              if name != "node forwards"]
    for name, loop in results["loops"].items():
        lines += [f"\n{name}: the heaviest kernels\n", "| kernel | per round | ms per round |", "|---|---|---|"]
        lines += [f"| `{k['kernel']}` | {k['per_round']:.1f} | {k['ms_per_round']:.3f} |" for k in loop["heaviest_kernels"]]
    (args.out / "round_anatomy.json").write_text(json.dumps(results, indent=2))
    (args.out / "round_anatomy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
