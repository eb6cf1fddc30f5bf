"""GPU measurements of the fast path: bf16 agreement, the draft-step anatomy on realistic shapes, round times. One
command:

    python benchmarks/gpu_checks.py --out benchmarks/results

Exactness in float32 is `tests/gpu` (`python -m pytest -m gpu tests/gpu`); this script measures:

1. bf16: greedy through transformers' assisted loop and the own loop against plain bf16 greedy, and the target's
   top-two logit gap where they differ.
2. Anatomy (bf16, random weights, batch 1): per draft step body / full head / shortlist head (gather, Triton) /
   router, and whole graph-replayed steps with the full head, a static 1/16 shortlist and DynaSpec 1/16 (router on
   its side stream; and with fixed clusters, which gives the router's overhead); eager steps for comparison;
   Llama-, EAGLE-, Qwen2.5-0.5B- and Gemma-2-2B-shaped drafters; the Llama-3-8B-shaped target's forward for 1, 7
   and 17 tokens.
3. Rounds (bf16, random weights): milliseconds per speculative round on the Llama-3-8B-shaped target with
   Llama-3.2-1B-shaped and EAGLE-like drafters, through transformers' assisted loop and the own loop (its
   forwards eager-kernelled, and compiled), against the weight-reading floor at the measured copy bandwidth.

Writes gpu_checks.json / gpu_checks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen2Config  # noqa: E402

import dynaspec_hf  # noqa: E402
from dynaspec_hf import DynaSpecAssistant, TokenClusters, TreeConfig  # noqa: E402
from dynaspec_hf.fast_draft import GraphDrafter, StaticDraftCache  # noqa: E402
from dynaspec_hf.measure import count_forward_calls  # noqa: E402
from dynaspec_hf.compat import cache_keyword  # noqa: E402
from timing import cuda_ms  # noqa: E402

VOCAB = 128_256
BLOCK = 6  # drafts per round, as benchmarks/roofline.py composes
COMPILED = {"eager kernels": None, "compiled": {}}  # the own loop's `compile_options`: off, torch.compile defaults


def graph_ms(fn, inner: int = 20) -> float:
    """GPU time of one `fn()` without launch gaps: `inner` calls captured in a CUDA graph, replays timed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    return cuda_ms(graph.replay, repeats=50) / inner


# ------------------------------------------------------------------------------------------------ bf16


def random_pair(drafter_config: LlamaConfig, target_config: LlamaConfig | None, dtype):
    with torch.device("cuda"):
        drafter = AutoModelForCausalLM.from_config(drafter_config, dtype=dtype).eval()
        target = None if target_config is None else AutoModelForCausalLM.from_config(target_config, dtype=dtype).eval()
    return target, drafter


def random_clusters(vocab_size: int = VOCAB, num_clusters: int = 256, seed: int = 0) -> TokenClusters:
    """Frequency bands of a random ranking (what the timings need is the layout, not which tokens), core = 16 bands."""
    ranking = torch.randperm(vocab_size, generator=torch.Generator().manual_seed(seed)).float()
    return TokenClusters.from_frequencies(ranking, num_clusters, core_size=16 * -(-vocab_size // num_clusters))


@torch.no_grad()
def check_bf16(log) -> dict:
    """Greedy speculative decoding in bf16 against plain bf16 greedy (20 prompts of 12 tokens, 40 new), on tiny
    pairs whose logits are peaked like a trained model's (initializer range 0.2): prompts whose outputs are equal,
    and where they differ, the plain target's top-two logit gap at the first differing token, against the median
    gap over all its steps. A pass over several tokens rounds differently from one-token decoding, so in half
    precision a near tie may break the other way: float32 is the setting in which the loops are exact."""
    from conftest import make_assistant, tiny_pair

    results, new = {}, 40
    for family in ("llama", "qwen2"):
        target, drafter = tiny_pair(family, initializer_range=0.2)
        assistant = make_assistant(drafter, "routed").to("cuda", torch.bfloat16)
        target = target.to("cuda", torch.bfloat16)

        def own(tree, compile=False):
            return lambda ids: dynaspec_hf.generate(target, assistant, ids, max_new_tokens=new, tree=tree,
                                                    compile=compile)

        loops = {"transformers' assisted loop, graph drafter": lambda ids: target.generate(
                     ids, assistant_model=assistant, do_sample=False, max_new_tokens=new),
                 "own loop, chain of 6": own(TreeConfig.chain(6)), "own loop, default tree": own(TreeConfig()),
                 "own loop, chain of 6, compiled": own(TreeConfig.chain(6), True)}
        generator = torch.Generator().manual_seed(2)
        prompts = [torch.randint(0, 192, (1, 12), generator=generator).cuda() for _ in range(20)]
        plain = [target.generate(ids, do_sample=False, max_new_tokens=new, output_scores=True,
                                 return_dict_in_generate=True) for ids in prompts]

        def top_two_gap(scores: torch.Tensor) -> torch.Tensor:
            values = scores.float().topk(2, dim=-1).values
            return values[..., 0] - values[..., 1]

        median_gap = float(torch.cat([top_two_gap(torch.cat(r.scores)) for r in plain]).median())
        for name, loop in loops.items():
            exact, gaps = 0, []
            for ids, reference in zip(prompts, plain):
                differ = (loop(ids)[0, 12:] != reference.sequences[0, 12:]).nonzero()
                if len(differ) == 0:
                    exact += 1
                else:
                    gaps.append(float(top_two_gap(reference.scores[int(differ[0])][0])))
            results[f"{family}/{name}"] = dict(exact=exact, prompts=len(prompts), gaps_at_first_difference=gaps,
                                               median_gap=median_gap)
            log(f"| {family} | {name} | {exact}/{len(prompts)} | "
                f"{', '.join(f'{gap:.3f}' for gap in sorted(gaps)) or '-'} | {median_gap:.3f} |")
    return results


# ------------------------------------------------------------------------------------------------ anatomy


def llama_config(hidden: int, layers: int, intermediate: int, heads: int | None = None, kv_heads: int | None = None):
    heads = heads or hidden // 64
    return LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=8192,
                       tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def gemma2_2b_config():
    """Gemma-2-2B's shape: 256k tied vocabulary, local (4,096) and global layers alternating, soft-capped logits."""
    return Gemma2Config(vocab_size=256_000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256, sliding_window=4096,
                        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, tie_word_embeddings=True,
                        max_position_embeddings=8192, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def qwen25_05b_config():
    """Qwen2.5-0.5B's shape: 151,936-token tied vocabulary, a narrow 896-wide body."""
    return Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
                       max_position_embeddings=8192, bos_token_id=None, eos_token_id=None, pad_token_id=None)


DRAFTERS = {
    "trained-pair drafter (4 x 768)": llama_config(768, 4, 2048),
    "Llama-3.2-1B-shaped (16 x 2048)": llama_config(2048, 16, 8192, 32, 8),
    "EAGLE-like (1 x 4096)": llama_config(4096, 1, 14336, 32, 8),
    "Qwen2.5-0.5B-shaped (24 x 896, 151,936 tied)": qwen25_05b_config(),
    "Gemma-2-2B-shaped (26 x 2304, 256,000 tied, sliding)": gemma2_2b_config(),
}
TARGET_8B = llama_config(4096, 32, 14336, 32, 8)
ROUND_DRAFTERS = ("Llama-3.2-1B-shaped (16 x 2048)", "EAGLE-like (1 x 4096)")


@torch.no_grad()
def step_times(drafter, context: int = 256) -> dict:
    """Per-draft-step components and whole steps (graph-replayed and eager) at 1/16 of the vocabulary."""
    vocab_size = drafter.config.vocab_size
    clusters = random_clusters(vocab_size)
    assistant = DynaSpecAssistant.from_drafter(drafter, clusters, router_hidden_size=512, k_by_position=[16])
    hidden = torch.randn(1, drafter.config.hidden_size, device="cuda", dtype=drafter.dtype)
    token = torch.tensor([5], device="cuda")
    head = assistant.lm_head
    full_weight = drafter.get_output_embeddings().weight
    clusters16 = torch.randperm(256, device="cuda")[:16][None]
    index = head.index()
    blocks = head.weight[head.core_size :].view(256, clusters.cluster_size, -1)
    out = {
        "full head (in graph)": graph_ms(lambda: hidden @ full_weight.T),
        "router, MLP + top-k (in graph)": graph_ms(lambda: assistant.routing(hidden, token, 16)),
        "shortlist rows 1/16, gather + matmul (in graph)": graph_ms(
            lambda: torch.einsum("bd,bksd->bks", hidden, blocks[clusters16])),
        "static rows 1/16, matmul over the core prefix (in graph)": graph_ms(
            lambda: hidden @ head.weight[: 16 * clusters.cluster_size].T),
    }
    from dynaspec_hf import triton_head

    for rows, chunk, warps in ((64, 128, 4), (32, 128, 4), (16, 256, 4), (8, 256, 2), (32, 256, 8), (4, 512, 2)):
        out[f"shortlist rows 1/16, Triton rows={rows} d-chunk={chunk} warps={warps} (in graph)"] = graph_ms(
            lambda: triton_head.block_logits(hidden, blocks, clusters16, block_rows=rows, block_d=chunk,
                                             num_warps=warps))
    out["whole shortlist head 1/16 with gather (in graph)"] = graph_ms(
        lambda: head(hidden, clusters16, 0, kernel="gather"))
    out["whole shortlist head 1/16 with Triton (in graph)"] = graph_ms(lambda: head(hidden, clusters16, 0))
    out["whole static head 1/16 (in graph)"] = graph_ms(
        lambda: head(hidden, clusters16[:, :0], 16 * clusters.cluster_size, index))
    ids = torch.randint(0, vocab_size, (1, context), device="cuda")
    for name, schedule, route in (("full head", dict(k_by_position=[256]), True),
                                  ("static 1/16", dict(k_by_position=[0], core_by_position=[16 * clusters.cluster_size]), True),
                                  ("DynaSpec 1/16", dict(k_by_position=[16]), True),
                                  ("DynaSpec 1/16, router replaced by fixed clusters", dict(k_by_position=[16]), False)):
        assistant.set_schedule(**schedule)
        for graphs in (True, False):
            engine = GraphDrafter(assistant, max_length=context + 64, use_graphs=graphs, route=route)
            engine.draft(ids, 2, None)  # fills the cache and captures the step graphs

            def one_step():
                engine.body.set_length(context)
                engine.step(ids[:, -1:], assistant.config.shortlist_at(1))

            out[f"step, {name}, {'CUDA graph' if graphs else 'eager'}"] = cuda_ms(one_step)
    # the body alone: a step whose head is empty (core of one row)
    assistant.set_schedule(k_by_position=[0], core_by_position=[1])
    engine = GraphDrafter(assistant, max_length=context + 64)
    engine.draft(ids, 2, None)

    def body_step():
        engine.body.set_length(context)
        engine.step(ids[:, -1:], assistant.config.shortlist_at(1))

    out["body (step with a 1-row head), CUDA graph"] = cuda_ms(body_step)
    return out


@torch.no_grad()
def target_times(target, context: int = 256) -> dict:
    from transformers import DynamicCache

    ids = torch.randint(0, VOCAB, (1, context), device="cuda")
    cache = DynamicCache(config=target.config)
    target(ids, **{cache_keyword(target): cache})
    out = {}
    for tokens in (1, 7, 17):
        new = ids[:, :tokens]

        def forward():
            target(new, **{cache_keyword(target): cache})
            cache.crop(-tokens)

        out[f"target forward, {tokens} token(s), eager"] = cuda_ms(forward, repeats=30)
    return out


def anatomy(log) -> dict:
    results = {}
    target, _ = random_pair(DRAFTERS["trained-pair drafter (4 x 768)"], TARGET_8B, torch.bfloat16)
    results["Llama-3-8B-shaped target"] = target_times(target)
    del target
    torch.cuda.empty_cache()
    for name, config in DRAFTERS.items():
        _, drafter = random_pair(config, None, torch.bfloat16)
        results[name] = step_times(drafter)
        del drafter
        torch.cuda.empty_cache()
    for shape, times in results.items():
        for part, ms in times.items():
            log(f"| {shape} | {part} | {ms:.4f} |")
    return results


# ------------------------------------------------------------------------------------------------ rounds


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy (read + write): the rate the weight-reading floor assumes."""
    source = torch.empty(2**28, dtype=torch.float32, device="cuda")
    destination = torch.empty_like(source)
    return 2 * source.numel() * 4 / (cuda_ms(lambda: destination.copy_(source), repeats=20) / 1e3)


@contextmanager
def counting(owner, name: str):
    """Yields a one-element list counting calls of `owner.name` inside the block (graph replays included, which
    forward hooks do not see)."""
    original, calls = getattr(owner, name), [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(owner, name, counted)
    try:
        yield calls
    finally:
        setattr(owner, name, original)


def per_round_ms(generate, count_rounds) -> float:
    """Milliseconds per speculative round, prompt and setup excluded: the difference between 160 and 32 new
    tokens, over the difference in rounds (`count_rounds()`: a context yielding a one-element count)."""
    generate(32)  # captures the graphs
    measured = []
    for new in (32, 160):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with count_rounds() as rounds:
            generate(new)
        torch.cuda.synchronize()
        measured.append((time.perf_counter() - start, rounds[0]))
    (short, short_rounds), (long, long_rounds) = measured
    return (long - short) * 1e3 / max(long_rounds - short_rounds, 1)


@torch.no_grad()
def round_times(log, drafters=ROUND_DRAFTERS) -> dict:
    """Time per speculative round (6 drafts + one target pass) with the Llama-3-8B-shaped target, bf16, random
    weights (so about one token per round), against the weight-reading floor at the measured copy bandwidth; the
    own loop's forwards eager-kernelled and compiled (`compile=True`), side by side."""
    from dynaspec_hf.tree import TokenTree
    from dynaspec_hf.verification import TreeVerifier, tree_verifier

    bandwidth = copy_bandwidth()
    floor_ms = lambda parameters: 2 * parameters / bandwidth * 1e3  # noqa: E731  (bf16 weights read once)
    with torch.device("cuda"):
        target = AutoModelForCausalLM.from_config(TARGET_8B, dtype=torch.bfloat16).eval()
    target_floor = floor_ms(sum(p.numel() for p in target.parameters()) - target.get_input_embeddings().weight.numel())
    prompt = torch.randint(0, VOCAB, (1, 256), device="cuda")
    results = {"copy bandwidth (GB/s)": bandwidth / 1e9, "target floor (ms)": target_floor, **target_times(target)}
    log(f"| target | copy bandwidth {bandwidth / 1e9:.0f} GB/s; eager forward of 7 tokens "
        f"{results['target forward, 7 token(s), eager']:.2f} ms | - | {target_floor:.2f} | - |")
    tree = TokenTree(root_position=255)
    for token in range(7):
        tree.add(token, token - 1)
    chain = tree.nodes("cuda")
    for kernels, options in COMPILED.items():
        started = time.perf_counter()
        verifier = tree_verifier(target, 256 + 16, TreeConfig.chain(BLOCK).verified_tokens, options)
        verifier.verify(prompt[0], chain)  # the prompt's pass, eager

        def verify_round():
            verifier.cached = 255  # the last prompt token re-fed, then six drafts: a padded 13-token pass
            verifier.verify(prompt[0], chain)

        verify_round()  # captures the graph (and compiles)
        name = f"verification pass, padded to 13 tokens, CUDA graph, {kernels}"
        results[name] = ms = cuda_ms(verify_round, repeats=30)
        log(f"| target | {name} (warm-up {time.perf_counter() - started:.0f} s) | {ms:.2f} | {target_floor:.2f} | "
            f"{ms / target_floor:.2f} |")
    for shape in drafters:
        _, drafter = random_pair(DRAFTERS[shape], None, torch.bfloat16)
        assistant = DynaSpecAssistant.from_drafter(drafter, random_clusters(), router_hidden_size=512, k_by_position=[16])
        body = sum(p.numel() for p in drafter.model.parameters()) - drafter.get_input_embeddings().weight.numel()
        draft_floor = floor_ms(body + VOCAB // 16 * drafter.config.hidden_size)
        round_floor = BLOCK * draft_floor + target_floor
        assistant.generation_config.num_assistant_tokens = BLOCK
        times = {"round floor (ms)": round_floor}
        for kernels, options in COMPILED.items():
            started = time.perf_counter()
            engine = GraphDrafter(assistant, prompt.shape[1] + 2 * BLOCK, compile_options=options)
            cache = StaticDraftCache(engine)
            engine.draft(prompt, BLOCK, cache)  # the prompt, eagerly; then blocks that re-read two tokens
            engine.draft(prompt, BLOCK, cache)  # captures the graphs (and compiles)
            name = f"draft block of {BLOCK}, graph drafter, {kernels}"
            times[name] = ms = cuda_ms(lambda: engine.draft(prompt, BLOCK, cache), repeats=30)
            failed = sum(graph is None for graph in engine.graphs.values())
            log(f"| {shape} | {name} (warm-up {time.perf_counter() - started:.0f} s; {failed} steps uncaptured) | "
                f"{ms:.2f} | {BLOCK * draft_floor:.2f} | {ms / (BLOCK * draft_floor):.2f} |")

        def own_loop(options):
            compile = False if options is None else options
            return lambda new: dynaspec_hf.generate(target, assistant, prompt, max_new_tokens=new,
                                                    tree=TreeConfig.chain(BLOCK), compile=compile)

        loops = {"transformers' assisted loop, graph-drafted chain": (
            lambda new: target.generate(prompt, assistant_model=assistant, do_sample=False, max_new_tokens=new),
            lambda: count_forward_calls(target))}
        for kernels, options in COMPILED.items():
            loops[f"own loop, chain of {BLOCK}, graph-verified, {kernels}"] = (
                own_loop(options), lambda: counting(TreeVerifier, "verify"))
        for loop, (generate, count_rounds) in loops.items():
            times[loop] = per_round_ms(generate, count_rounds)
            log(f"| {shape} | {loop} | {times[loop]:.2f} | {round_floor:.2f} | {times[loop] / round_floor:.2f} |")
        results[shape] = times
        del drafter, assistant, engine, cache
        torch.cuda.empty_cache()
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["bf16", "anatomy", "rounds"])
    parser.add_argument("--round-drafters", nargs="+", default=ROUND_DRAFTERS, choices=ROUND_DRAFTERS,
                        help="drafter shapes the rounds section times")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    started = time.time()
    results = {"hardware": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                            "transformers": transformers.__version__}}
    sections = [
        ("bf16", "## Greedy in bf16 against plain bf16 greedy (tiny pairs, initializer range 0.2)\n\n| family | loop | "
                 "equal outputs | top-two logit gap where they first differ | median gap, all steps |\n"
                 "|---|---|---|---|---|", check_bf16),
        ("anatomy", "## Draft-step anatomy (bf16, batch 1, context 256; median ms)\n\n| shape | part | ms |\n"
                    "|---|---|---|", anatomy),
        ("rounds", "## Time per round on the Llama-3-8B-shaped target (bf16, random weights, prompt 256; ms)\n\n"
                   "| drafter | loop | ms per round | weight floor | ratio |\n|---|---|---|---|---|",
                   lambda log: round_times(log, args.round_drafters)),
    ]
    for name, header, fn in sections:
        if name in args.skip:
            continue
        log("\n" + header)
        results[name] = fn(log)
        log(f"\n({name}: {time.time() - started:.0f}s)")
    (args.out / "gpu_checks.json").write_text(json.dumps(results, indent=2))
    (args.out / "gpu_checks.md").write_text(
        f"GPU: {results['hardware']['gpu']}, torch {torch.__version__}, transformers {transformers.__version__}\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
