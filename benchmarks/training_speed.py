"""Tokens/s and MFU of the recipe's two training phases at their real shapes: the target's next-token step and the
drafter's distillation step (the drafter's forward and backward plus the trained target's forward).

    python benchmarks/training_speed.py --batch-sizes 16 32 --steps 60

Random tokens by default (speed does not depend on the text), or a recipe's `tokens.pt` to see the loss move; the
same `train_causal_lm` calls as `recipe.py`, so what this prints is what the recipe runs at. One row per phase
and batch size, each after its own compilation and warm-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import PEAK_BF16_FLOPS, VOCAB, per_token_flops  # noqa: E402

from dynaspec_hf.demo import llama_pair  # noqa: E402
from dynaspec_hf.training import train_causal_lm  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--tokens", type=Path, help="a recipe's tokens.pt: train on its text instead of random tokens")
    args = parser.parse_args(argv)
    print("| phase | batch | compile | tokens/s (steady) | ms/step | MFU | peak GiB | wall s | loss, first → last |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        torch.manual_seed(0)
        target, drafter = (m.cuda() for m in llama_pair(VOCAB, 768, 12, 768, 2, max_positions=2048))
        tokens = (torch.cat(list(torch.load(args.tokens)["train"].values())) if args.tokens else
                  torch.randint(0, VOCAB, (batch * args.length * (args.steps + 1) + 1,), dtype=torch.int32))
        t, d = per_token_flops(target.config), per_token_flops(drafter.config)
        phases = (("target", target, None, 3 * (t["body"] + t["head"])),
                  ("drafter", drafter, target, 3 * (d["body"] + d["head"]) + t["body"] + t["head"]))
        for name, model, teacher, flops in phases:
            torch.cuda.reset_peak_memory_stats()
            stats = train_causal_lm(model, tokens, steps=args.steps, batch_size=batch, length=args.length, lr=args.lr,
                                    teacher=teacher, compile=not args.no_compile, autocast_dtype=torch.bfloat16,
                                    progress=False)
            rate = stats.steady_tokens_per_s
            print(f"| {name} | {batch}x{args.length} | {not args.no_compile} | {rate:,.0f} | "
                  f"{batch * args.length / rate * 1e3:.1f} | {flops * rate / PEAK_BF16_FLOPS:.2f} | "
                  f"{torch.cuda.max_memory_allocated() / 2**30:.1f} | {stats.seconds:.0f} | "
                  f"{stats.losses[0]:.2f} → {stats.losses[-1]:.2f} |", flush=True)
        del target, drafter
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
