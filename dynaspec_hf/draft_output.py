"""A draft block's output, under the installed transformers' name for its cache field (`past_key_values` up to
5.23, `cache` from 5.24), so the assisted loop finds the drafter's cache where it looks."""

from transformers.generation import GenerateDecoderOnlyOutput

CACHE_FIELD = "cache" if "cache" in GenerateDecoderOnlyOutput.__dataclass_fields__ else "past_key_values"


def draft_output(sequences, scores: tuple, cache) -> GenerateDecoderOnlyOutput:
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=scores, **{CACHE_FIELD: cache})


def output_cache(output: GenerateDecoderOnlyOutput):
    return getattr(output, CACHE_FIELD)
