"""The final-logit transform a model family applies after its output head, reproduced on shortlist rows.

Some causal-LM classes transform logits outside the head's weights: Gemma-2/3 soft-cap them
(`final_logit_softcapping`), Cohere multiplies them by `logit_scale`, Granite divides them by `logits_scaling`.
A drafter's distribution includes the transform, so the shortlist head must apply it too, or sampled drafts come
from another distribution. Each transform is elementwise, so it applies to any subset of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitTransform:
    """`softcap · tanh(scale · logits / softcap)` (no tanh when `softcap` is None)."""

    scale: float = 1.0
    softcap: float | None = None

    @classmethod
    def from_config(cls, config) -> "LogitTransform":
        """The transform transformers applies for `config`'s family (read from the config's own attributes)."""
        model_type = getattr(config, "model_type", "")
        scale = 1.0
        if model_type.startswith("cohere") and getattr(config, "logit_scale", None) is not None:
            scale = float(config.logit_scale)
        if model_type.startswith("granite") and getattr(config, "logits_scaling", None) is not None:
            scale = 1.0 / float(config.logits_scaling)
        softcap = getattr(config, "final_logit_softcapping", None)
        return cls(scale=scale, softcap=float(softcap) if softcap else None)

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
