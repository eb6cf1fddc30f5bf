"""The training loop behind the demo and the benchmark pair: epochs of packed windows, distillation that never
touches the teacher, compiled training that hands the model back plain, and a clear stop on divergence."""

import copy
import math

import pytest
import torch

from dynaspec_hf.demo import llama_pair
from dynaspec_hf.training import epoch_batches, train_causal_lm


def test_an_epoch_reads_every_window_once():
    tokens = torch.arange(1001)  # 100 windows of 10 (+ the next window's first token as the last label)
    batches = epoch_batches(tokens, batch_size=7, length=10, generator=torch.Generator().manual_seed(0))
    epoch = torch.cat([next(batches) for _ in range(100 // 7)])
    assert epoch.shape == (98, 11)
    assert (epoch[:, 1:] - epoch[:, :-1] == 1).all()  # contiguous text
    starts = epoch[:, 0]
    assert starts.unique().numel() == 98 and (starts % 10 == 0).all()  # distinct, non-overlapping windows
    assert not torch.equal(starts, starts.sort().values)  # shuffled


def test_a_stream_shorter_than_a_batch_is_refused():
    with pytest.raises(ValueError, match="fewer than a batch"):
        next(epoch_batches(torch.arange(50), batch_size=8, length=10, generator=torch.Generator()))


def learnable_stream(vocab: int = 48, length: int = 6000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    stream = torch.randint(0, vocab, (length,), generator=generator)
    stream[1::2] = (stream[::2] * 7 + 3) % vocab  # every second token is a function of the one before
    return stream


def divergence(target, drafter, stream: torch.Tensor) -> float:
    """Mean KL(target || drafter) per position."""
    ids = stream[:512][None]
    with torch.no_grad():
        p, q = (m(input_ids=ids).logits.log_softmax(-1) for m in (target, drafter))
    return torch.nn.functional.kl_div(q[0], p[0], log_target=True, reduction="batchmean").item()


def test_distillation_brings_the_drafter_to_the_teacher_and_leaves_the_teacher_alone():
    stream = learnable_stream()
    torch.manual_seed(0)
    target, drafter = llama_pair(48, 32, 2, 16, 1)
    options = dict(batch_size=8, length=32, lr=1e-2, progress=False)
    train_causal_lm(target, stream, steps=80, **options)
    trained_target = copy.deepcopy(target.state_dict())
    untrained = copy.deepcopy(drafter)
    stats = train_causal_lm(drafter, stream, steps=80, teacher=target, **options)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in trained_target.items())
    assert len(stats.losses) == 80 and stats.tokens_seen == 80 * 8 * 32
    assert divergence(target, drafter, stream) < 0.5 * divergence(target, untrained, stream)


def test_compiled_training_gives_the_model_back_uncompiled():
    stream = learnable_stream()
    target, _ = llama_pair(48, 32, 2, 16, 1)
    layers = list(target.model.layers)
    stats = train_causal_lm(target, stream, steps=3, batch_size=4, length=16, compile=True, progress=False)
    assert list(target.model.layers) == layers and all(map(math.isfinite, stats.losses))


def test_a_diverged_run_stops_with_a_clear_error():
    target, _ = llama_pair(48, 32, 2, 16, 1)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_causal_lm(target, learnable_stream(), steps=60, batch_size=4, length=16, lr=1e9, progress=False)
