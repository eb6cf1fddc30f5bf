"""A target whose embedding is padded past the drafter's vocabulary (Qwen2.5-7B's 152,064 rows against
Qwen2.5-0.5B's 151,936; same tokenizer): the assistant's logits span the target's rows, the padding is never
drafted, and greedy output stays the target's in both loops; genuinely different vocabularies are refused."""

import pytest
import torch

import dynaspec_hf
from dynaspec_hf import DynaSpecAssistant, TokenClusters, TreeConfig
from dynaspec_hf.calibrate import calibrate
from conftest import VOCAB, make_assistant, random_cases, tiny_pair

PADDED = VOCAB + 8


def padded_pair(seed: int = 0):
    """The target's embedding and head get 8 zero rows (padding: a zero logit never beats the real tokens' best)."""
    target, drafter = tiny_pair("llama", seed=seed)
    target.resize_token_embeddings(PADDED, mean_resizing=False)
    with torch.no_grad():
        target.get_input_embeddings().weight[VOCAB:] = 0
        target.get_output_embeddings().weight[VOCAB:] = 0
    assert target.config.vocab_size == PADDED
    return target, drafter


@pytest.mark.parametrize("loop", ["transformers", "chain", "tree"])
def test_padded_target_greedy_equals_target(loop):
    target, drafter = padded_pair()
    assistant = make_assistant(drafter, "routed", vocab_size=PADDED)
    assert assistant.config.vocab_size == PADDED and assistant.lm_head.vocab_size == VOCAB
    for ids, new_tokens in random_cases(12):
        expected = target.generate(ids, do_sample=False, max_new_tokens=new_tokens)
        assert int(expected.max()) < VOCAB, "the padding rows must not be generated (test premise)"
        if loop == "transformers":
            got = target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=new_tokens)
        else:
            tree = TreeConfig.chain(4) if loop == "chain" else TreeConfig(num_nodes=8, max_depth=4, width=2)
            got = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=new_tokens, tree=tree)
        assert torch.equal(expected, got)


@pytest.mark.parametrize("tail_rank", [0, 2])
def test_padding_rows_are_never_drafted_when_sampling(tail_rank):
    target, drafter = padded_pair(seed=1)
    assistant = make_assistant(drafter, "routed", vocab_size=PADDED, sampling_tail=0.5, sampling_tail_rank=tail_rank)
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(0))
    out = assistant.generate(ids, do_sample=True, max_new_tokens=8, return_dict_in_generate=True, output_scores=True)
    scores = torch.stack(out.scores)
    assert scores.shape[-1] == PADDED and torch.isneginf(scores[..., VOCAB:]).all()
    assert torch.isfinite(scores[..., :VOCAB]).any(-1).all()
    torch.manual_seed(0)
    sampled = dynaspec_hf.generate(target, assistant, ids, do_sample=True, max_new_tokens=20)
    assert sampled.shape == (1, 26) and int(sampled.max()) < VOCAB


def test_calibrating_a_padded_target():
    target, drafter = padded_pair(seed=2)
    sequences = [torch.randint(0, VOCAB, (24,), generator=torch.Generator().manual_seed(i)) for i in range(12)]
    assistant, report = calibrate(target, drafter, sequences, num_clusters=8, router_hidden_size=16, epochs=1,
                                  check_prompts=0, progress=False)
    assert assistant.config.vocab_size == PADDED and report["target"]["vocab_size"] == PADDED
    ids = sequences[0][None, :10]
    assert torch.equal(target.generate(ids, assistant_model=assistant, do_sample=False, max_new_tokens=15),
                       target.generate(ids, do_sample=False, max_new_tokens=15))


def test_different_vocabularies_are_refused_clearly():
    _, drafter = tiny_pair("llama")
    clusters = TokenClusters.from_embeddings(drafter.get_output_embeddings().weight, 8)
    with pytest.raises(ValueError, match="smaller than the drafter's .* do not share a tokenizer"):
        DynaSpecAssistant.from_drafter(drafter, clusters, vocab_size=VOCAB - 10)
    small, _ = tiny_pair("llama", vocab_size=VOCAB - 10)
    with pytest.raises(ValueError, match="do not share a tokenizer"):
        calibrate(small, drafter, [torch.arange(20)], num_clusters=8, progress=False)
