"""`dynaspec-hf bench`: what each way of generating makes on this machine, for your pair and your prompts.

Side by side, greedy, on the same prompts: plain decoding, eager and on a static cache (which transformers compiles
on CUDA: the own loop's target runs on a static cache too); transformers' assisted generation with the plain
drafter (when given); the DynaSpec assistant in transformers' loop; and the package's own loop with its default,
a chain of 6 drafts, and with the automatic shape (`TreeConfig()`). Each method runs once untimed first (CUDA
graphs are captured then), and every output is compared with plain decoding's.
"""

from __future__ import annotations

import time

import torch

from .generation import TreeConfig, generate
from .measure import count_forward_calls
from .tree import DEFAULT_TREE


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def bench(target, assistant, prompts: list[torch.Tensor], *, drafter=None, max_new_tokens: int = 64,
          progress=print) -> list[dict]:
    """One row per method: `method`, `tau` (new tokens per target pass), `tokens_per_s`, `speedup` (against plain
    decoding) and `exact` (prompts whose output equals plain decoding's). `prompts`: 1-D token ids."""
    device = target.device

    def transformers_loop(helper, **options):
        def run(ids):
            with count_forward_calls(target) as calls:
                out = target.generate(ids, assistant_model=helper, do_sample=False, max_new_tokens=max_new_tokens,
                                      **options)
            return out, calls[0]
        return run

    def own_loop(tree: TreeConfig):
        def run(ids):
            out, stats = generate(target, assistant, ids, max_new_tokens=max_new_tokens, tree=tree, return_stats=True)
            return out, stats.target_passes
        return run

    longest = max(prompt.numel() for prompt in prompts) + max_new_tokens  # one static cache size: one compile
    methods = [("plain decoding", transformers_loop(None)),
               # the own loop's target runs on a static cache too: this row shows what that alone gives
               ("plain decoding, static cache (torch.compile on CUDA)",
                transformers_loop(None, cache_implementation="static", max_cache_len=longest))]
    if drafter is not None:
        methods.append(("transformers assisted generation, plain drafter", transformers_loop(drafter)))
    methods += [("DynaSpec assistant in transformers' loop", transformers_loop(assistant)),
                ("dynaspec_hf.generate, chain of 6 (default)", own_loop(DEFAULT_TREE)),
                ("dynaspec_hf.generate, automatic shape", own_loop(TreeConfig()))]
    rows, reference = [], None
    for name, run in methods:
        progress(f"bench: {name}")
        run(prompts[0][None].to(device))  # warm-up: graph captures, first-call allocations
        outputs, passes, seconds = [], 0, 0.0
        for prompt in prompts:
            ids = prompt[None].to(device)
            _synchronize(device)
            start = time.perf_counter()
            out, count = run(ids)
            _synchronize(device)
            seconds += time.perf_counter() - start
            outputs.append(out[0, ids.shape[1]:].cpu())
            passes += count
        reference = reference or outputs
        new_tokens = sum(output.numel() for output in outputs)
        rows.append({"method": name, "tau": new_tokens / max(passes, 1), "tokens_per_s": new_tokens / seconds,
                     "exact": sum(torch.equal(a, b) for a, b in zip(outputs, reference)), "prompts": len(prompts)})
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return rows


def bench_table(rows: list[dict]) -> str:
    """The rows as a Markdown table, and which method to use on this machine: the fastest exact one."""
    lines = ["| method | τ (tokens per target pass) | tokens/s | vs plain decoding | same output as plain |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['method']} | {row['tau']:.2f} | {row['tokens_per_s']:.1f} | {row['speedup']:.2f}× | "
                     f"{row['exact']}/{row['prompts']} |")
    exact = [row for row in rows if row["exact"] == row["prompts"]]
    best = max(exact, key=lambda row: row["tokens_per_s"])
    if best is rows[0]:
        verdict = ("Use plain decoding here: no speculative method beat it on this machine with this pair and these "
                   "prompts.")
    else:
        verdict = f"Use {best['method']} here: {best['speedup']:.2f}× plain decoding on this machine."
    if len(exact) < len(rows):
        verdict += (" Some methods changed the output: expected only in reduced precision (bf16/fp16), where near "
                    "ties can break differently.")
    return "\n".join(lines + ["", verdict])
