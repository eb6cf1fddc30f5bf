import copy

import pytest
import torch
from transformers import LlamaConfig, MistralConfig, Qwen2Config

from dynaspec_hf import DynaSpecAssistant, TokenClusters

VOCAB = 192
SAMPLING_VOCAB = 32  # vocabulary of the pair the sampling tests draw from

FAMILIES = {
    "llama": LlamaConfig,
    "qwen2": Qwen2Config,
    "mistral": MistralConfig,
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
    kwargs.update(overrides)
    return FAMILIES[family](**kwargs)


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


def random_cases(count: int, seed: int = 1, max_length: int = 30, max_new_tokens: int = 25):
    """`count` seeded (prompt ids [1, L], number of new tokens) pairs for exactness tests."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        length = int(torch.randint(1, max_length, (1,), generator=generator))
        new_tokens = int(torch.randint(1, max_new_tokens, (1,), generator=generator))
        yield torch.randint(0, VOCAB, (1, length), generator=generator), new_tokens


SETTINGS = {
    "full": dict(),
    "static": dict(k_by_position=[0], core_by_position=[48]),
    "routed": dict(k_by_position=[6, 4, 3], core_by_position=[16, 8, 0]),
}


def make_assistant(drafter, setting: str, num_clusters: int = 16, core_size: int = 48, seed: int = 0):
    clusters = TokenClusters.from_embeddings(drafter.get_output_embeddings().weight, num_clusters, seed=seed)
    counts = torch.arange(drafter.config.vocab_size, 0, -1).float()  # a fixed, known frequency ranking
    clusters = clusters.with_core(counts, core_size)
    torch.manual_seed(seed)
    assistant = DynaSpecAssistant.from_drafter(drafter, clusters, router_hidden_size=32, **SETTINGS[setting])
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
