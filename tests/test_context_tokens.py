"""Context tokens: the shortlist's slots for the most recent distinct tokens of the text so far."""

import pytest
import torch

from dynaspec_hf.context_tokens import recent_distinct_tokens
from conftest import VOCAB, make_assistant, tiny_pair


def reference_recent(ids: list[int], size: int) -> list[int]:
    out = []
    for token in reversed(ids):
        if token >= 0 and token not in out:
            out.append(token)
    return (out + [-1] * size)[:size]


def test_recent_distinct_tokens_are_the_latest_distinct_ones_most_recent_first():
    ids = torch.tensor([[5, 3, 5, 7, -1, 2], [-1, -1, -1, -1, -1, -1]])
    assert recent_distinct_tokens(ids, 4, 10).tolist() == [[2, 7, 5, 3], [-1] * 4]
    assert recent_distinct_tokens(ids, 6, 10).tolist() == [[2, 7, 5, 3, -1, -1], [-1] * 6]
    assert recent_distinct_tokens(ids, 12, 10).shape == (2, 12)  # more slots than the vocabulary: padded
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids = torch.randint(-1, 30, (3, 40), generator=generator)
        got = recent_distinct_tokens(ids, 16, 30).tolist()
        assert got == [reference_recent(row, 16) for row in ids.tolist()]


def test_recent_tokens_updated_by_new_ones_equal_those_of_the_whole_text():
    """`context_tokens(new, recent=context_tokens(old))` is `context_tokens(old + new)`, also when `new` starts by
    re-reading the end of `old`, as a drafter's prefix does."""
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "context")
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        text = torch.randint(0, 20, (1, 50), generator=generator)
        cut, reread = (int(v) for v in torch.randint(1, 45, (2,), generator=generator))
        reread = min(reread % 3, cut)
        recent = assistant.context_tokens(text[:, :cut])
        updated = assistant.context_tokens(text[:, cut - reread :], recent=recent)
        assert torch.equal(updated, assistant.context_tokens(text)), (cut, reread)


def test_shortlist_is_the_union_of_core_clusters_and_context():
    """Each draft position scores exactly core prefix ∪ routed clusters ∪ context tokens, once each, with the
    drafter's own logits; a context token outside the other two parts is what lets a copy be drafted."""
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "context")  # core 8 + 3 clusters + 16 context tokens, then 0 + 2 + 16
    head, config = assistant.lm_head, assistant.config
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(1))
    head.reset_counters()
    out = assistant.draft(ids, 2)
    assert head.rows_computed == (8 + 3 * 12 + 16) + (0 + 2 * 12 + 16)
    context = set(reference_recent(ids[0].tolist(), 16))
    states = assistant.drafter(out.sequences).last_hidden_state[0]
    full = assistant.full_vocabulary_logits(states)
    added_by_context = 0
    for position, scores in enumerate(out.scores):
        at = ids.shape[1] - 1 + position
        core, k, slots, _ = config.shortlist_at(position)
        clusters = assistant.routing(states[at - 1][None], out.sequences[:, at], k)[0][0]
        routed = set(head.cluster_token_ids[clusters].flatten().tolist()) - {-1}
        expected = set(head.core_token_ids[:core].tolist()) | routed | context
        finite = torch.isfinite(scores[0])
        assert set(finite.nonzero()[:, 0].tolist()) == expected
        torch.testing.assert_close(scores[0][finite], full[at][finite], atol=1e-5, rtol=1e-5)
        added_by_context += len(context - routed - set(head.core_token_ids[:core].tolist()))
    assert added_by_context > 0  # the context adds tokens the other parts miss


def test_context_slots_are_validated():
    from dynaspec_hf import DynaSpecConfig
    from conftest import tiny_config

    with pytest.raises(ValueError, match="num_context_tokens"):
        DynaSpecConfig(tiny_config("llama"), num_clusters=16, num_context_tokens=-1).validate_schedule()
    # context tokens alone are a shortlist; nothing at all is not
    DynaSpecConfig(tiny_config("llama"), num_clusters=16, k_by_position=[0], num_context_tokens=4).validate_schedule()
    with pytest.raises(ValueError, match="empty shortlist"):
        DynaSpecConfig(tiny_config("llama"), num_clusters=16, k_by_position=[0]).validate_schedule()
    _, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "context")
    hidden = torch.zeros(1, assistant.config.hidden_size)
    with pytest.raises(ValueError, match="context_ids"):
        assistant.next_token_logits(hidden, hidden, torch.tensor([1]), 0)
