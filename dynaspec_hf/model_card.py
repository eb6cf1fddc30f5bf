"""Files a saved assistant carries for the Hub: its model card and the `custom_generate` tree-decoding loop."""

from __future__ import annotations

import string
from pathlib import Path

from huggingface_hub import ModelCard

TEMPLATE_NAME = "dynaspec_assistant.md"


CUSTOM_GENERATE_FILES = ("generate.py", "requirements.txt", "README.md")


def _hub_card_file(*parts: str) -> str | None:
    try:
        from importlib.resources import files

        return files("dynaspec_hf.hub_cards").joinpath(*parts).read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        return None  # e.g. a copy of this file loaded with trust_remote_code, without the package


def _template() -> str | None:
    return _hub_card_file(TEMPLATE_NAME)


def render_model_card(model, report: str = "") -> str | None:
    """The card text for `model` (a `DynaSpecAssistant`), or None when the template is not installed."""
    template = _template()
    if template is None:
        return None
    config = model.config
    positions = max(len(config.k_by_position), len(config.core_by_position))
    rows = []
    for position in range(positions):
        core, k = config.shortlist_at(position)
        rows.append(core + k * config.cluster_size)
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
        rows_by_position=rows,
        report=report,
    )


def write_model_card(model, save_directory, report: str = "") -> None:
    text = render_model_card(model, report)
    if text is not None:
        ModelCard(text).save(Path(save_directory) / "README.md")


def write_custom_generate(save_directory) -> None:
    """Copy `hub_cards/custom_generate/` so the saved repo works as `target.generate(custom_generate=repo)`."""
    folder = Path(save_directory) / "custom_generate"
    for name in CUSTOM_GENERATE_FILES:
        text = _hub_card_file("custom_generate", name)
        if text is not None:
            folder.mkdir(exist_ok=True)
            (folder / name).write_text(text)
