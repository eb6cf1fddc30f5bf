"""A guard against the next transformers release: per family, the package's draft path drafts what transformers'
own assisted generation drafts with the same drafter (the assistant's full-vocabulary head is the drafter's own).

Prompts outgrow the sliding window (8 tokens) of the families that have one, and every generation runs many
rounds with rollbacks, so a change of the cache or mask contract upstream shows here first: the drafts differ, the
rounds (target forward passes) differ, or the output stops being the target's."""

import pytest
import torch

from dynaspec_hf.measure import count_forward_calls
from conftest import FAMILIES, VOCAB, make_assistant, rollback_limited, tiny_pair

BLOCK = 4


def assisted(target, ids, assistant, new_tokens):
    with count_forward_calls(target) as calls:
        out = target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=new_tokens)
    return out, calls[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_draft_path_matches_transformers_assisted_generation(family):
    if rollback_limited(family):
        pytest.skip("this transformers cannot roll a sliding-window cache back; the package refuses such drafts "
                    "(tested in test_exactness.py)")
    target, drafter = tiny_pair(family, seed=5, noise=0.2)
    drafter.generation_config.num_assistant_tokens = BLOCK
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    drafter.generation_config.assistant_confidence_threshold = 0.0
    assistant = make_assistant(drafter, "full")
    assistant.generation_config.num_assistant_tokens = BLOCK
    generator = torch.Generator().manual_seed(11)
    rounds, partial = [], 0
    for length in (3, 12, 21, 30):
        ids = torch.randint(0, VOCAB, (1, length), generator=generator)
        expected = target.generate(ids, do_sample=False, max_new_tokens=40)
        theirs, their_rounds = assisted(target, ids, drafter, 40)
        ours, our_rounds = assisted(target, ids, assistant, 40)
        assert torch.equal(theirs, expected) and torch.equal(ours, expected), f"prompt of {length} tokens"
        rounds.append((our_rounds, their_rounds))
        partial += 1 < our_rounds < 40
    assert all(ours == theirs for ours, theirs in rounds), f"target passes (ours, transformers') {rounds}"
    assert partial, "no generation mixed accepted and rejected drafts: the test would not exercise rollbacks"
