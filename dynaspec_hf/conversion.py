"""Checks for wrapping a causal LM as a `DynaSpecAssistant` (`DynaSpecAssistant.from_drafter`): the drafter's
config with its head's vocabulary, and a probe that the wrapped model drafts from the drafter's own distribution."""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel


def check_drafter(drafter: PreTrainedModel, clusters, vocab_size: int | None):
    """The drafter's output head, once it is known to fit `clusters` and the target's `vocab_size`."""
    head = drafter.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(drafter).__name__} has no output head; pass a causal LM (AutoModelForCausalLM).")
    if clusters.vocab_size != head.weight.shape[0]:
        raise ValueError(
            f"The clusters cover {clusters.vocab_size} tokens but the drafter's head has {head.weight.shape[0]} "
            f"rows."
        )
    if vocab_size is not None and vocab_size < head.weight.shape[0]:
        raise ValueError(
            f"The target's vocabulary ({vocab_size} tokens) is smaller than the drafter's ({head.weight.shape[0]}):"
            f" they do not share a tokenizer, and a DynaSpec assistant needs the target's tokenizer."
        )
    return head


@torch.no_grad()
def check_same_distribution(drafter: PreTrainedModel, assistant) -> None:
    """Raise if the assistant's full-vocabulary distribution is not the drafter's on a probe input: the drafter's
    family transforms its logits in a way the shortlist head does not reproduce (`logit_transform.py`)."""
    device = assistant.lm_head.weight.device
    if device.type == "meta":
        return
    ids = (torch.arange(1, 9, device=device) % assistant.config.drafter_vocab_size)[None]
    was_training = drafter.training
    drafter.eval()
    try:
        theirs = drafter(input_ids=ids, use_cache=False).logits.float().softmax(-1)
        mine = assistant(input_ids=ids, use_cache=False).logits[..., : theirs.shape[-1]].float().softmax(-1)
    finally:
        drafter.train(was_training)
    distance = 0.5 * (theirs - mine).abs().sum(-1).max().item()
    if distance > (1e-3 if assistant.lm_head.weight.dtype == torch.float32 else 5e-2):
        raise ValueError(
            f"A DynaSpec assistant built from this {type(drafter).__name__} would not draft from its distribution "
            f"(total variation {distance:.3f} on a probe input): model type '{drafter.config.model_type}' changes "
            f"its logits after the output head in a way dynaspec-hf does not reproduce (supported: soft-capping by "
            f"`final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`)."
        )


def with_vocab_size(config, vocab_size: int):
    """A copy of `config` whose `vocab_size` is the rows of the model's output head."""
    config = copy.deepcopy(config)
    config.vocab_size = vocab_size
    return config
