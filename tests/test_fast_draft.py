"""The static-cache drafter behind the CUDA-graph fast path, run eagerly on the CPU through the stock loop.

On CUDA the same steps are replayed from captured graphs (checked on the GPU by tests/gpu); here
the static cache, its crop-by-length and the position mask must already give the target's exact output.
"""

import pytest
import torch

from dynaspec_hf.engines import kept_engine
from dynaspec_hf.eager_draft import DraftOptions, kept_drafts
from dynaspec_hf.fast_draft import MAX_GRAPH_TOKENS, GraphDrafter, StaticDraftCache, chain_drafter
from dynaspec_hf.measure import count_forward_calls
from conftest import FAMILIES, SETTINGS, VOCAB, make_assistant, rollback_limited, tiny_config, tiny_pair

SLIDING = sorted(family for family, (_, kwargs) in FAMILIES.items() if "sliding_window" in kwargs)


def static_cache_assistant(drafter, setting):
    """An assistant that drafts on its static-cache chain drafter on the CPU too, and that drafter."""
    assistant = make_assistant(drafter, setting)
    assistant.drafting.static_cache_off_cuda = True
    return assistant, chain_drafter(assistant, 128)


def narrow_window_pair(family: str, seed: int):
    """A target whose window (64) covers these cases and a drafter with its weights plus noise, attending within
    8 tokens: drafts outgrow the drafter's window, and the target's output stays checkable on any transformers."""
    from transformers import AutoModelForCausalLM

    target, noisy = tiny_pair(family, seed=seed, sliding_window=64)
    drafter = AutoModelForCausalLM.from_config(tiny_config(family, sliding_window=8)).eval()
    drafter.load_state_dict(noisy.state_dict())
    return target, drafter


@pytest.mark.parametrize("family,setting", [("llama", setting) for setting in sorted(SETTINGS)]
                         + [(family, "routed") for family in SLIDING])
def test_static_cache_drafting_equals_target(family, setting):
    target, drafter = tiny_pair("llama", seed=11) if family == "llama" else narrow_window_pair(family, seed=11)
    assistant, engine = static_cache_assistant(drafter, setting)
    generator = torch.Generator().manual_seed(5)
    passes, produced = 0, 0
    for _ in range(15):
        ids = torch.randint(0, VOCAB, (1, int(torch.randint(1, 40, (1,), generator=generator))), generator=generator)
        new_tokens = int(torch.randint(1, 30, (1,), generator=generator))
        expected = target.generate(ids, do_sample=False, max_new_tokens=new_tokens)
        with count_forward_calls(target) as calls:
            got = target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=new_tokens)
        assert torch.equal(expected, got)
        passes, produced = passes + calls[0], produced + new_tokens
    assert passes < produced
    assert isinstance(engine.active, StaticDraftCache)


@pytest.mark.parametrize("family,setting", [("qwen2", "routed"), ("qwen2", "context")]
                         + [(family, "routed") for family in SLIDING if not rollback_limited(family)])
def test_static_cache_drafts_equal_eager_drafts(family, setting):
    """Block by block, the static-cache drafter proposes the eager drafter's tokens with the same scores (for
    sliding-window families, beyond their 8-token window; with context tokens, as the text grows), and so do its
    greedy steps that read only the shortlist's rows (`keep_scores=False`, the own loop's greedy chains)."""
    _, drafter = tiny_pair(family, seed=12)
    assistant, engine = static_cache_assistant(drafter, setting)
    rows_engine = GraphDrafter(assistant, 128)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    eager_cache, static_cache, rows_cache = None, None, None
    for accepted in (3, 0, 5, 1):
        eager = assistant.draft(ids, 6, past_key_values=eager_cache)
        fast = engine.draft(ids, 6, static_cache)
        rows = rows_engine.draft(ids, 6, rows_cache, DraftOptions(keep_scores=False))
        assert torch.equal(eager.sequences, fast.sequences) and torch.equal(eager.sequences, rows.sequences)
        torch.testing.assert_close(torch.stack(eager.scores), torch.stack(fast.scores))
        assert rows.scores == ()
        eager_cache, static_cache, rows_cache = eager.past_key_values, fast.past_key_values, rows.past_key_values
        ids = torch.cat([eager.sequences[:, : ids.shape[1] + accepted], torch.tensor([[7]])], dim=1)
        for cache in (eager_cache, static_cache, rows_cache):  # what the assisted loop does before the next block
            cache.crop(-(cache.get_seq_length() - (ids.shape[1] - 2)))


def test_context_slots_follow_the_committed_text_block_by_block():
    """The static-cache drafter updates its context slots from the tokens committed since its last block; after
    every block they are the whole text's, also after more new tokens than a step reads (recomputed) and for a
    new text on the same drafter (a longer one, whose length alone would pass for a few new tokens, and a shorter
    one)."""
    _, drafter = tiny_pair("llama", seed=12)
    assistant, engine = static_cache_assistant(drafter, "context")
    generator = torch.Generator().manual_seed(4)
    for text_length in (20, 56, 9):  # the first generation ends at 53 tokens
        ids, cache = torch.randint(0, VOCAB, (1, text_length), generator=generator), None
        for committed in (1, 4, 7, MAX_GRAPH_TOKENS + 3, 2):
            out = engine.draft(ids, 3, cache)
            assert torch.equal(engine.context, assistant.context_tokens(ids, size=engine.context.shape[1]))
            cache = out.past_key_values
            ids = torch.cat([ids, torch.randint(0, VOCAB, (1, committed), generator=generator)], dim=1)
            cache.crop(-(cache.get_seq_length() - (ids.shape[1] - 2)))


def test_compiled_steps_draft_the_eager_steps_drafts():
    """Through inductor: a chain drafter whose body and head are compiled proposes, block by block, the eager one's
    tokens, from the shortlist's rows (greedy) and from full-vocabulary scores (the same scores, to rounding)."""
    _, drafter = tiny_pair("llama", seed=12)
    assistant = make_assistant(drafter, "context")
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    engines = GraphDrafter(assistant, 128), GraphDrafter(assistant, 128, compile_options={})
    caches = [None, None]
    for accepted, keep_scores in ((3, False), (0, True), (5, False), (1, True)):
        out = [engine.draft(ids, 4, cache, DraftOptions(keep_scores=keep_scores))
               for engine, cache in zip(engines, caches)]
        assert torch.equal(out[0].sequences, out[1].sequences)
        if keep_scores:
            torch.testing.assert_close(torch.stack(out[0].scores), torch.stack(out[1].scores))
        caches = [o.past_key_values for o in out]
        ids = torch.cat([out[0].sequences[:, : ids.shape[1] + accepted], torch.tensor([[7]])], dim=1)
        for cache in caches:
            cache.crop(-(cache.get_seq_length() - (ids.shape[1] - 2)))


def test_compiled_heads_of_many_assistants_keep_drafting():
    """Each assistant and shortlist shape adds a compiled entry to the one head function; past dynamo's default
    limit of 8 (a prompt's step calls the head outside any keyed step) drafting must go on, not fail."""
    compiles = []
    backend = lambda graph_module, example_inputs: compiles.append(1) or graph_module.forward  # noqa: E731
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    for core_size in range(16, 28):
        _, drafter = tiny_pair("llama", seed=core_size)
        engine = GraphDrafter(make_assistant(drafter, "routed", core_size=core_size), 64,
                              compile_options={"backend": backend})
        out = engine.draft(ids, 3, None, DraftOptions(keep_scores=False))
        assert out.sequences.shape[1] > ids.shape[1]
    assert len(compiles) > 12


@pytest.mark.parametrize("family", SLIDING)
def test_static_cache_keeps_the_drafters_sliding_window(family):
    """Full-vocabulary drafts on the static cache are the drafter's own greedy tokens and logits, recomputed without
    a cache, across rollbacks and beyond the 8-token window (interleaved local/global layers for Gemma)."""
    _, drafter = tiny_pair(family, seed=16)
    assistant, engine = static_cache_assistant(drafter, "full")
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(4))
    cache = None
    for accepted in (2, 0, 5):
        fast = engine.draft(ids, 6, cache)
        sequence = ids
        for score in fast.scores:
            with torch.no_grad():
                logits = drafter(sequence, use_cache=False).logits[:, -1]
            torch.testing.assert_close(score, logits, atol=1e-4, rtol=1e-4)
            sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(fast.sequences, sequence)
        cache = fast.past_key_values
        ids = torch.cat([sequence[:, : ids.shape[1] + accepted], torch.tensor([[7]])], dim=1)
        cache.crop(-(cache.get_seq_length() - (ids.shape[1] - 2)))


def test_stopping_rules_match_eager():
    _, drafter = tiny_pair("llama", seed=13)
    assistant, engine = static_cache_assistant(drafter, "full")
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(1))
    free = assistant.draft(ids, 6).sequences[0, 9:].tolist()
    for options in (dict(eos_token_id=[free[2]]), dict(eos_token_id=[free[2]], min_new_tokens=5),
                    dict(confidence_threshold=0.5)):
        eager = assistant.draft(ids, 6, **options)
        fast = engine.draft(ids, 6, None, DraftOptions(**options))
        assert torch.equal(eager.sequences, fast.sequences), options


def test_one_stopping_rule_for_every_row():
    """A block stops after the first position, from `min_new_tokens` on, where every row drafted an EOS or some
    row's token was below the confidence threshold."""
    tokens = torch.tensor([[4, 2, 7, 2], [2, 2, 7, 3]])
    uniform = [torch.zeros(2, 8)] * 4  # every token at probability 1/8
    assert kept_drafts(tokens, uniform, DraftOptions()) == 4
    assert kept_drafts(tokens, uniform, DraftOptions(eos_token_id=[2])) == 2
    assert kept_drafts(tokens, uniform, DraftOptions(eos_token_id=[2], min_new_tokens=3)) == 4
    assert kept_drafts(tokens, uniform, DraftOptions(confidence_threshold=0.2)) == 1
    assert kept_drafts(tokens, uniform, DraftOptions(confidence_threshold=0.1)) == 4


def test_sampling_through_the_stock_loop_uses_the_static_cache():
    """The assisted loop passes its logits processors as a plain list; sampling must draft with them."""
    target, drafter = tiny_pair("llama", seed=14)
    assistant, engine = static_cache_assistant(drafter, "routed")
    ids = torch.randint(0, VOCAB, (1, 7), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    out = target.generate(ids, assistant_model=assistant, do_sample=True, temperature=0.7, top_k=20, max_new_tokens=12)
    assert out.shape == (1, 19) and engine.active is not None


@pytest.mark.parametrize("processors", ["temperature + top-k", "repetition penalty"])
def test_sampled_steps_draw_what_eager_drafting_draws(processors, monkeypatch):
    """A sampled step whose processors read only the scores draws inside its (graph-replayed) step; one whose
    processors read the text (a repetition penalty) draws after it, through them: either way the static-cache
    drafter draws the eager drafter's tokens from the same seed, from the same processed logits."""
    from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

    _, drafter = tiny_pair("llama", seed=16)
    assistant = make_assistant(drafter, "routed")
    engine = GraphDrafter(assistant, max_length=128)
    chosen = {"temperature + top-k": [TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)],
              "repetition penalty": [RepetitionPenaltyLogitsProcessor(1.5)]}[processors]
    in_step = []
    sampled_step = engine.sampled_draft_step
    monkeypatch.setattr(engine, "sampled_draft_step", lambda *args: in_step.append(1) or sampled_step(*args))
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    for seed in range(3):
        options = dict(do_sample=True, temperature=0.7, logits_processor=LogitsProcessorList(chosen))
        torch.manual_seed(seed)
        eager = assistant.draft(ids, 4, **options)
        torch.manual_seed(seed)
        fast = engine.draft(ids, 4, None, DraftOptions(**options))
        assert torch.equal(eager.sequences, fast.sequences)
        torch.testing.assert_close(torch.stack(eager.scores), torch.stack(fast.scores))
    assert len(in_step) == (12 if processors == "temperature + top-k" else 0)


def test_static_draft_cache_crop_counts_like_dynamic_cache():
    cache = StaticDraftCache(drafter=None)
    cache.length = 10
    cache.crop(-3)
    assert cache.get_seq_length() == 7
    cache.crop(5)
    assert cache.get_seq_length() == 5
    cache.crop(-9)
    assert cache.get_seq_length() == 0


def test_candidate_generator_drafts_through_the_fast_path():
    from dynaspec_hf import DynaSpecCandidateGenerator

    _, drafter = tiny_pair("llama", seed=15)
    assistant, engine = static_cache_assistant(drafter, "routed")
    ids = torch.randint(0, VOCAB, (1, 11), generator=torch.Generator().manual_seed(3))
    candidates, logits = DynaSpecCandidateGenerator(assistant).get_candidates(ids)
    assert engine.active is not None
    eager = assistant.draft(ids, candidates.shape[1] - ids.shape[1])
    assert torch.equal(candidates, eager.sequences)
    torch.testing.assert_close(logits, torch.stack(eager.scores, dim=1))


def test_new_schedule_frees_the_old_graphs_at_once():
    """Setting the same schedule keeps the captured graphs. Graphs left to the garbage collector can be freed during a later capture, which invalidates that capture
    (seen on the H100: 'operation not permitted when stream is capturing'); a schedule change frees them first."""
    _, drafter = tiny_pair("llama", seed=14)
    assistant = make_assistant(drafter, "routed")
    engine = chain_drafter(assistant, 64)
    freed = []

    class Graph:
        def reset(self):
            freed.append(self)

    engine.graphs.update({(1, 0, 0): Graph(), (2, 0, 0): None, (1, 1, 1): Graph()})
    assistant.set_schedule(k_by_position=list(assistant.config.k_by_position))  # the same schedule keeps them
    assert freed == [] and kept_engine(assistant, "chain drafter") is engine and len(engine.graphs) == 3
    assistant.set_schedule(k_by_position=[2])
    assert len(freed) == 2 and engine.graphs == {}
    assert kept_engine(assistant, "chain drafter") is None
