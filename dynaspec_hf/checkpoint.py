"""Loading and saving a DynaSpec assistant: transformers' `from_pretrained`, `save_pretrained` and `push_to_hub`, plus
what a DynaSpec checkpoint adds. Loading refuses a checkpoint that would draft from missing or damaged parts, with
an error that says which; the calibration report and the model card travel with the weights, byte for byte.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers.utils import cached_file

from .configuration_dynaspec import DynaSpecConfig

REPORT_NAME = "calibration_report.json"


class CheckpointMixin:
    """The checkpoint methods of `DynaSpecAssistant` (mixed in before `PreTrainedModel`, whose methods they wrap)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing checkpoints that would draft from missing or damaged parts."""
        return_info = kwargs.pop("output_loading_info", False)
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        except Exception as error:  # safetensors and torch raise several types for a damaged file
            if "deserializ" in str(error) or "safetensor" in type(error).__module__.lower():
                raise OSError(
                    f"Could not read the weights of {pretrained_model_name_or_path!r}: the safetensors file is "
                    f"corrupted or truncated ({error})."
                ) from error
            if "ignore_mismatched_sizes" in str(error):
                config = DynaSpecConfig.from_pretrained(pretrained_model_name_or_path, **_hub_kwargs(kwargs))
                raise ValueError(
                    f"The tensors of {pretrained_model_name_or_path!r} do not have the shapes its config implies "
                    f"(vocab_size={config.vocab_size}, num_clusters={config.num_clusters}, "
                    f"cluster_size={config.cluster_size}, core_size={config.core_size}, "
                    f"router_hidden_size={config.router_hidden_size}): config.json and the weights disagree. "
                    f"The load report above names each tensor."
                ) from error
            raise
        missing = sorted(info["missing_keys"])
        router_missing = [key for key in missing if key.startswith("router.")]
        if router_missing and model.config.needs_router:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} has no router weights ({', '.join(router_missing)}), but its schedule "
                f"routes clusters (k_by_position={model.config.k_by_position}; temperature bands: "
                f"{[band['k_by_position'] for band in model.config.temperature_bands]}). Train a router "
                f"(dynaspec_hf.calibrate) or use schedules without routing."
            )
        other_missing = [key for key in missing if not key.startswith("router.")]
        if other_missing:
            raise ValueError(f"{pretrained_model_name_or_path!r} lacks weights for: {', '.join(other_missing)}.")
        model.lm_head.check_layout()
        report = cached_file(pretrained_model_name_or_path, REPORT_NAME, _raise_exceptions_for_missing_entries=False,
                             _raise_exceptions_for_connection_errors=False, **_hub_kwargs(kwargs))
        if report is not None:
            model.calibration_report = json.loads(Path(report).read_text())
        return (model, info) if return_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, plus the calibration report (if any) and a model card (README.md) from
        the template in `hub_cards/`: a load -> save round trip keeps both byte for byte."""
        super().save_pretrained(save_directory, *args, **kwargs)
        from .model_card import write_model_card

        if self.calibration_report is not None:
            (Path(save_directory) / REPORT_NAME).write_text(json.dumps(self.calibration_report, indent=2))
        write_model_card(self, save_directory)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    token: str | bool | None = None, revision: str | None = None, create_pr: bool = False, **kwargs):
        """Upload what `save_pretrained` writes (weights, config, calibration report, the DynaSpec model card) to
        the Hub repo `repo_id`, created if needed. `kwargs` go to `save_pretrained` (e.g. `max_shard_size`)."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **kwargs)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                                     commit_message=commit_message or "Upload DynaSpec assistant")


def _hub_kwargs(kwargs: dict) -> dict:
    keys = ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download")
    return {key: kwargs[key] for key in keys if key in kwargs}
