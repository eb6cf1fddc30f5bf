"""`custom_generate` entry point: `target.generate(..., custom_generate=<this repo>, trust_remote_code=True)`.

transformers calls `generate(model=target, **generate_arguments)`; the work is done by `dynaspec_hf.generate`, the
package's own loop, drafted by the DynaSpec assistant passed as `assistant_model` (a chain of 6 drafts, or the
chain, DySpec token tree or automatic shape `tree` asks for).
"""

import torch

from dynaspec_hf.generation import TreeConfig
from dynaspec_hf.generation import generate as tree_generate

# `GenerationMixin.generate` arguments this loop has no use for; a value other than None is refused.
_UNUSED = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "streamer",
           "negative_prompt_ids", "negative_prompt_attention_mask", "use_model_defaults")


def generate(model, inputs=None, generation_config=None, assistant_model=None, tree=None, **kwargs) -> torch.LongTensor:
    """Speculative decoding with `assistant_model` (a `DynaSpecAssistant`); `tree` is a `TreeConfig` or dict."""
    given = sorted(name for name in _UNUSED if kwargs.pop(name, None) is not None)
    if given:
        raise ValueError(f"The DynaSpec tree loop does not support {given}.")
    if assistant_model is None:
        raise ValueError("Pass the drafter: target.generate(..., assistant_model=DynaSpecAssistant.from_pretrained(...)).")
    input_ids = inputs if inputs is not None else kwargs.pop("input_ids")
    if isinstance(tree, dict):
        tree = TreeConfig(**tree)
    return tree_generate(model, assistant_model, input_ids, generation_config=generation_config, tree=tree, **kwargs)
