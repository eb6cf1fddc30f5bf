"""Small-scale LM training used to build real model pairs locally (the demo, the tests, the GPU recipe).

`train_causal_lm` trains on next-token cross-entropy, or distills from a teacher's logits when one is given
(how the drafter learns to agree with the target).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def random_windows(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`[batch_size, length]` windows at random offsets of a 1-D token stream."""
    if tokens.numel() <= length:
        raise ValueError(f"The token stream ({tokens.numel()} tokens) is shorter than one window ({length}).")
    starts = torch.randint(0, tokens.numel() - length, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


def train_causal_lm(
    model,
    tokens: torch.Tensor,
    *,
    steps: int,
    batch_size: int = 16,
    length: int = 128,
    lr: float = 3e-3,
    teacher=None,
    seed: int = 0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """AdamW with warm-up and cosine decay; returns the loss of every step."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )
    model.train()
    losses = []
    with tqdm(range(steps), desc=desc, disable=not progress) as bar:
        for _ in bar:
            ids = random_windows(tokens, batch_size, length + 1, generator).to(device)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(input_ids=ids[:, :-1]).logits.float()
                if teacher is None:
                    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
                else:
                    with torch.no_grad():
                        teacher_logits = teacher(input_ids=ids[:, :-1]).logits.float()
                    loss = F.kl_div(
                        logits.log_softmax(-1).reshape(-1, logits.shape[-1]),
                        teacher_logits.log_softmax(-1).reshape(-1, logits.shape[-1]),
                        log_target=True, reduction="batchmean",
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses
