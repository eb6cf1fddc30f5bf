"""`dynaspec-hf demo`: the whole product on an embedded default, with no downloads, in a few minutes on a CPU.

Real text that every Python install carries (the standard library's source) trains a byte-level BPE tokenizer,
a small Llama target and a smaller drafter distilled from it; calibration builds clusters and trains the
router; then held-out prompts, from the standard library and from its codec tables (text it never trained on), run
through the unchanged `target.generate(assistant_model=...)` with the plain drafter, and with the assistant's full
vocabulary, a static frequency shortlist and DynaSpec; a table reports τ, tokens/s and exactness.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import torch
import transformers

from .calibrate import calibrate
from .measure import measure_generation
from .training import train_causal_lm


def stdlib_texts(max_bytes: int) -> list[str]:
    """Python files of the standard library, sorted by path, up to `max_bytes` in all."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts or path.name.startswith("test"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_bytes:
            break
    if not texts:
        raise RuntimeError(f"No Python sources found under {root}.")
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def llama_pair(vocab_size: int, target_hidden: int, target_layers: int, drafter_hidden: int, drafter_layers: int,
               max_positions: int = 1024):
    from transformers import AutoModelForCausalLM, LlamaConfig

    def config(hidden, layers):
        heads = max(1, hidden // 64)
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 32 * 32,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=max_positions, tie_word_embeddings=False, bos_token_id=None, eos_token_id=0,
            pad_token_id=0,
        )

    return (AutoModelForCausalLM.from_config(config(target_hidden, target_layers)),
            AutoModelForCausalLM.from_config(config(drafter_hidden, drafter_layers)))


def encoding_texts() -> list[str]:
    """The standard library's codec modules (`encodings/*.py`, decoding tables): text the demo never trains on."""
    root = Path(sysconfig.get_paths()["stdlib"]) / "encodings"
    return [path.read_text(encoding="utf-8") for path in sorted(root.glob("cp*.py"))]


def run_demo(out_dir: str = "dynaspec-demo", *, steps: int = 300, prompts: int = 8, max_new_tokens: int = 48,
             seed: int = 0) -> list[dict]:
    """Train, calibrate, compare, save; returns the table's rows. Progress bars only on a terminal, else one line
    per stage."""
    progress = sys.stderr.isatty()
    if not progress:  # transformers' own bars (loading and writing weights) too
        transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    texts = stdlib_texts(1_500_000)
    heldout_texts, train_texts = texts[::10], [t for i, t in enumerate(texts) if i % 10]
    print(f"corpus: {len(train_texts)} standard-library files for training, {len(heldout_texts)} held out", flush=True)
    tokenizer = train_tokenizer(train_texts, vocab_size=4096)
    stream = torch.tensor(tokenizer("\n".join(train_texts))["input_ids"])
    target, drafter = llama_pair(len(tokenizer), 256, 4, 128, 1)
    print(f"training the target and distilling the drafter ({steps} steps each)", flush=True)
    train_causal_lm(target, stream, steps=steps, batch_size=16, length=128, lr=3e-3, seed=seed, desc="target",
                    progress=progress)
    train_causal_lm(drafter, stream, steps=steps, batch_size=16, length=128, lr=3e-3, teacher=target, seed=seed,
                    desc="drafter (distilled)", progress=progress)

    print("calibrating: clusters, router, held-out report", flush=True)
    chunks = [stream[i : i + 128] for i in range(0, min(stream.numel(), 400 * 128), 128)]
    counts = torch.bincount(stream, minlength=len(tokenizer))
    assistant, report = calibrate(target, drafter, chunks, num_clusters=64, frequency_counts=counts, core_size=512,
                                  router_hidden_size=128, epochs=4, seed=seed, check_prompts=0,  # greedy only
                                  progress=progress)
    routed_schedule = report["k_by_position"]

    def prompt_ids(texts):
        ids = [torch.tensor(tokenizer(t)["input_ids"]) for t in texts]
        return [t[:64] for t in ids if t.numel() > 64][:prompts]

    domains = {"held-out stdlib": prompt_ids(heldout_texts), "unseen codecs": prompt_ids(encoding_texts())}
    print(f"comparing on {len(domains['held-out stdlib'])} held-out stdlib prompts and "
          f"{len(domains['unseen codecs'])} codec-table prompts (encodings/, never trained on), {max_new_tokens} new "
          f"tokens each", flush=True)
    references = {name: measure_generation(target, ids, max_new_tokens=max_new_tokens) for name, ids in domains.items()}
    size = len(tokenizer) // 8  # 1/8 of the vocabulary = 8 clusters of 64, or the 512 most frequent tokens
    settings = [
        ("full vocabulary", dict(k_by_position=[64], core_by_position=[0])),
        ("static frequency 1/8", dict(k_by_position=[0], core_by_position=[size])),
        ("DynaSpec 1/8", dict(k_by_position=[size // assistant.config.cluster_size], core_by_position=[0])),
        ("DynaSpec position-aware", dict(k_by_position=routed_schedule, core_by_position=[0])),
    ]
    rows = [dict(method="plain decoding", rows_per_step=0, **_measured(references, references))]
    for name in ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold"):
        setattr(drafter.generation_config, name, getattr(assistant.generation_config, name))  # like for like
    rows.append(dict(method="transformers assisted generation, plain drafter", rows_per_step=len(tokenizer),
                     **_measured(references, {name: measure_generation(
                         target, ids, drafter, max_new_tokens=max_new_tokens, reference=references[name]["outputs"])
                         for name, ids in domains.items()})))
    for name, schedule in settings:
        assistant.set_schedule(**schedule)
        assistant.lm_head.reset_counters()
        results = {domain: measure_generation(target, ids, assistant, max_new_tokens=max_new_tokens,
                                              reference=references[domain]["outputs"])
                   for domain, ids in domains.items()}
        rows.append(dict(method=f"DynaSpec assistant: {name}", schedule=schedule,
                         rows_per_step=assistant.lm_head.rows_computed / max(assistant.lm_head.calls, 1),
                         **_measured(references, results)))
    print()
    print("| method | head rows per draft step | τ held-out stdlib | τ unseen codecs | tokens/s (both) | exact |")
    print("|---|---|---|---|---|---|")
    total = sum(len(ids) for ids in domains.values())
    for row in rows:
        print(f"| {row['method']} | {row['rows_per_step']:,.0f} | {row['tau']['held-out stdlib']:.2f} | "
              f"{row['tau']['unseen codecs']:.2f} | {row['tokens_per_s']:.0f} | {row['exact']}/{total} |")
    static = torch.zeros(len(tokenizer), dtype=torch.bool)
    static[counts.topk(size).indices] = True
    covered = {name: float(static[torch.cat(result["outputs"])].float().mean()) for name, result in references.items()}
    print(f"\nτ: tokens per target forward pass (plain decoding: 1). The static 1/8 list holds "
          f"{covered['held-out stdlib']:.1%} (stdlib) and {covered['unseen codecs']:.1%} (codecs) of the target's "
          f"greedy tokens: where it holds nearly all of them, routing has little to win back. transformers' assisted "
          f"loop runs the target eagerly, so on a CPU its forwards dominate tokens/s; `dynaspec-hf bench` times the "
          f"package's own loop too.")
    assistant.set_schedule(**settings[-1][1])
    out = Path(out_dir)
    assistant.save_pretrained(out / "assistant")
    for model, name in ((target, "target"), (drafter, "drafter")):
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    print(f"\nsaved {out}/target, {out}/drafter and {out}/assistant (load with AutoModelForCausalLM; "
          f"re-calibrate with dynaspec-hf calibrate --target {out}/target --drafter {out}/drafter ...)")
    return rows


def _measured(references: dict, results: dict) -> dict:
    """τ per domain, tokens/s over every domain and exact outputs, from `measure_generation` results per domain."""
    tokens = sum(result["tokens"] for result in results.values())
    return {"tau": {name: result["tau"] for name, result in results.items()},
            "tokens_per_s": tokens / sum(result["seconds"] for result in results.values()),
            "exact": sum(result.get("exact", len(references[name]["outputs"])) for name, result in results.items())}
