"""Milliseconds per round of the own loop (`dynaspec_hf.generate`) on random weights of the trained pair's shapes
(bf16, the published DynaSpec 1/16 greedy split), for comparing two versions of the package side by side on one
warm machine: run it once per version (`PYTHONPATH` picks the package) and compare the lines.

    python benchmarks/diagnostics/round_times.py --label after [--compile default|on|off] >> times.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dynaspec_hf  # noqa: E402
from dynaspec_hf import DynaSpecAssistant, TreeConfig  # noqa: E402
from gpu_checks import VOCAB, llama_config, random_clusters  # noqa: E402

SHAPES = {"chain of 6": TreeConfig.chain(6), "tree 16/7/4": TreeConfig(16, 7, 4)}
COMPILE = {"default": {}, "on": {"compile": True}, "off": {"compile": False}}


def pair_shaped_models(dtype: torch.dtype = torch.bfloat16):
    """Random weights of the trained pair's shapes with the published DynaSpec 1/16 greedy split, on CUDA, and a
    256-token prompt: (target, assistant, prompt)."""
    with torch.device("cuda"):
        target = AutoModelForCausalLM.from_config(llama_config(768, 12, 3072), dtype=dtype).eval()
        drafter = AutoModelForCausalLM.from_config(llama_config(768, 4, 3072), dtype=dtype).eval()
    assistant = DynaSpecAssistant.from_drafter(drafter, random_clusters(), k_by_position=[7],
                                               core_by_position=[4253], num_context_tokens=256)
    prompt = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(0)).cuda()
    return target, assistant, prompt


def ms_per_round(run, passes: int):
    """Milliseconds per round of `passes` calls of `run` (a `generate(..., return_stats=True)`), each timed from an
    idle device to its last kernel, and the last call's stats."""
    times = []
    for _ in range(passes):
        torch.cuda.synchronize()
        start = time.perf_counter()
        _, stats = run()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3 / stats.target_passes)
    return times, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True)
    parser.add_argument("--compile", default="default", choices=sorted(COMPILE))
    parser.add_argument("--shapes", nargs="+", default=sorted(SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    target, assistant, prompt = pair_shaped_models()
    for name in args.shapes:
        def run():
            return dynaspec_hf.generate(target, assistant, prompt, max_new_tokens=args.new_tokens, tree=SHAPES[name],
                                        return_stats=True, **COMPILE[args.compile])

        start = time.perf_counter()
        run()  # captures the graphs (and compiles)
        first = time.perf_counter() - start
        run()
        times, stats = ms_per_round(run, 5)
        print(json.dumps(dict(label=args.label, compile=args.compile, shape=name, ms_per_round=min(times),
                              ms_per_round_all=[round(t, 3) for t in times], rounds=stats.target_passes,
                              first_call_s=round(first, 1), gpu=torch.cuda.get_device_name(),
                              torch=torch.__version__)), flush=True)


if __name__ == "__main__":
    main()
