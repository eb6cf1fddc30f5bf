"""Hub files: a saved assistant's model card, and where the `custom_generate` tree-decoding folder lives."""

from __future__ import annotations

import string
from pathlib import Path

from huggingface_hub import ModelCard

TEMPLATE_NAME = "dynaspec_assistant.md"


def _template() -> str | None:
    try:
        from importlib.resources import files

        return (files("dynaspec_hf.hub_cards") / TEMPLATE_NAME).read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return None  # e.g. a copy of this file loaded with trust_remote_code, without the package


def render_model_card(model, report: str = "") -> str | None:
    """The card text for `model` (a `DynaSpecAssistant`), or None when the template is not installed."""
    template = _template()
    if template is None:
        return None
    config = model.config
    positions = max(len(config.k_by_position), len(config.core_by_position))
    rows = []
    for position in range(positions):
        core, k, context, _ = config.shortlist_at(position)
        rows.append(core + k * config.cluster_size + context)
    return string.Template(template).safe_substitute(
        drafter_type=config.drafter_config.model_type,
        drafter_layers=config.drafter_config.num_hidden_layers,
        hidden_size=config.hidden_size,
        vocab_size=config.vocab_size,
        num_clusters=config.num_clusters,
        cluster_size=config.cluster_size,
        core_size=config.core_size,
        router_hidden_size=config.router_hidden_size,
        k_by_position=config.k_by_position,
        core_by_position=config.core_by_position,
        num_context_tokens=config.num_context_tokens,
        rows_by_position=rows,
        temperature_bands=config.temperature_bands or "none: sampling uses the schedule above",
        sampling_tail=config.sampling_tail,
        report=report,
    )


def write_model_card(model, save_directory, report: str = "") -> None:
    text = render_model_card(model, report)
    if text is not None:
        ModelCard(text).save(Path(save_directory) / "README.md")



def custom_generate_path() -> str:
    """A folder holding `custom_generate/generate.py`: `target.generate(custom_generate=custom_generate_path(), ...)`.

    It is not saved into assistant repos: transformers replaces the `generate` of a model loaded with
    `trust_remote_code` from a repo that has this folder, and the assisted loop needs the assistant's own.
    """
    from importlib.resources import files

    return str(files("dynaspec_hf.hub_cards"))
