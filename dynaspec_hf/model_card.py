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


def render_model_card(model) -> str | None:
    """The card text for `model` (a `DynaSpecAssistant`, with its `calibration_report` if it has one), or None when
    the template is not installed."""
    template = _template()
    if template is None:
        return None
    config, report = model.config, model.calibration_report or {}
    target = report.get("target", {})
    data = report.get("data") or {}
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
        sampling_tail_rank=config.sampling_tail_rank,
        target=target.get("name_or_path") or "<target repo>",
        target_revision=target.get("revision") or "-",
        target_vocab_size=target.get("vocab_size", "-"),
        data=", ".join(f"`{name}` ({count} texts)" for name, count in data.items()) or "-",
        report=report_section(report) if "curves" in report else "",
    )


def write_model_card(model, save_directory) -> None:
    text = render_model_card(model)
    if text is not None:
        ModelCard(text).save(Path(save_directory) / "README.md")


def report_section(report: dict) -> str:
    """The card's calibration section: held-out recall and acceptance per domain and size, and the choices made."""
    curves = report["curves"]
    lines = ["## Calibration (held-out)", "",
             "| domain | shortlist | rows | DynaSpec recall | static recall | DynaSpec acceptance | static acceptance "
             "| target mass in routed clusters (best possible) |", "|---|---|---|---|---|---|---|---|"]
    for domain, entry in curves["domains"].items():
        routed = entry["routed"]
        for i, k in enumerate(curves["ks"]):
            mass = f"{routed['mass'][i]:.3f} ({routed['best_mass'][i]:.3f})" if "mass" in routed else "-"
            lines.append(
                f"| {domain} | {k} clusters | {k * curves['cluster_size']} | {routed['recall'][i]:.3f} | "
                f"{entry['static']['recall'][i]:.3f} | {routed['acceptance'][i]:.3f} | "
                f"{entry['static']['acceptance'][i]:.3f} | {mass} |")
    check = report["sampling_check"]
    band = (f"kept: τ at T = 1 {check['tau_sampled_split']:.3f} against {check['tau_greedy_split']:.3f} with the "
            f"greedy split" if check["kept"] else f"not kept ({check.get('reason') or 'it lost τ against the greedy split'})")
    tail = (f"off ({check['reason']})" if "acceptance" not in check else
            "off (no weight raised exact sampled acceptance)" if "tau_tail" not in check else
            f"weight {check['tail_weight']}, rank {check.get('tail_rank', 0)}, "
            f"{'kept' if check['tail_kept'] else 'not kept'} (τ at T = 1 "
            f"{check['tau_tail']:.3f} with it)")
    lines += ["", f"Router objective: {report['objective']}.",
              f"Best core/routed/context split per size (`set_schedule(k_by_position=[k], "
              f"core_by_position=[core], num_context_tokens=context)`), by greedy acceptance: {report['splits']}; "
              f"by sampled acceptance: {report['sampled_splits']}. The sampling band: {band}. The sampling tail: "
              f"{tail}.",
              f"Position-aware routed clusters (not used unless set): `k_by_position={report['k_by_position']}`."]
    return "\n".join(lines)



def custom_generate_path() -> str:
    """A folder holding `custom_generate/generate.py`: `target.generate(custom_generate=custom_generate_path(), ...)`.

    It is not saved into assistant repos: transformers replaces the `generate` of a model loaded with
    `trust_remote_code` from a repo that has this folder, and the assisted loop needs the assistant's own.
    """
    from importlib.resources import files

    return str(files("dynaspec_hf.hub_cards"))
