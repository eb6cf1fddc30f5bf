"""Clusters, the shortlist head, the full-vocabulary forward and the candidate generator."""

import torch

from dynaspec_hf import DynaSpecCandidateGenerator, TokenClusters
from conftest import VOCAB, make_assistant, tiny_pair


def test_balanced_kmeans_is_deterministic_balanced_and_complete():
    weight = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    a = TokenClusters.from_embeddings(weight, 30, seed=3)
    b = TokenClusters.from_embeddings(weight, 30, seed=3)
    assert torch.equal(a.cluster_token_ids, b.cluster_token_ids)
    assert a.cluster_token_ids.shape == (30, 34)  # ceil(1000 / 30)
    ids = a.cluster_token_ids[a.cluster_token_ids >= 0]
    assert torch.equal(ids.sort().values, torch.arange(1000))
    assert not torch.equal(a.cluster_token_ids, TokenClusters.from_embeddings(weight, 30, seed=4).cluster_token_ids)


def test_kmeans_groups_similar_rows():
    """Rows drawn around 8 well-separated directions must land in 8 pure clusters."""
    generator = torch.Generator().manual_seed(1)
    centers = torch.randn(8, 32, generator=generator) * 10
    labels = torch.arange(8).repeat_interleave(25)
    weight = centers[labels] + torch.randn(200, 32, generator=generator)
    clusters = TokenClusters.from_embeddings(weight, 8, seed=0)
    for row in clusters.cluster_token_ids:
        assert labels[row[row >= 0]].unique().numel() == 1


def test_frequency_clusters_and_core():
    counts = torch.tensor([5, 50, 0, 7, 50, 1, 9])
    clusters = TokenClusters.from_frequencies(counts, num_clusters=3, core_size=2)
    assert clusters.core_token_ids.tolist() == [1, 4]  # ties broken by token id
    assert clusters.cluster_token_ids.tolist() == [[1, 4, 6], [3, 0, 5], [2, -1, -1]]


def test_head_multiplies_only_shortlist_rows():
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed", num_clusters=16, core_size=48)  # 16 clusters of 12 rows
    head = assistant.lm_head
    head.reset_counters()
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    out = assistant.draft(ids, 3)
    assert len(out.scores) == 3
    # schedule: position 0 -> 16 core + 6 clusters, 1 -> 8 core + 4 clusters, 2 -> 0 core + 3 clusters
    assert head.rows_computed == (16 + 6 * 12) + (8 + 4 * 12) + (0 + 3 * 12)
    assert head.rows_computed < 3 * VOCAB and head.calls == 3
    for scores, allowed in zip(out.scores, (16 + 6 * 12, 8 + 4 * 12, 3 * 12)):
        assert torch.isfinite(scores).sum() <= allowed  # q is zero outside the shortlist


def test_core_and_cluster_rows_are_not_double_counted():
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "full", core_size=48).set_schedule(k_by_position=[15], core_by_position=[48])
    logits = assistant.draft(torch.tensor([[1, 2, 3]]), 1).scores[0]
    full = assistant(torch.tensor([[1, 2, 3]])).logits[0, -1]
    finite = torch.isfinite(logits[0])
    assert torch.allclose(logits[0][finite], full[finite].float(), atol=1e-5)


def test_full_vocabulary_forward_equals_drafter():
    _, drafter = tiny_pair("mistral")
    assistant = make_assistant(drafter, "routed")
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(assistant(ids).logits, drafter(ids).logits, atol=1e-5)


def test_full_vocabulary_drafting_equals_drafter_greedy():
    _, drafter = tiny_pair("qwen2")
    assistant = make_assistant(drafter, "full")
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    expected = drafter.generate(ids, do_sample=False, max_new_tokens=10)
    assert torch.equal(assistant.generate(ids, do_sample=False, max_new_tokens=10), expected)


def test_candidate_generator_in_a_verification_loop():
    """A minimal greedy verify loop driven by the generator reproduces the target's greedy output."""
    target, drafter = tiny_pair("llama", seed=2)
    assistant = make_assistant(drafter, "routed")
    generator = DynaSpecCandidateGenerator(assistant, target_config=target.config)
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(5))
    expected = target.generate(ids, do_sample=False, max_new_tokens=20)
    sequence, passes = ids, 0
    while sequence.shape[1] < expected.shape[1]:
        candidates, logits = generator.get_candidates(sequence)
        assert logits.shape == (1, candidates.shape[1] - sequence.shape[1], VOCAB)
        with torch.no_grad():
            choice = target(candidates).logits[0, sequence.shape[1] - 1 :].argmax(-1)
        drafted = candidates[0, sequence.shape[1] :]
        matches = int((drafted == choice[:-1]).long().cumprod(0).sum())
        sequence = torch.cat([sequence, choice[None, : matches + 1]], dim=1)
        generator.update_candidate_strategy(sequence, logits, matches)
        passes += 1
    assert torch.equal(sequence[:, : expected.shape[1]], expected)
    assert passes < 20
