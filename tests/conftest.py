import copy
import os

import pytest
import torch
from transformers import (CohereConfig, Gemma2Config, Gemma3TextConfig, GraniteConfig, LlamaConfig, MistralConfig,
                          Olmo2Config, Phi3Config, Qwen2Config, Qwen3Config)

from dynaspec_hf import DynaSpecAssistant, RoundCosts, TokenClusters

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker (tiny models gain nothing from two)
    torch.set_num_threads(1)

VOCAB = 192
SAMPLING_VOCAB = 32  # vocabulary of the pair the sampling tests draw from

LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
FAMILIES = {  # name: (config class, what makes the family itself at tiny size)
    "llama": (LlamaConfig, {}),
    "llama3-tied": (LlamaConfig, dict(tie_word_embeddings=True, rope_scaling=LLAMA3_ROPE)),
    "qwen2": (Qwen2Config, {}),
    "qwen2-tied": (Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3": (Qwen3Config, dict(head_dim=16)),
    "mistral": (MistralConfig, dict(sliding_window=8)),
    "gemma2": (Gemma2Config, dict(head_dim=16, sliding_window=8, final_logit_softcapping=3.0)),
    "gemma3-text": (Gemma3TextConfig, dict(head_dim=16, sliding_window=8, final_logit_softcapping=3.0)),
    "phi3": (Phi3Config, {}),
    "cohere": (CohereConfig, dict(logit_scale=4.0)),
    "granite": (GraniteConfig, dict(logits_scaling=0.25)),
    "olmo2": (Olmo2Config, {}),
}


def tiny_config(family: str, vocab_size: int = VOCAB, hidden_size: int = 64, layers: int = 2, **overrides):
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    config_class, family_kwargs = FAMILIES[family]
    kwargs.update(family_kwargs)
    kwargs.update(overrides)
    return config_class(**kwargs)


def rollback_limited(family: str) -> bool:
    """A sliding-window family on a transformers whose sliding caches cannot roll a draft block back (5.17): the
    stock loop must refuse drafts that outgrow the window, with a clear error."""
    from dynaspec_hf.compat import sliding_layers_roll_back

    return "sliding_window" in FAMILIES[family][1] and not sliding_layers_roll_back()


def tiny_pair(family: str, seed: int = 0, noise: float = 0.5, vocab_size: int = VOCAB, **overrides):
    """A random target and a drafter that is the target plus noise, so drafts are often but not always right."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, **overrides)).eval()
    drafter = copy.deepcopy(target)
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.add_(noise * parameter.std() * torch.randn_like(parameter))
    return target, drafter


# the round costs 580d463's run measured for DynaSpec 1/16 on an H100 in bf16, greedy (its history folder)
BF16_H100 = RoundCosts(verify_fixed=1.27e-3, verify_per_token=5.5e-6, chain_fixed=6.7e-4, chain_step=2.66e-4,
                       tree_fixed=6.18e-4, tree_forward=4.52e-4, runner_ups=2.65e-4)


def close_and_far_drafters(seed: int = 3):
    """A target, an assistant over a close noisy copy of it, and by name the weights of that copy and of a far one:
    loading either into the assistant's drafter (`load_weights`) changes how often the target takes the drafter's
    first choice, as a change of text does."""
    target, close = tiny_pair("llama", noise=0.02, seed=seed)
    far = tiny_pair("llama", noise=0.3, seed=seed)[1]
    weights = {name: [parameter.detach().clone() for parameter in model.parameters()]
               for name, model in (("close", close), ("far", far))}
    return target, make_assistant(close, "full"), weights


def load_weights(model, weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for parameter, weight in zip(model.parameters(), weights):
            parameter.copy_(weight)


def random_cases(count: int, seed: int = 1, max_length: int = 30, max_new_tokens: int = 25):
    """`count` seeded (prompt ids [1, L], number of new tokens) pairs for exactness tests."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        length = int(torch.randint(1, max_length, (1,), generator=generator))
        new_tokens = int(torch.randint(1, max_new_tokens, (1,), generator=generator))
        yield torch.randint(0, VOCAB, (1, length), generator=generator), new_tokens


SAMPLING_BAND = dict(k_by_position=[1], core_by_position=[4], num_context_tokens=8)
SETTINGS = {
    "full": dict(),
    "static": dict(k_by_position=[0], core_by_position=[48]),
    # sampling drafts with its own band (the sampling tests check the target's distribution through it)
    "routed": dict(k_by_position=[6, 4, 3], core_by_position=[16, 8, 0],
                   temperature_bands=[dict(max_temperature=None, **SAMPLING_BAND)]),
    "context": dict(k_by_position=[3, 2], core_by_position=[8, 0], num_context_tokens=16),
}


# (family, setting) cases of the end-to-end exactness tests: every setting on Llama, and every family with the
# routed shortlist (its logit transform, cache and attention through the shortlist path) and, where a test asks,
# with the full-vocabulary head; the full cross product repeated the same paths and did not fit CI's time
FAMILY_CASES = [("llama", setting) for setting in sorted(SETTINGS)] + [
    (family, "routed") for family in sorted(FAMILIES) if family != "llama"]
FAMILY_CASES_WITH_FULL_HEAD = FAMILY_CASES + [(family, "full") for family in sorted(FAMILIES) if family != "llama"]


def make_assistant(drafter, setting: str, num_clusters: int = 16, core_size: int = 48, seed: int = 0, **options):
    """An assistant of `drafter` with a fresh router and the schedule `SETTINGS[setting]` (`options`: more
    `from_drafter` arguments, e.g. `sampling_tail=0.5`)."""
    clusters = TokenClusters.from_embeddings(drafter.get_output_embeddings().weight, num_clusters, seed=seed)
    counts = torch.arange(drafter.config.vocab_size, 0, -1).float()  # a fixed, known frequency ranking
    clusters = clusters.with_core(counts, core_size)
    torch.manual_seed(seed)
    assistant = DynaSpecAssistant.from_drafter(drafter, clusters, router_hidden_size=32,
                                               **SETTINGS[setting], **options)
    assistant.lm_head.set_token_shares(counts)
    assistant.generation_config.num_assistant_tokens = 4
    assistant.generation_config.assistant_confidence_threshold = 0.0
    return assistant


@pytest.fixture(scope="session")
def sampling_pair():
    """A 32-token pair whose drafter is far from the target (total variation ~0.7): a wrong acceptance rule shows."""
    return tiny_pair("llama", seed=7, vocab_size=SAMPLING_VOCAB, noise=1.0, initializer_range=0.2)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    return request.param
