"""Train a real large-vocabulary model pair from text on one GPU, reproducibly, in a few minutes.

    python benchmarks/recipe.py --data DATA_DIR --out PAIR_DIR

DATA_DIR holds the shared data folders (wikitext2, tinyshakespeare, gsm8k); Python source comes from the
installed site-packages. Writes PAIR_DIR/target, PAIR_DIR/drafter (each `AutoModelForCausalLM`-loadable, with
the tokenizer) and PAIR_DIR/recipe.json (sizes, FLOPs, held-out perplexity per domain, drafter agreement).
"""

from __future__ import annotations

import argparse
import json
import math
import site
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dynaspec_hf.demo import llama_pair, train_tokenizer  # noqa: E402
from dynaspec_hf.training import random_windows, train_causal_lm  # noqa: E402

VOCAB = 128_256


def python_sources(max_chars: int) -> tuple[list[str], list[str]]:
    """(train, held-out) Python files from site-packages, sorted by path; every 50th file is held out."""
    files = []
    for root in site.getsitepackages():
        files += sorted(Path(root).rglob("*.py"))
    train, heldout, total = [], [], 0
    for index, path in enumerate(files):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        (heldout if index % 50 == 0 else train).append(text)
        total += len(text)
        if total >= max_chars:
            break
    return train, heldout


def corpus(data: Path, python_chars: int) -> tuple[dict[str, str], dict[str, str]]:
    """Training text and held-out text per domain."""
    shakespeare = (data / "tinyshakespeare" / "input.txt").read_text()
    cut = int(len(shakespeare) * 0.9)
    gsm = lambda name: "\n\n".join(  # noqa: E731
        f"{r['question']}\n{r['answer']}" for r in map(json.loads, (data / "gsm8k" / name).read_text().splitlines())
    )
    code_train, code_heldout = python_sources(python_chars)
    train = {
        "wikitext": (data / "wikitext2" / "valid.txt").read_text(),
        "shakespeare": shakespeare[:cut],
        "gsm8k": gsm("train.jsonl"),
        "python": "\n\n".join(code_train),
    }
    heldout = {
        "wikitext": (data / "wikitext2" / "test.txt").read_text(),
        "shakespeare": shakespeare[cut:],
        "gsm8k": gsm("test.jsonl"),
        "python": "\n\n".join(code_heldout),
    }
    return train, heldout


def encode(tokenizer, text: str, chunk: int = 100_000) -> torch.Tensor:
    pieces = [text[i : i + chunk] for i in range(0, len(text), chunk)]
    return torch.tensor([t for ids in tokenizer(pieces)["input_ids"] for t in ids], dtype=torch.long)


def per_token_flops(config) -> dict:
    """Matrix-multiply FLOPs per token (2 per multiply-add), body and head separately (no attention scores)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    body = 2 * layers * (d * d * 2 + 2 * d * kv + 3 * d * f)
    head = 2 * d * config.vocab_size
    return {"body": body, "head": head, "head_share": head / (body + head)}


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, windows: int = 64, length: int = 256) -> float:
    ids = random_windows(tokens, windows, length + 1, torch.Generator().manual_seed(0)).to(model.device)
    losses = []
    for batch in ids.split(16):
        logits = model(input_ids=batch[:, :-1]).logits.float()
        losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none"))
    return math.exp(torch.cat(losses).mean().item())


@torch.no_grad()
def top1_agreement(target, drafter, tokens: torch.Tensor, windows: int = 64, length: int = 256) -> float:
    ids = random_windows(tokens, windows, length, torch.Generator().manual_seed(1)).to(target.device)
    agree = [(target(input_ids=b).logits.argmax(-1) == drafter(input_ids=b).logits.argmax(-1)).float().mean()
             for b in ids.split(16)]
    return float(torch.stack(agree).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--python-chars", type=int, default=24_000_000)
    parser.add_argument("--target-steps", type=int, default=1500)
    parser.add_argument("--drafter-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    started = time.time()
    train_text, heldout_text = corpus(args.data, args.python_chars)
    tokenizer = train_tokenizer(list(train_text.values()), vocab_size=VOCAB)
    print(f"tokenizer: {len(tokenizer)} tokens ({time.time() - started:.0f}s)", flush=True)
    train_tokens = {name: encode(tokenizer, text) for name, text in train_text.items()}
    heldout_tokens = {name: encode(tokenizer, text) for name, text in heldout_text.items()}
    stream = torch.cat(list(train_tokens.values()))
    print(f"training tokens: {stream.numel():,} ({time.time() - started:.0f}s)", flush=True)

    target, drafter = llama_pair(len(tokenizer), 768, 12, 768, 2, max_positions=2048)
    target, drafter = target.cuda(), drafter.cuda()
    train_causal_lm(target, stream, steps=args.target_steps, batch_size=args.batch_size, length=args.length,
                    lr=1.5e-3, seed=args.seed, autocast_dtype=torch.bfloat16, desc="target")
    print(f"target trained ({time.time() - started:.0f}s)", flush=True)
    train_causal_lm(drafter, stream, steps=args.drafter_steps, batch_size=args.batch_size, length=args.length,
                    lr=2e-3, seed=args.seed + 1, teacher=target, autocast_dtype=torch.bfloat16,
                    desc="drafter (distilled)")
    target, drafter = target.to(torch.bfloat16), drafter.to(torch.bfloat16)
    print(f"drafter trained ({time.time() - started:.0f}s)", flush=True)

    heldout_stream = torch.cat(list(heldout_tokens.values()))
    report = {
        "vocab_size": len(tokenizer),
        "training_tokens": stream.numel(),
        "target_parameters": sum(p.numel() for p in target.parameters()),
        "drafter_parameters": sum(p.numel() for p in drafter.parameters()),
        "target_flops_per_token": per_token_flops(target.config),
        "drafter_flops_per_token": per_token_flops(drafter.config),
        "target_perplexity": {name: perplexity(target, t) for name, t in heldout_tokens.items()},
        "drafter_top1_agreement": top1_agreement(target, drafter, heldout_stream),
        "seconds": time.time() - started,
    }
    flops_t, flops_d = report["target_flops_per_token"], report["drafter_flops_per_token"]
    report["target_over_drafter_body"] = (flops_t["body"] + flops_t["head"]) / flops_d["body"]
    for model, name in ((target, "target"), (drafter, "drafter")):
        model.save_pretrained(args.out / name)
        tokenizer.save_pretrained(args.out / name)
    torch.save({"train": train_tokens, "heldout": heldout_tokens}, args.out / "tokens.pt")
    (args.out / "recipe.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
