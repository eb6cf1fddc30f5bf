"""How generation options become the drafter's sampling: the temperature that picks a schedule, and the logits
processors a draft is sampled through (the target's own, as transformers' assisted loop passes them)."""

from __future__ import annotations

from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# processors that read the scores alone (not the text so far), so a draft step may apply them inside its graph
SCORE_ONLY_PROCESSORS = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)


def drafting_temperature(generation_config: GenerationConfig) -> float:
    """The temperature that picks the schedule: 0 for greedy decoding, else the sampling temperature."""
    if not generation_config.do_sample:
        return 0.0
    return 1.0 if generation_config.temperature is None else float(generation_config.temperature)


def sampling_processors(generation_config: GenerationConfig) -> LogitsProcessorList:
    """The temperature, top-k and top-p warpers `generation_config` asks for, in transformers' order."""
    processors = LogitsProcessorList()
    if generation_config.temperature is not None and generation_config.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(generation_config.temperature))
    if generation_config.top_k:
        processors.append(TopKLogitsWarper(generation_config.top_k))
    if generation_config.top_p is not None and generation_config.top_p < 1.0:
        processors.append(TopPLogitsWarper(generation_config.top_p))
    return processors


def reads_only_scores(processors) -> bool:
    """Whether every one of `processors` reads only the scores (`SCORE_ONLY_PROCESSORS`), not the text so far."""
    return all(type(processor) in SCORE_ONLY_PROCESSORS for processor in processors or ())


def processors_key(processors) -> tuple:
    """A hashable description of sampling processors (transformers' warpers keep their settings as plain
    attributes), so a graph that applies them is reused only by processors with the same settings."""
    return tuple((type(p).__name__, tuple(sorted((name, value) for name, value in vars(p).items()
                                                 if isinstance(value, (bool, int, float, str)))))
                 for p in processors or ())
