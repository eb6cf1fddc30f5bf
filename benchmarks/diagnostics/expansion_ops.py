"""How many tensor operations a DySpec tree draft runs per drafter forward, inside the drafter's body and outside
it (the tree's own work: masks, heads, choosing, growing the pool). Operations that compute (views excluded) are a
kernel each on CUDA unless compiled, so the count is what a tree round's kernel time scales with; counting runs on
the CPU, eagerly, and needs no GPU. With `--cuda`, the GPU's own count instead: kernels and device milliseconds
per tree draft as it runs (graph-replayed, bf16; `--compile` as `generate`'s default on one GPU), by kernel, beside a
chain's of as many drafter forwards.

    python benchmarks/diagnostics/expansion_ops.py [--shape 16/7/4] [--sampled] [--top 15]
        [--cuda [--compile] [--sdpa efficient]]

Random weights of the trained pair's drafter shapes (128,256 tokens, 4 layers of 768) with the published DynaSpec
1/16 greedy split (`round_times.pair_shaped_models`' schedule), a tree drafted mid-generation (a cached prefix),
float32. `PYTHONPATH` picks the package, so two versions can be compared. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dynaspec_hf import DynaSpecAssistant  # noqa: E402
from dynaspec_hf.tree import ChainDrafter, TreeDrafter  # noqa: E402
from gpu_checks import VOCAB, llama_config, random_clusters  # noqa: E402
from timing import cuda_ms  # noqa: E402


class CountOps(TorchDispatchMode):
    """Counts aten operations that compute (not views), split by whether the drafter's body is running (`inside`
    is set by hooks); `outside` counts the others by name."""

    def __init__(self):
        super().__init__()
        self.inside, self.counts, self.outside = False, Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts["body" if self.inside else "tree"] += 1
            if not self.inside:
                self.outside[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="16/7/4", help="nodes/depth/width")
    parser.add_argument("--sampled", action="store_true", help="a sampled tree (temperature 1) instead of greedy")
    parser.add_argument("--top", type=int, default=15, help="the most frequent operations outside the body")
    parser.add_argument("--cuda", action="store_true", help="count the kernels a graph-replayed draft runs on the GPU")
    parser.add_argument("--compile", action="store_true", help="with --cuda: forwards and bookkeeping compiled")
    parser.add_argument("--sdpa", choices=("default", "efficient", "math"), default="default",
                        help="with --cuda: the attention kernels SDPA may pick (default: any; efficient: no cuDNN)")
    args = parser.parse_args(argv)
    if args.cuda:
        if args.sdpa != "default":
            torch.backends.cuda.enable_cudnn_sdp(False)
            torch.backends.cuda.enable_flash_sdp(False)
            torch.backends.cuda.enable_mem_efficient_sdp(args.sdpa == "efficient")
        return print(json.dumps(dict(cuda_kernels(args), sdpa=args.sdpa)))
    nodes, depth, width = (int(part) for part in args.shape.split("/"))
    torch.manual_seed(0)
    drafter = AutoModelForCausalLM.from_config(llama_config(768, 4, 3072)).eval()
    assistant = DynaSpecAssistant.from_drafter(drafter, random_clusters(), k_by_position=[7],
                                               core_by_position=[4253], num_context_tokens=256)
    tree_drafter = TreeDrafter(assistant, 512, max_depth=depth, width=width)
    committed = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(1))
    options = dict(num_nodes=nodes, do_sample=args.sampled, temperature=1.0 if args.sampled else 0.0)
    tree_drafter.draft(committed[:60], **options)  # the prompt; the counted tree re-reads a few tokens, as a round does

    counter = CountOps()
    body = assistant.drafter
    hooks = [body.register_forward_pre_hook(lambda *_: setattr(counter, "inside", True)),
             body.register_forward_hook(lambda *_: setattr(counter, "inside", False))]
    with counter:
        tree = tree_drafter.draft(committed, **options)
    for hook in hooks:
        hook.remove()
    forwards = depth  # the prefix's body forward, then depth - 1 node forwards
    print(json.dumps(dict(shape=args.shape, sampled=args.sampled, nodes=len(tree) - 1, drafter_forwards=forwards,
                          ops_in_body=counter.counts["body"], ops_outside_body=counter.counts["tree"],
                          ops_outside_body_per_forward=round(counter.counts["tree"] / forwards, 1),
                          most_frequent_outside=dict(counter.outside.most_common(args.top)),
                          package=str(Path(sys.modules["dynaspec_hf"].__file__).parent))))


def cuda_kernels(args) -> dict:
    """Kernels and device milliseconds per tree draft on the GPU, steady state (the graphs captured, compiled), and
    the same for a chain drafting as many drafter forwards (the chain drafter's graph-replayed steps), with every
    kernel by name: what a node forward adds to a chain step."""
    nodes, depth, width = (int(part) for part in args.shape.split("/"))
    torch.manual_seed(0)
    with torch.device("cuda"):
        drafter = AutoModelForCausalLM.from_config(llama_config(768, 4, 3072), dtype=torch.bfloat16).eval()
    assistant = DynaSpecAssistant.from_drafter(drafter, random_clusters(), k_by_position=[7],
                                               core_by_position=[4253], num_context_tokens=256)
    compile_options = {} if args.compile else None
    committed = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(1)).cuda()
    options = dict(do_sample=args.sampled, temperature=1.0 if args.sampled else 0.0)
    engines = {"tree": (TreeDrafter(assistant, 512, max_depth=depth, width=width, compile_options=compile_options),
                        nodes),
               "chain": (ChainDrafter(assistant, depth, compile_options), depth)}
    out = dict(shape=args.shape, sampled=args.sampled, compile=args.compile, drafter_forwards=depth,
               gpu=torch.cuda.get_device_name(), package=str(Path(sys.modules["dynaspec_hf"].__file__).parent))
    for name, (engine, num_nodes) in engines.items():
        engine.draft_nodes(committed[:60], num_nodes=num_nodes, **options)  # the prompt
        draft = lambda: (engine.draft_nodes(committed, num_nodes=num_nodes, **options), engine.tree())  # noqa: E731
        start = time.perf_counter()
        draft()  # captures the graphs (and compiles); re-reads two tokens, as a round does
        first = time.perf_counter() - start
        repeats = 20
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            for _ in range(repeats):
                draft()
            torch.cuda.synchronize()
        events = sorted((event for event in profile.key_averages() if event.self_device_time_total > 0),
                        key=lambda event: -event.count)
        out[name] = dict(kernels_per_draft=sum(event.count for event in events) / repeats,
                         device_ms_per_draft=sum(event.self_device_time_total for event in events) / 1e3 / repeats,
                         ms_per_draft=cuda_ms(draft, repeats=50), first_call_s=round(first, 1),
                         kernels={event.key[:100]: [event.count / repeats,
                                                    round(event.self_device_time_total / repeats, 1)]
                                  for event in events})  # name: [per draft, microseconds per draft]
    return out


if __name__ == "__main__":
    main()
