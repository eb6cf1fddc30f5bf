"""Small-scale LM training used to build real model pairs locally (the demo, the tests, the GPU recipe).

`train_causal_lm` trains on next-token cross-entropy, or distills from a teacher's logits when one is given
(how the drafter learns to agree with the target). Distillation reads the *trained* teacher: a drafter distilled
online, in the target's own training steps, agrees far less, because it chases a moving teacher.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def random_windows(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`[batch_size, length]` windows at random offsets of a 1-D token stream."""
    if tokens.numel() <= length:
        raise ValueError(f"The token stream ({tokens.numel()} tokens) is shorter than one window ({length}).")
    starts = torch.randint(0, tokens.numel() - length, (batch_size,), generator=generator)
    return torch.stack([tokens[s : s + length] for s in starts.tolist()])


def epoch_batches(tokens: torch.Tensor, batch_size: int, length: int, generator: torch.Generator):
    """Endless `[batch_size, length + 1]` batches of non-overlapping windows, reshuffled each epoch.

    Packed sequences: the stream holds documents back to back, so no position is padding, and within an epoch
    every token is read once (window i starts at i * length; its last token is the next window's first)."""
    count = (tokens.numel() - 1) // length
    if count < batch_size:
        raise ValueError(f"The token stream ({tokens.numel()} tokens) holds {count} windows of {length + 1} tokens, "
                         f"fewer than a batch ({batch_size}).")
    offsets = torch.arange(length + 1, device=tokens.device)
    while True:
        order = torch.randperm(count, generator=generator).to(tokens.device)
        for batch in order[: count - count % batch_size].view(-1, batch_size):
            yield tokens[batch[:, None] * length + offsets]


@dataclass
class TrainingStats:
    """What a run did: per-step losses, tokens read, wall time (compilation included), steady throughput."""

    losses: list[float]
    tokens_seen: int = 0
    seconds: float = 0.0
    steady_tokens_per_s: float = 0.0  # after the first 10% of steps (compilation and warm-up excluded)


def _hidden_states(model, ids: torch.Tensor, teacher=None):
    """(hidden, head weight, labels, teacher hidden, teacher head weight) for one batch of windows."""
    inputs, labels = ids[:, :-1], ids[:, 1:]
    hidden = model.get_decoder()(input_ids=inputs, use_cache=False).last_hidden_state
    if teacher is None:
        return hidden, model.get_output_embeddings().weight, labels, None, None
    with torch.no_grad():
        teacher_hidden = teacher.get_decoder()(input_ids=inputs, use_cache=False).last_hidden_state
    return hidden, model.get_output_embeddings().weight, labels, teacher_hidden, teacher.get_output_embeddings().weight


def _loss(hidden, weight, labels, teacher_hidden, teacher_weight):
    """Next-token cross-entropy, or with a teacher KL(teacher || model) over the full vocabulary."""
    logits = F.linear(hidden, weight).float().reshape(-1, weight.shape[0])
    if teacher_hidden is None:
        return F.cross_entropy(logits, labels.reshape(-1))
    target = F.linear(teacher_hidden, teacher_weight).float().reshape(-1, weight.shape[0]).log_softmax(-1)
    return F.kl_div(logits.log_softmax(-1), target, log_target=True, reduction="batchmean")


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
    compile: bool = False,
    progress: bool = True,
    desc: str = "training",
) -> TrainingStats:
    """AdamW with warm-up and cosine decay over epochs of packed windows; distills from `teacher`'s logits when
    one is given. `compile` compiles each decoder layer and the loss while training (regional compilation: one
    compile serves every layer of a shape); the models are given back uncompiled."""
    device = next(model.parameters()).device
    decoders = [model.get_decoder()] + ([teacher.get_decoder()] if teacher is not None else [])
    plain_layers = [d.layers for d in decoders]
    loss_fn = _loss
    if compile:  # compiled wrappers share the layers' parameters
        for d in decoders:
            d.layers = torch.nn.ModuleList(torch.compile(layer) for layer in d.layers)
        loss_fn = torch.compile(_loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    )
    batches = epoch_batches(tokens.to(device), batch_size, length, torch.Generator().manual_seed(seed))
    model.train()
    losses = []
    started = time.perf_counter()
    steady_start = steady_step = None
    try:
        bar = tqdm(range(steps), desc=desc, disable=not progress)
        for step in bar:
            if step == max(1, steps // 10):
                _synchronize(device)
                steady_start, steady_step = time.perf_counter(), step
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = loss_fn(*_hidden_states(model, next(batches).long(), teacher))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.detach())
            if step % 50 == 0:  # a host sync every 50 steps, not every step
                value = losses[-1].item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"The training loss became {value} at step {step} of {steps}; lower "
                                             f"the learning rate ({lr}) or check the data.")
                bar.set_postfix(loss=f"{value:.3f}")
        _synchronize(device)
        ended = time.perf_counter()
    finally:
        for d, layers in zip(decoders, plain_layers):
            d.layers = layers
    model.eval()
    tokens_per_step = batch_size * length
    steady = (steps - steady_step) * tokens_per_step / (ended - steady_start) if steady_start else 0.0
    return TrainingStats(losses=torch.stack(losses).tolist(), tokens_seen=steps * tokens_per_step,
                         seconds=ended - started, steady_tokens_per_s=steady)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
