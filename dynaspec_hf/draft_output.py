"""Model and draft-block outputs under the installed transformers' name for their cache field (`past_key_values`
up to 5.23, `cache` from 5.24, the old name to be removed in 5.40), so the assisted loop finds the drafter's cache
where it looks and reading a body's cache does not go through the deprecated name."""

from transformers.generation import GenerateDecoderOnlyOutput


def cache_field(output_class) -> str:
    return "cache" if "cache" in output_class.__dataclass_fields__ else "past_key_values"


def draft_output(sequences, scores: tuple, cache) -> GenerateDecoderOnlyOutput:
    field = cache_field(GenerateDecoderOnlyOutput)
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, **{field: cache})


def output_cache(output):
    """The KV cache of any transformers `ModelOutput` (a body's, a causal LM's, a draft block's)."""
    return getattr(output, cache_field(type(output)))
