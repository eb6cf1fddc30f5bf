"""With do_sample=True the assistant must leave the target's output distribution unchanged.

Each test draws thousands of three-token continuations (two draft positions verified in one pass) of a fixed prompt through
`target.generate(assistant_model=...)` and compares, by a chi-square goodness-of-fit test, the first token with
the target's exact next-token distribution and the second token with its exact marginal. The drafter is far
from the target (total variation about 0.7), so a wrong acceptance rule is detected (see the last test).
"""

import pytest
import torch
import transformers.generation.utils as generation_utils

from conftest import SAMPLING_VOCAB, make_assistant

VOCAB, DRAWS = SAMPLING_VOCAB, 4000
PROMPT = torch.tensor([[3, 17, 5, 9]])


def chi_square_p_value(samples: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Goodness of fit of integer `samples` to `probs`; bins expecting fewer than `min_expected` are pooled."""
    observed = torch.bincount(samples, minlength=probs.numel()).double()
    expected = probs.double() * samples.numel()
    small = expected < min_expected
    observed = torch.cat([observed[~small], observed[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    dof = keep.sum() - 1
    return float(torch.special.gammaincc(dof / 2, statistic / 2))


def exact_distributions(target):
    """The target's first-token distribution and its second-token marginal after PROMPT."""
    with torch.no_grad():
        first = target(PROMPT).logits[0, -1].softmax(-1)
        continued = torch.cat([PROMPT.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], dim=1)
        second = first @ target(continued).logits[:, -1].softmax(-1)
    return first, second


def draw(target, assistant, draws=DRAWS):
    torch.manual_seed(1234)
    out = [target.generate(PROMPT, assistant_model=assistant, do_sample=True, max_new_tokens=3) for _ in range(draws)]
    return torch.cat(out)[:, PROMPT.shape[1] : PROMPT.shape[1] + 2]


@pytest.mark.slow
@pytest.mark.parametrize("setting,tail_rank", [("full", None), ("routed", None), ("routed", 0), ("routed", 2)])
def test_sampling_keeps_target_distribution(sampling_pair, setting, tail_rank):
    """(`tail_rank` not None: drafts may also propose tokens outside the band's shortlist, at the router's cluster
    mass shared by corpus counts (0) or at the logits of a rank-2 copy of the drafter's head.)"""
    target, drafter = sampling_pair
    tail = {} if tail_rank is None else dict(sampling_tail=0.5, sampling_tail_rank=tail_rank)
    assistant = make_assistant(drafter, setting, num_clusters=8, core_size=16, **tail)
    first, second = exact_distributions(target)
    tokens = draw(target, assistant)
    assert tokens.shape == (DRAWS, 2)
    p_first, p_second = chi_square_p_value(tokens[:, 0], first), chi_square_p_value(tokens[:, 1], second)
    print(f"{setting}, tail rank {tail_rank}: p-value first token {p_first:.3g}, second token {p_second:.3g}")
    assert p_first > 1e-3 and p_second > 1e-3


@pytest.mark.slow
def test_broken_acceptance_rule_is_detected(sampling_pair, monkeypatch):
    """Accepting every draft (ignoring p/q) makes the first token follow the drafter: the test must see it."""

    def accept_everything(candidate_input_ids, candidate_logits, candidate_length, new_logits, *args, **kwargs):
        bonus = torch.multinomial(new_logits[0, candidate_length].softmax(-1), 1)[None]
        return torch.cat([candidate_input_ids[:, -candidate_length:], bonus], dim=-1), candidate_length

    monkeypatch.setattr(generation_utils, "_speculative_sampling", accept_everything)
    target, drafter = sampling_pair
    assistant = make_assistant(drafter, "routed", num_clusters=8, core_size=16)
    first, _ = exact_distributions(target)
    tokens = draw(target, assistant, draws=1000)
    p_first = chi_square_p_value(tokens[:, 0], first)
    print(f"broken rule: p-value first token {p_first:.3g}")
    assert p_first < 1e-6
