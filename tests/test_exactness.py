"""Greedy output with the assistant must equal the target's own greedy output, token for token."""

import logging

import pytest
import torch

import dynaspec_hf
from dynaspec_hf.measure import count_forward_calls, gap_at_first_difference
from conftest import FAMILY_CASES_WITH_FULL_HEAD, SETTINGS, VOCAB, make_assistant, random_cases, rollback_limited, tiny_pair

PROMPTS = 50


@pytest.mark.parametrize("family,setting", FAMILY_CASES_WITH_FULL_HEAD)
def test_greedy_equals_target(family, setting):
    target, drafter = tiny_pair(family)
    assistant = make_assistant(drafter, setting)
    mismatches, accepted_any, refused = [], False, 0
    for i, (ids, new_tokens) in enumerate(random_cases(PROMPTS)):
        expected = target.generate(ids, do_sample=False, max_new_tokens=new_tokens)
        with count_forward_calls(target) as calls:
            try:
                got = target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=new_tokens)
            except ValueError as error:  # only where the installed transformers cannot roll a sliding cache back
                if not (rollback_limited(family) and "sliding window" in str(error)):
                    raise
                refused += 1
                continue
        if not torch.equal(expected, got):
            mismatches.append((i, ids.shape[1], new_tokens))
        accepted_any |= calls[0] < new_tokens
    assert not mismatches, f"{len(mismatches)}/{PROMPTS} prompts differ: {mismatches[:5]}"
    # where most prompts outgrow the window and are refused, the few short ones may accept nothing
    assert accepted_any or refused, "no draft token was ever accepted: the test would not exercise the accept path"


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_greedy_stops_at_eos_like_target(setting):
    target, drafter = tiny_pair("llama", seed=3)
    assistant = make_assistant(drafter, setting)
    generator = torch.Generator().manual_seed(2)
    for _ in range(10):
        ids = torch.randint(0, VOCAB, (1, 8), generator=generator)
        free = target.generate(ids, do_sample=False, max_new_tokens=20)
        eos = int(free[0, ids.shape[1] + int(torch.randint(0, 20, (1,), generator=generator))])
        expected = target.generate(ids, do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=eos)
        got = target.generate(
            ids, assistant_model=assistant, do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=eos
        )
        assert torch.equal(expected, got)
        assert got[0, -1] == eos


@pytest.mark.parametrize("new_tokens", [1, 2, 3, 5])
def test_greedy_at_max_length_edges(new_tokens):
    target, drafter = tiny_pair("qwen2", seed=4)
    assistant = make_assistant(drafter, "routed")
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(new_tokens))
    expected = target.generate(ids, do_sample=False, max_length=6 + new_tokens)
    got = target.generate(ids, assistant_model=assistant, do_sample=False, max_length=6 + new_tokens)
    assert torch.equal(expected, got) and got.shape[1] == 6 + new_tokens


def test_perfect_drafter_is_fully_accepted():
    """With the target's own weights as drafter over the full vocabulary, every draft block must be accepted.

    This fails if drafting mishandles its cache or positions (drafts would then be wrong and rejected).
    """
    target, _ = tiny_pair("llama", seed=5)
    assistant = make_assistant(target, "full")
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    block = assistant.generation_config.num_assistant_tokens
    with count_forward_calls(target) as calls:
        got = target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=30)
    assert torch.equal(got, target.generate(ids, do_sample=False, max_new_tokens=30))
    assert calls[0] == -(-30 // (block + 1)), f"{calls[0]} target passes for 30 tokens in blocks of {block}"


def test_neither_loop_uses_the_deprecated_cache_name(monkeypatch):
    """Newer transformers (5.24) rename `past_key_values` to `cache` and warn on the old name, to be removed in
    5.40: the assisted loop and the own loop must pass and read caches by the installed version's name."""
    messages = []
    monkeypatch.setattr(logging.Logger, "warning_once", lambda self, message, *args, **kwargs: messages.append(message))
    target, drafter = tiny_pair("llama")
    assistant = make_assistant(drafter, "routed")
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(0))
    target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=12)
    for tree in (dynaspec_hf.TreeConfig(), dynaspec_hf.TreeConfig.chain(4)):
        dynaspec_hf.generate(target, assistant, ids, max_new_tokens=12, tree=tree)
    assert not [m for m in messages if "past_key_values" in str(m)], messages


def test_gap_at_first_difference_finds_the_position_and_the_targets_top_two_gap():
    """What the GPU exactness test and the benchmark read a mismatch by: where two outputs part, and how close the
    target's top two were there (a near-tie, or a wrong token)."""
    target, _ = tiny_pair("llama")
    ids = torch.randint(0, VOCAB, (1, 5), generator=torch.Generator().manual_seed(3))
    plain = target.generate(ids, do_sample=False, max_new_tokens=8)
    assert gap_at_first_difference(target, plain, plain.clone()) is None
    wrong = plain.clone()
    wrong[0, 9] = (plain[0, 9] + 1) % VOCAB
    with torch.no_grad():
        top = target(plain[:, :9]).logits[0, -1].topk(2).values
    assert gap_at_first_difference(target, plain, wrong) == (9, pytest.approx(float(top[0] - top[1])))
    assert gap_at_first_difference(target, plain[0], plain[0, :11])[0] == 11  # one output stopped early
