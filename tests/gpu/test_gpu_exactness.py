"""Exactness on CUDA, where drafts and verification replay CUDA graphs: `python -m pytest -m gpu tests/gpu` on the
device. Float32 greedy output equals the target's own in transformers' loop and in the own loop (chain and tree,
eager kernels and compiled); graph-replayed drafts equal eager ones; the Triton head equals the gather path; sampling
keeps the target's distribution (chi-square). The CPU suite leaves these out (`-m "not gpu"`)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import SETTINGS, make_assistant, tiny_pair
from test_fast_draft import SLIDING
from test_sampling import PROMPT, VOCAB as SAMPLING_VOCAB, chi_square_p_value
from transformers import AutoModelForCausalLM, LlamaConfig

import dynaspec_hf
from dynaspec_hf import DynaSpecAssistant, TokenClusters, TreeConfig
from dynaspec_hf.compat import output_cache
from dynaspec_hf.engines import kept_engine
from dynaspec_hf.fast_draft import GraphDrafter
from dynaspec_hf.measure import gap_at_first_difference

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

LARGE_VOCAB = 128_256
NEAR_TIE = 1e-5  # float32 logits: two passes of different shapes may round a closer top two either way
OWN_LOOP = {"chain": TreeConfig.chain(6), "runner-ups": TreeConfig.chain(6, runner_ups=1), "tree": TreeConfig()}


def random_prompts(count: int, seed: int = 1, longest: int = 30) -> list[tuple[torch.Tensor, int]]:
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 192, (1, int(torch.randint(1, longest, (1,), generator=generator))),
                           generator=generator).cuda(), int(torch.randint(1, 25, (1,), generator=generator)))
            for _ in range(count)]


CASES = [(family, setting) for family in ("llama", "qwen2") for setting in sorted(SETTINGS)]
CASES += [(family, "routed") for family in SLIDING]


@pytest.mark.parametrize("family,setting", CASES)
def test_transformers_loop_greedy_is_exact(family, setting):
    target, drafter = (model.cuda() for model in tiny_pair(family))
    assistant = make_assistant(drafter, setting)
    for ids, new in random_prompts(20):
        plain = target.generate(ids, do_sample=False, max_new_tokens=new)
        assert torch.equal(plain, target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=new))
    assert kept_engine(assistant, "chain drafter").graphs, "the graph drafter did not draft"


# compiled: the routed schedule of each full-attention family covers the compiled forwards
OWN_CASES = [(family, setting, shape, compile) for family, setting in CASES for shape in sorted(OWN_LOOP)
             for compile in (False, True) if not compile or (setting == "routed" and family not in SLIDING)]


@pytest.mark.parametrize("family,setting,shape,compile", OWN_CASES)
def test_own_loop_greedy_is_exact(family, setting, shape, compile):
    """Token for token, but for a float32 near-tie (a top-two gap of the target's below `NEAR_TIE`, where the
    verification pass's kernels and one-token decoding's round differently), at most one prompt in ten."""
    target, drafter = (model.cuda() for model in tiny_pair(family))
    assistant = make_assistant(drafter, setting)
    new = 100 if family in SLIDING else 20  # sliding windows of 8: texts outgrow them
    generator = torch.Generator().manual_seed(2)
    near_ties = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            ids = torch.randint(0, 192, (1, 9), generator=generator).cuda()
            plain = target.generate(ids, do_sample=False, max_new_tokens=new)
            own = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=new, tree=OWN_LOOP[shape],
                                       compile=compile)
            difference = gap_at_first_difference(target, plain, own)
            if difference is not None:
                assert difference[1] < NEAR_TIE, f"differs at {difference[0]}, top-two gap {difference[1]:.2e}"
                near_ties.append(difference)
    assert len(near_ties) <= 1, near_ties
    failed = [str(warning.message) for warning in caught if "capture failed" in str(warning.message)]
    assert not failed, failed  # every fixed-shape forward replays from a graph, compiled ones too
    assert kept_engine(target, "verifier").model.graphs, "verification was not replayed from a CUDA graph"


def follow(caches, sequences, ids, accepted):
    """The next block's input: `accepted` drafts kept, then a token of the target's; caches cropped to match."""
    ids = torch.cat([sequences[:, : ids.shape[1] + accepted], ids[:, -1:] * 0 + 11], dim=1)
    for cache in caches:
        cache.crop(-(cache.get_seq_length() - (ids.shape[1] - 2)))
    return ids


@pytest.mark.parametrize("setting", ["full", "routed"])
@pytest.mark.parametrize("family", SLIDING)
def test_sliding_window_graph_drafts_equal_eager_steps(family, setting):
    """8-token windows, a 40-token prompt: graph drafts equal the same static-cache steps run eagerly, and with the
    full head the drafter's own greedy tokens recomputed without a cache."""
    _, drafter = tiny_pair(family, seed=16)
    assistant = make_assistant(drafter.cuda(), setting)
    graphs, eager = GraphDrafter(assistant, max_length=256), GraphDrafter(assistant, 256, use_graphs=False)
    ids = torch.randint(0, 192, (1, 40), generator=torch.Generator().manual_seed(0)).cuda()
    graph_cache = eager_cache = None
    for accepted in (2, 0, 6, 3, 1):
        fast, slow = graphs.draft(ids, 6, graph_cache), eager.draft(ids, 6, eager_cache)
        assert torch.equal(fast.sequences, slow.sequences)
        torch.testing.assert_close(torch.stack(fast.scores), torch.stack(slow.scores), atol=1e-4, rtol=1e-4)
        if setting == "full":
            reference = ids
            with torch.no_grad():
                for _ in range(6):
                    token = drafter(reference, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                    reference = torch.cat([reference, token], dim=1)
            assert torch.equal(fast.sequences, reference)
        graph_cache, eager_cache = output_cache(fast), output_cache(slow)
        ids = follow((graph_cache, eager_cache), fast.sequences, ids, accepted)


def large_vocabulary_assistant(schedule: list[int], layers: int = 2) -> DynaSpecAssistant:
    """A 768-wide Llama drafter over 128,256 tokens (random weights), in 256 frequency bands of a random ranking."""
    config = LlamaConfig(vocab_size=LARGE_VOCAB, hidden_size=768, intermediate_size=2048, num_hidden_layers=layers,
                         num_attention_heads=12, num_key_value_heads=12)
    with torch.device("cuda"):
        drafter = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.normal_(0, 0.1)
    ranking = torch.randperm(LARGE_VOCAB, generator=torch.Generator().manual_seed(0)).float()
    clusters = TokenClusters.from_frequencies(ranking, 256, core_size=16 * -(-LARGE_VOCAB // 256))
    return DynaSpecAssistant.from_drafter(drafter, clusters, k_by_position=schedule)


@pytest.mark.parametrize("schedule", [[256], [16], [32, 16, 8]], ids=["full", "routed 1/16", "position-aware"])
@pytest.mark.parametrize("kernel", ["triton", "gather"])
def test_graph_drafts_equal_eager_drafts_on_a_large_vocabulary(kernel, schedule):
    assistant = large_vocabulary_assistant(schedule)
    assistant.drafting.head_kernel = kernel
    engine = GraphDrafter(assistant, max_length=512)
    ids = torch.randint(0, LARGE_VOCAB, (1, 40), generator=torch.Generator().manual_seed(0)).cuda()
    eager_cache = fast_cache = None
    for accepted in (2, 0, 6, 3, 1):
        eager = assistant.draft(ids, 6, past_key_values=eager_cache)
        fast = engine.draft(ids, 6, fast_cache)
        assert torch.equal(eager.sequences, fast.sequences)
        eager_cache, fast_cache = output_cache(eager), output_cache(fast)
        ids = follow((eager_cache, fast_cache), eager.sequences, ids, accepted)


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_triton_head_equals_the_gather_path(batch):
    """At every batch size (a tree's node forward heads several rows, each with its own clusters), 1/16 of 128,256."""
    head = large_vocabulary_assistant([16], layers=1).lm_head
    head.weight.normal_()
    hidden = torch.randn(batch, 768, device="cuda")
    cluster_ids = torch.stack([torch.randperm(256, device="cuda")[:16] for _ in range(batch)])
    outputs = {kernel: head(hidden, cluster_ids, 0, kernel=kernel) for kernel in ("triton", "gather")}
    torch.testing.assert_close(outputs["triton"][0], outputs["gather"][0], atol=1e-3, rtol=1e-4)
    assert torch.equal(outputs["triton"][1], outputs["gather"][1])


SAMPLED_TREE = TreeConfig(num_nodes=8, max_depth=3, width=2)  # the own loop's default is a chain: a tree, named
SAMPLING_LOOPS = {
    "transformers' loop": lambda target, assistant, prompt: target.generate(
        prompt, assistant_model=assistant, do_sample=True, max_new_tokens=3),
    "own loop, tree": lambda target, assistant, prompt: dynaspec_hf.generate(
        target, assistant, prompt, do_sample=True, max_new_tokens=3, tree=SAMPLED_TREE),
    "own loop, chain of 2": lambda target, assistant, prompt: dynaspec_hf.generate(
        target, assistant, prompt, do_sample=True, max_new_tokens=3, tree=TreeConfig.chain(2)),
    "own loop, chain of 2 + runner-ups": lambda target, assistant, prompt: dynaspec_hf.generate(
        target, assistant, prompt, do_sample=True, max_new_tokens=3, tree=TreeConfig.chain(2, runner_ups=2)),
}


@torch.no_grad()
@pytest.mark.parametrize("loop", sorted(SAMPLING_LOOPS))
@pytest.mark.parametrize("setting", ["full", "routed"])
def test_sampling_keeps_the_target_distribution(setting, loop):
    """3,000 draws: the first and second new tokens against the target's exact distributions (chi-square), with
    drafts replayed from CUDA graphs (the tree's expansion samples inside its graph)."""
    target, drafter = (model.cuda() for model in tiny_pair("llama", seed=7, vocab_size=SAMPLING_VOCAB, noise=1.0,
                                                            initializer_range=0.2))
    prompt = PROMPT.cuda()
    first = target(prompt).logits[0, -1].softmax(-1)
    continued = torch.cat([prompt.expand(SAMPLING_VOCAB, -1), torch.arange(SAMPLING_VOCAB, device="cuda")[:, None]],
                          dim=1)
    second = first @ target(continued).logits[:, -1].softmax(-1)
    assistant = make_assistant(drafter, setting, num_clusters=8, core_size=16)
    torch.manual_seed(1234)
    draws = torch.cat([SAMPLING_LOOPS[loop](target, assistant, prompt) for _ in range(3000)])[:, 4:6].cpu()
    assert chi_square_p_value(draws[:, 0], first.cpu()) > 1e-3
    assert chi_square_p_value(draws[:, 1], second.cpu()) > 1e-3
    engine = "tree drafter" if loop == "own loop, tree" else "chain drafter"
    assert kept_engine(assistant, engine) is not None
