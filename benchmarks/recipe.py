"""Train the benchmark's large-vocabulary model pair from text on one GPU, reproducibly, in a few minutes.

    python benchmarks/recipe.py --data DATA_DIR --out PAIR_DIR

DATA_DIR holds the shared data folders (wikitext2, tinyshakespeare, gsm8k); Python source comes from the installed
site-packages (`corpora.py` defines every domain and the held-out split). Writes PAIR_DIR/target, PAIR_DIR/drafter
(each `AutoModelForCausalLM`-loadable, with the tokenizer), PAIR_DIR/tokens.pt and PAIR_DIR/recipe.json (sizes,
tokens seen, throughput and MFU, held-out perplexity per domain, drafter agreement). `--phase target` stops at the
trained target (PAIR_DIR/target, target.json) and `--phase drafter` goes on from there, so each fits one device call.

How it fits minutes: a byte-level BPE trained on a sample; the corpus encoded once, documents packed back to back;
bf16 autocast with fp32 master weights and fused AdamW; regional `torch.compile`. The drafter starts from the
trained target's input embedding and output head (as EAGLE-style drafters share them) and is distilled from the
trained target's logits over the full vocabulary.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpora import DOCS, OUT_OF_DOMAIN, docs_text, header_text, python_split, shared_text  # noqa: E402

from dynaspec_hf.demo import llama_pair, train_tokenizer  # noqa: E402
from dynaspec_hf.training import random_windows, train_causal_lm  # noqa: E402

VOCAB = 128_256
PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16, the usual MFU denominator


def encode(tokenizer, documents: list[str], piece: int = 100_000) -> torch.Tensor:
    """One stream of token ids: the documents back to back, each followed by the end-of-text token."""
    pieces, owners = [], []
    for index, text in enumerate(documents):
        for start in range(0, len(text), piece):
            pieces.append(text[start : start + piece])
            owners.append(index)
    encodings = tokenizer.backend_tokenizer.encode_batch(pieces, add_special_tokens=False)
    end = torch.tensor([tokenizer.eos_token_id], dtype=torch.int32)
    ids = []
    for position, encoding in enumerate(encodings):
        ids.append(torch.tensor(encoding.ids, dtype=torch.int32))
        if position + 1 == len(owners) or owners[position + 1] != owners[position]:
            ids.append(end)
    return torch.cat(ids)


def tokenizer_sample(documents: list[str], max_chars: int) -> list[str]:
    """Every n-th document, n chosen so that about `max_chars` characters are taken."""
    total = sum(map(len, documents))
    stride = max(1, math.ceil(total / max_chars))
    return documents[::stride]


def per_token_flops(config) -> dict:
    """Matrix-multiply FLOPs per token (2 per multiply-add), body and head separately (no attention scores)."""
    d, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    body = 2 * layers * (d * d * 2 + 2 * d * kv + 3 * d * f)
    head = 2 * d * config.vocab_size
    return {"body": body, "head": head, "head_share": head / (body + head)}


def phase_report(stats, flops_per_token: float) -> dict:
    """Throughput, MFU (model FLOPs at the steady rate over the chip's dense bf16 peak) and the loss curve."""
    return {"steps": len(stats.losses), "seconds": stats.seconds, "tokens_per_s": stats.tokens_seen / stats.seconds,
            "steady_tokens_per_s": stats.steady_tokens_per_s,
            "mfu": flops_per_token * stats.steady_tokens_per_s / PEAK_BF16_FLOPS,
            "final_loss": sum(stats.losses[-50:]) / len(stats.losses[-50:]),
            "loss_curve": stats.losses[:: max(1, len(stats.losses) // 20)]}


@torch.no_grad()
def perplexity(model, tokens: torch.Tensor, windows: int = 64, length: int = 256) -> float:
    ids = random_windows(tokens, windows, length + 1, torch.Generator().manual_seed(0)).long().to(model.device)
    losses = []
    for batch in ids.split(16):
        logits = model(input_ids=batch[:, :-1]).logits.float()
        losses.append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none"))
    return math.exp(torch.cat(losses).mean().item())


@torch.no_grad()
def top1_agreement(target, drafter, tokens: torch.Tensor, windows: int = 64, length: int = 256) -> float:
    ids = random_windows(tokens, windows, length, torch.Generator().manual_seed(1)).long().to(target.device)
    agree = [(target(input_ids=b).logits.argmax(-1) == drafter(input_ids=b).logits.argmax(-1)).float().mean()
             for b in ids.split(16)]
    return float(torch.stack(agree).mean())


def train_target(args) -> None:
    """Text → tokenizer → token stream → trained target, saved with its report (`target.json`) and the tokens."""
    seconds, lap = stopwatch()
    code_train, code_heldout = python_split()
    text_train, text_heldout = shared_text(args.data)
    train_docs = {"python": code_train, **text_train}
    heldout_docs = {"python": code_heldout, **text_heldout, OUT_OF_DOMAIN: [header_text(2_000_000)],
                    DOCS: [docs_text(2_000_000)]}
    lap("read")
    everything = [doc for docs in train_docs.values() for doc in docs]
    tokenizer = train_tokenizer(tokenizer_sample(everything, args.tokenizer_chars), vocab_size=args.vocab_size)
    lap("tokenizer")
    train_tokens = {name: encode(tokenizer, docs) for name, docs in train_docs.items()}
    heldout_tokens = {name: encode(tokenizer, docs) for name, docs in heldout_docs.items()}
    stream = torch.cat(list(train_tokens.values()))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"train": train_tokens, "heldout": heldout_tokens}, args.out / "tokens.pt")
    lap("encode")
    print(f"{len(code_train):,} Python files for training, {len(code_heldout):,} held out; "
          f"{stream.numel():,} training tokens", flush=True)

    torch.manual_seed(args.seed)
    target = llama_pair(len(tokenizer), *args.size, max_positions=2048)[0].to(args.device)
    steps = math.ceil(args.target_tokens / (args.batch_size * args.length))
    stats = train_causal_lm(target, stream, steps=steps, lr=args.lr, seed=args.seed, desc="target",
                            **training_options(args, args.batch_size))
    lap("train target")
    target.save_pretrained(args.out / "target")
    tokenizer.save_pretrained(args.out / "target")
    flops = per_token_flops(target.config)
    report = {
        "vocab_size": len(tokenizer),
        "training_tokens": stream.numel(),
        "training_tokens_seen": stats.tokens_seen,
        "training_tokens_per_domain": {name: t.numel() for name, t in train_tokens.items()},
        "python_files": {"train": len(code_train), "heldout": len(code_heldout)},
        "batch": [args.batch_size, args.length],
        "target_training": phase_report(stats, 3 * (flops["body"] + flops["head"])),  # forward + backward
        "seconds": seconds,
    }
    (args.out / "target.json").write_text(json.dumps(report, indent=2))


def train_drafter(args) -> None:
    """The saved target → a drafter distilled from it (starting from its embedding and head) → both evaluated;
    writes the pair's report, `recipe.json`."""
    seconds, lap = stopwatch()
    report = json.loads((args.out / "target.json").read_text())
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    target = AutoModelForCausalLM.from_pretrained(args.out / "target", dtype=dtype).to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.out / "target")
    tokens = torch.load(args.out / "tokens.pt")
    stream = torch.cat(list(tokens["train"].values()))
    torch.manual_seed(args.seed + 1)
    drafter = llama_pair(len(tokenizer), *args.size, max_positions=2048)[1].to(args.device)
    for mine, theirs in ((drafter.get_input_embeddings(), target.get_input_embeddings()),
                         (drafter.get_output_embeddings(), target.get_output_embeddings())):
        mine.weight.data.copy_(theirs.weight.data)
    steps = math.ceil(args.drafter_tokens / (args.drafter_batch_size * args.length))
    stats = train_causal_lm(drafter, stream, steps=steps, lr=args.drafter_lr, teacher=target, seed=args.seed + 1,
                            desc="drafter (distilled)", **training_options(args, args.drafter_batch_size))
    drafter = drafter.to(dtype)
    lap("train drafter")
    flops_t, flops_d = per_token_flops(target.config), per_token_flops(drafter.config)
    heldout_stream = torch.cat([t for name, t in tokens["heldout"].items() if name not in (OUT_OF_DOMAIN, DOCS)])
    report.update({
        "drafter_tokens_seen": stats.tokens_seen,
        "drafter_distillation": phase_report(stats, 3 * (flops_d["body"] + flops_d["head"])
                                             + flops_t["body"] + flops_t["head"]),  # + the teacher's forward
        "target_parameters": sum(p.numel() for p in target.parameters()),
        "drafter_parameters": sum(p.numel() for p in drafter.parameters()),
        "target_flops_per_token": flops_t,
        "drafter_flops_per_token": flops_d,
        "target_over_drafter_body": (flops_t["body"] + flops_t["head"]) / flops_d["body"],
        "target_perplexity": {name: perplexity(target, t) for name, t in tokens["heldout"].items()},
        "drafter_top1_agreement": top1_agreement(target, drafter, heldout_stream),
        "drafter_top1_agreement_per_domain": {name: top1_agreement(target, drafter, t)
                                              for name, t in tokens["heldout"].items()},
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "none (CPU)",
    })
    lap("evaluate")
    drafter.save_pretrained(args.out / "drafter")
    tokenizer.save_pretrained(args.out / "drafter")
    report["seconds"].update(seconds)
    report["seconds_to_trained_pair"] = sum(report["seconds"][k] for k in ("read", "tokenizer", "encode",
                                                                         "train target", "train drafter"))
    (args.out / "recipe.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)


def stopwatch():
    """(seconds per named step, lap(name): record the time since the last lap)."""
    seconds, started = {}, time.time()

    def lap(name: str) -> None:
        seconds[name] = round(time.time() - started - sum(seconds.values()), 1)
        print(f"{name}: {seconds[name]:.0f}s", flush=True)

    return seconds, lap


def training_options(args, batch_size: int) -> dict:
    cuda = args.device == "cuda"
    return dict(batch_size=batch_size, length=args.length, compile=cuda,
                autocast_dtype=torch.bfloat16 if cuda else None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--phase", choices=["target", "drafter", "all"], default="all",
                        help="target: text to trained target; drafter: the saved target to the pair (resumable)")
    parser.add_argument("--target-tokens", type=float, default=100e6, help="tokens the target trains on (seen)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=8e-4, help="1.5e-3 at 16 x 1024 diverged")
    parser.add_argument("--drafter-tokens", type=float, default=30e6, help="tokens the drafter distills on")
    parser.add_argument("--drafter-batch-size", type=int, default=16,
                        help="windows per distillation step (two [batch x length x vocab] logit tensors live at once)")
    parser.add_argument("--drafter-lr", type=float, default=1e-3)
    parser.add_argument("--tokenizer-chars", type=int, default=40_000_000, help="characters the tokenizer trains on")
    parser.add_argument("--size", nargs=4, type=int, default=[768, 12, 768, 4], metavar=("TH", "TL", "DH", "DL"),
                        help="target hidden size and layers, drafter hidden size and layers")
    parser.add_argument("--vocab-size", type=int, default=VOCAB)
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke test")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.phase in ("target", "all"):
        train_target(args)
    if args.phase in ("drafter", "all"):
        train_drafter(args)


if __name__ == "__main__":
    main()
