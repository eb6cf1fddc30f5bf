"""The router (DynaSpec's meta-classifier): scores token clusters for the next draft position.

Its inputs are known before the drafter body runs for that position (the previous hidden state and the
current token's embedding), so it can run beside the body instead of after it.
"""

from __future__ import annotations

import torch
from torch import nn


class ClusterRouter(nn.Module):
    def __init__(self, hidden_size: int, embedding_size: int, num_clusters: int, router_hidden_size: int = 256):
        super().__init__()
        in_features = hidden_size + embedding_size
        if router_hidden_size > 0:
            self.net = nn.Sequential(
                nn.Linear(in_features, router_hidden_size), nn.SiLU(), nn.Linear(router_hidden_size, num_clusters)
            )
        else:
            self.net = nn.Linear(in_features, num_clusters)

    def forward(self, previous_hidden: torch.Tensor, token_embeddings: torch.Tensor) -> torch.Tensor:
        """`[..., hidden]`, `[..., embed]` -> cluster scores `[..., num_clusters]`."""
        return self.net(torch.cat([previous_hidden, token_embeddings], dim=-1))
