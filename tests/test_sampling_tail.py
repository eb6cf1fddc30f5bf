"""`sampling_tail`: sampled drafts can propose tokens outside the shortlist, at (a weight times) an estimate of
their probability: the router's cluster mass shared by corpus counts, or the logits of a rank-r copy of the head
(`sampling_tail_rank`), and every loop still draws from what it reports (the exactness of sampling with the tail is
checked statistically in test_sampling.py)."""

import pytest
import torch

from dynaspec_hf.eager_draft import DraftOptions
from dynaspec_hf.fast_draft import GraphDrafter
from conftest import SAMPLING_BAND, VOCAB, make_assistant, tiny_pair


def step_inputs(assistant, rows=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden_size = assistant.config.hidden_size
    hidden, previous = torch.randn(2, rows, hidden_size, generator=generator)
    tokens = torch.randint(0, VOCAB, (rows,), generator=generator)
    context = torch.stack([torch.randperm(VOCAB, generator=generator)[:8] for _ in range(rows)])  # distinct
    return hidden, previous, tokens, context


def test_token_shares_split_each_cluster_by_its_counts():
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed")
    head = assistant.lm_head
    counts = torch.arange(VOCAB, 0, -1).double()  # what make_assistant set
    share = head.token_log_share.double().exp()
    cluster = head.index().token_cluster
    totals = torch.zeros(head.num_clusters, dtype=torch.float64).index_add_(0, cluster, share)
    torch.testing.assert_close(totals, torch.ones_like(totals))
    for c in range(head.num_clusters):
        members = cluster == c
        torch.testing.assert_close(share[members], (counts[members] + 1) / (counts[members] + 1).sum())
    with pytest.raises(ValueError, match="non-negative token counts"):
        head.set_token_shares(torch.ones(VOCAB - 1))


@pytest.mark.parametrize("band", ["core, cluster and context", "clusters only"])
@pytest.mark.parametrize("weight", [1.0, 0.3])
def test_tail_gives_tokens_outside_the_shortlist_their_clusters_routed_mass(band, weight):
    """When sampling, a token outside the shortlist gets weight × (its cluster's router probability) × (its share
    of the cluster); the shortlist's tokens share what is left by the drafter's own softmax. Greedy drafting, and
    sampling without the tail, keep -inf outside the shortlist. (Clusters only: a shortlist without padding rows.)"""
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed", sampling_tail=weight)
    if band == "clusters only":
        assistant.set_schedule(temperature_bands=[dict(SAMPLING_BAND, max_temperature=None, k_by_position=[2],
                                                       core_by_position=[0], num_context_tokens=0)])
    hidden, previous, tokens, context = step_inputs(assistant)
    with torch.no_grad():
        sampled = assistant.next_token_logits(hidden, previous, tokens, 0, context_ids=context, temperature=1.0)
        assistant.set_schedule(sampling_tail=0.0)
        plain = assistant.next_token_logits(hidden, previous, tokens, 0, context_ids=context, temperature=1.0)
        assistant.set_schedule(sampling_tail=weight)
        greedy = assistant.next_token_logits(hidden, previous, tokens, 0, context_ids=context, temperature=0.0)
        router = assistant.router(previous, assistant.get_input_embeddings()(tokens)).log_softmax(-1)
    assert assistant.config.shortlist_at(0, 1.0)[3] == weight and assistant.config.shortlist_at(0, 0.0)[3] == 0
    assert torch.isinf(greedy).any() and not torch.isinf(greedy.exp()).any()
    inside = torch.isfinite(plain)  # the band's shortlist (core, routed cluster, context tokens)
    assert inside.sum(-1).lt(VOCAB // 2).all()
    assert torch.isfinite(sampled).all()
    torch.testing.assert_close(sampled.exp().sum(-1), torch.ones(len(tokens)))
    cluster = assistant.lm_head.index().token_cluster
    expected_tail = router[:, cluster] + assistant.lm_head.token_log_share + torch.tensor(weight).log()
    torch.testing.assert_close(sampled[~inside], expected_tail[~inside])
    left = 1 - expected_tail.masked_fill(inside, float("-inf")).exp().sum(-1, keepdim=True)
    expected_inside = (plain.softmax(-1) * left).log()
    torch.testing.assert_close(sampled[inside], expected_inside[inside])


@pytest.mark.parametrize("rank", [0, 4])
def test_graph_drafter_samples_what_eager_drafting_samples_with_the_tail(rank):
    """The static-cache drafter (what CUDA graphs replay) reports the eager drafter's tail and draws the same
    tokens from the same seed, block after block."""
    _, drafter = tiny_pair("llama", seed=12)
    assistant = make_assistant(drafter, "routed", sampling_tail=0.5, sampling_tail_rank=rank)
    engine = GraphDrafter(assistant, max_length=128)
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    eager_cache, static_cache = None, None
    for accepted in (3, 0, 5):
        torch.manual_seed(accepted)
        eager = assistant.draft(ids, 4, past_key_values=eager_cache, do_sample=True, temperature=1.0)
        torch.manual_seed(accepted)
        fast = engine.draft(ids, 4, static_cache, DraftOptions(do_sample=True, temperature=1.0))
        scores = torch.stack(eager.scores)
        assert torch.isfinite(scores).all()  # the tail: every token can be drafted
        assert torch.equal(eager.sequences, fast.sequences)
        torch.testing.assert_close(scores, torch.stack(fast.scores))
        eager_cache, static_cache = eager.past_key_values, fast.past_key_values
        ids = torch.cat([eager.sequences[:, : ids.shape[1] + accepted], torch.tensor([[7]])], dim=1)
        for cache in (eager_cache, static_cache):
            cache.crop(-(cache.get_seq_length() - (ids.shape[1] - 2)))


@pytest.mark.parametrize("weight", [1.0, 0.4])
@pytest.mark.parametrize("rank", ["full", 4])
def test_a_rank_r_tail_is_one_softmax_over_the_rows_and_the_rank_r_heads_logits(rank, weight):
    """With `sampling_tail_rank` r, q is one softmax over the shortlist's exact logits and, outside it, the logits
    of the head's rows projected on their top r right singular vectors plus log(weight). At full rank and weight 1
    that is the drafter's own full-vocabulary distribution, which no estimate from the router's cluster mass gives
    (the test fails if the tail falls back to it)."""
    _, drafter = tiny_pair("llama")
    rank = drafter.config.hidden_size if rank == "full" else rank
    assistant = make_assistant(drafter, "routed", sampling_tail=weight, sampling_tail_rank=rank)
    hidden, previous, tokens, context = step_inputs(assistant)
    head = assistant.lm_head
    with torch.no_grad():
        sampled = assistant.next_token_logits(hidden, previous, tokens, 0, context_ids=context, temperature=1.0)
        plain = assistant.set_schedule(sampling_tail=0.0).next_token_logits(hidden, previous, tokens, 0,
                                                                             context_ids=context, temperature=1.0)
        router = assistant.router(previous, assistant.get_input_embeddings()(tokens)).log_softmax(-1)
        top = torch.linalg.svd(head.weight[head.core_size :].double()).Vh[:rank].float()
        low_rank = assistant.full_vocabulary_logits(hidden @ top.T @ top)  # the rank-r head, in token-id order
        full = assistant.full_vocabulary_logits(hidden)
    inside = torch.isfinite(plain)
    expected = torch.where(inside, plain, low_rank + torch.tensor(weight).log()).log_softmax(-1)
    torch.testing.assert_close(sampled, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sampled.exp().sum(-1), torch.ones(len(tokens)))
    if rank == drafter.config.hidden_size and weight == 1.0:  # the drafter's own distribution
        torch.testing.assert_close(sampled, full.log_softmax(-1), atol=1e-4, rtol=1e-4)
    by_router = router[:, head.index().token_cluster] + head.token_log_share + torch.tensor(weight).log()
    assert not torch.allclose(sampled[~inside], by_router[~inside], atol=1e-2)


def test_a_rank_r_tail_is_saved_with_the_weights(tmp_path):
    from dynaspec_hf import DynaSpecAssistant

    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed", sampling_tail=0.5, sampling_tail_rank=4)
    hidden, previous, tokens, context = step_inputs(assistant)
    assistant.save_pretrained(tmp_path)
    loaded = DynaSpecAssistant.from_pretrained(tmp_path)
    assert loaded.config.sampling_tail_rank == 4
    with torch.no_grad():
        before, after = (model.next_token_logits(hidden, previous, tokens, 0, context_ids=context, temperature=1.0)
                         for model in (assistant, loaded))
    torch.testing.assert_close(before, after)
    assert torch.isfinite(after).all()


@pytest.mark.parametrize("weight", [-0.1, float("inf"), "on"])
def test_a_tail_weight_that_is_not_a_finite_non_negative_number_is_refused(weight):
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed")
    with pytest.raises(ValueError, match="`sampling_tail` must be a finite weight of at least 0"):
        assistant.set_schedule(sampling_tail=weight)


@pytest.mark.parametrize("rank", [-1, 65, 1.5])
def test_a_tail_rank_outside_the_drafters_width_is_refused(rank):
    _, drafter = tiny_pair("llama")  # hidden size 64
    assistant = make_assistant(drafter, "routed")
    with pytest.raises(ValueError, match="`sampling_tail_rank` must be an int from 0"):
        assistant.set_schedule(sampling_tail_rank=rank)
