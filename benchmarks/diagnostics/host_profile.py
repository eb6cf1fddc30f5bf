"""Where the host spends a round of the own loop: Python functions (cProfile), CUDA runtime calls per round
(kernel launches outside graphs, graph launches, synchronizations) and any step that could not be captured.

    python benchmarks/diagnostics/host_profile.py --out DIR [--dtype bfloat16] [--new-tokens 128]

Random weights of the trained pair's shapes, the published DynaSpec 1/16 greedy split (7 routed clusters, 4,253
core tokens, 256 context slots; `round_times.pair_shaped_models`), a chain of 6 or a tree 16/7/4 (`--shape`).
Writes DIR/host_profile_SHAPE.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import dynaspec_hf  # noqa: E402
from gpu_checks import VOCAB  # noqa: E402
from round_times import ms_per_round, pair_shaped_models  # noqa: E402  (this folder: the script's own)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--shape", default="chain", choices=("chain", "tree"))
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--parts", action="store_true", help="also time a draft step's parts and SDPA backends")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = getattr(torch, args.dtype)
    target, assistant, prompt = pair_shaped_models(dtype)
    shape = dynaspec_hf.TreeConfig.chain(6) if args.shape == "chain" else dynaspec_hf.TreeConfig(16, 7, 4)
    run = lambda **kw: dynaspec_hf.generate(target, assistant, prompt, max_new_tokens=args.new_tokens,  # noqa: E731
                                            tree=shape, return_stats=True,
                                            compile=args.compile, **kw)
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}, {args.shape}, "
             f"compile={args.compile}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(), run()
    lines += [f"warning: {w.message}" for w in caught]
    walls, stats = ms_per_round(run, 3)
    lines.append(f"rounds {stats.target_passes}, tokens {stats.new_tokens}; ms per round: "
                 + ", ".join(f"{w:.2f}" for w in walls))
    _, stats = run(time_phases=True)
    lines.append("device-timed phases, ms per round: " + ", ".join(
        f"{k} {v * 1e3 / stats.target_passes:.3f}" for k, v in stats.phase_seconds.items()))

    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    _, stats = run()
    torch.cuda.synchronize()
    profiler.disable()
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(45)
        lines += [f"\n== cProfile by {order} ({stats.target_passes} rounds) ==", text.getvalue()]

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as profile:
        _, stats = run()
        torch.cuda.synchronize()
    rounds = stats.target_passes
    runtime = Counter()
    for event in profile.events():
        if event.name.startswith("cuda") or event.name.startswith("cu"):
            runtime[event.name] += 1
    lines.append(f"\n== CUDA runtime calls per round ({rounds} rounds) ==")
    lines += [f"{count / rounds:8.2f}  {name}" for name, count in runtime.most_common(25)]
    kernels = [e for e in profile.key_averages() if e.self_device_time_total > 0]
    busy = sum(e.self_device_time_total for e in kernels) / 1e3 / rounds
    count = sum(e.count for e in kernels) / rounds
    lines.append(f"\n== kernels: {count:.0f} per round, {busy:.3f} ms busy per round ==")
    lines += [f"{e.count / rounds:7.1f} {e.self_device_time_total / 1e3 / rounds:7.3f} ms  {e.key[:110]}"
              for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:40]]
    if args.parts:
        lines += parts(assistant, dtype)
    text = "\n".join(lines)
    print(text)
    (args.out / f"host_profile_{args.shape}.txt").write_text(text)


@torch.no_grad()
def parts(assistant, dtype) -> list[str]:
    """Device milliseconds of a draft step's pieces, each captured in a graph of its own and replayed alone."""
    from dynaspec_hf.static_cache import StaticCacheModel, causal
    from timing import cuda_ms

    lines = ["\n== a draft step's parts (graph replays, ms) =="]
    body = StaticCacheModel(assistant.drafter, 2048)
    ids = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    one = causal(1, "cuda")
    body.forward(ids, ids[0], one)
    body.set_length(300)
    positions = torch.full((1,), 300, device="cuda")
    hidden = torch.randn(1, 768, device="cuda", dtype=dtype)
    shortlist = assistant.config.shortlist_at(0, 0.0)
    index = assistant.lm_head.index()
    context = assistant.context_tokens(torch.randint(0, VOCAB, (1, 400), device="cuda"))
    logits = torch.zeros(1, VOCAB, device="cuda")
    text = torch.randint(0, VOCAB, (1, 400), device="cuda")
    pieces = {
        "body, 1 token": lambda: body.forward(ids, positions, one),
        "router": lambda: assistant.routing(hidden, ids[:, 0], shortlist.clusters),
        "head (router + shortlist + spread)": lambda: logits.copy_(
            assistant.draft_step(hidden, hidden, ids[:, 0], shortlist, index, context)),
        "argmax over the vocabulary": lambda: logits.argmax(-1),
        "clone of the logits": lambda: logits.clone(),
        "context tokens (once per round)": lambda: assistant.context_tokens(text),
    }
    for name, piece in pieces.items():
        key = ("part", name)
        body.run(key, piece)
        graph = body.graphs[key]
        ms = cuda_ms(graph.replay, repeats=200, before=lambda: body.set_length(300))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
            graph.replay()
            torch.cuda.synchronize()
        count = sum(e.count for e in profile.key_averages() if e.self_device_time_total > 0)
        lines.append(f"{ms:8.4f} ms  {count:4d} kernels  {name}")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F
    for queries, keys in ((1, 2048), (1, 512), (14, 1024)):
        q = torch.randn(1, 12, queries, 64, device="cuda", dtype=dtype)
        k = torch.randn(1, 12, keys, 64, device="cuda", dtype=dtype)
        mask = torch.zeros(1, 1, queries, keys, device="cuda", dtype=dtype)
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH):
            try:
                with sdpa_kernel([backend]):
                    ms = cuda_ms(lambda: F.scaled_dot_product_attention(q, k, k, attn_mask=mask), repeats=200)
                lines.append(f"{ms:8.4f} ms  sdpa {backend.name}, {queries} queries x {keys} keys")
            except RuntimeError as error:
                lines.append(f"  sdpa {backend.name}: {str(error)[:80]}")
    return lines


if __name__ == "__main__":
    main()
