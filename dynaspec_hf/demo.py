"""`dynaspec-hf demo`: the whole product on an embedded default, with no downloads, in a few minutes on a CPU.

Real text that every Python install carries (the standard library's source) trains a byte-level BPE tokenizer,
a small Llama target and a smaller drafter distilled from it; calibration builds clusters and trains the
router; then held-out prompts run through the unchanged `target.generate(assistant_model=...)` with the full
vocabulary, a static frequency shortlist and DynaSpec, and a table reports τ and exactness.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

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


def run_demo(out_dir: str = "dynaspec-demo", *, steps: int = 300, prompts: int = 8, max_new_tokens: int = 48,
             seed: int = 0) -> list[dict]:
    torch.manual_seed(seed)
    texts = stdlib_texts(1_500_000)
    heldout_texts, train_texts = texts[::10], [t for i, t in enumerate(texts) if i % 10]
    print(f"corpus: {len(train_texts)} standard-library files for training, {len(heldout_texts)} held out")
    tokenizer = train_tokenizer(train_texts, vocab_size=4096)
    stream = torch.tensor(tokenizer("\n".join(train_texts))["input_ids"])
    target, drafter = llama_pair(len(tokenizer), 256, 4, 128, 1)
    train_causal_lm(target, stream, steps=steps, batch_size=16, length=128, lr=3e-3, seed=seed, desc="target")
    train_causal_lm(drafter, stream, steps=steps, batch_size=16, length=128, lr=3e-3, teacher=target, seed=seed,
                    desc="drafter (distilled)")

    chunks = [stream[i : i + 128] for i in range(0, min(stream.numel(), 400 * 128), 128)]
    counts = torch.bincount(stream, minlength=len(tokenizer))
    assistant, report = calibrate(target, drafter, chunks, num_clusters=64, frequency_counts=counts, core_size=512,
                                  router_hidden_size=128, epochs=4, seed=seed, check_prompts=0)  # greedy only
    routed_schedule = report["k_by_position"]

    heldout = [torch.tensor(tokenizer(t)["input_ids"]) for t in heldout_texts]
    prompt_ids = [t[: 64] for t in heldout if t.numel() > 64][:prompts]
    reference = measure_generation(target, prompt_ids, max_new_tokens=max_new_tokens)
    size = len(tokenizer) // 8  # 1/8 of the vocabulary = 8 clusters of 64, or the 512 most frequent tokens
    settings = [
        ("full vocabulary", dict(k_by_position=[64], core_by_position=[0])),
        ("static frequency 1/8", dict(k_by_position=[0], core_by_position=[size])),
        ("DynaSpec 1/8", dict(k_by_position=[size // assistant.config.cluster_size], core_by_position=[0])),
        ("DynaSpec position-aware", dict(k_by_position=routed_schedule, core_by_position=[0])),
    ]
    rows = [{"method": "autoregressive", "rows_per_step": 0, "tau": reference["tau"], "exact": len(prompt_ids)}]
    for name, schedule in settings:
        assistant.set_schedule(**schedule)
        assistant.lm_head.reset_counters()
        result = measure_generation(target, prompt_ids, assistant, max_new_tokens=max_new_tokens,
                                    reference=reference["outputs"])
        rows.append({"method": name, "schedule": schedule, "tau": result["tau"], "exact": result["exact"],
                     "rows_per_step": assistant.lm_head.rows_computed / max(assistant.lm_head.calls, 1)})
    print()
    print("| method | k_by_position | core_by_position | τ (tokens per target pass) | head rows per draft step | exact |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        schedule = row.get("schedule", {})
        print(f"| {row['method']} | {schedule.get('k_by_position', '-')} | {schedule.get('core_by_position', '-')} | "
              f"{row['tau']:.2f} | {row['rows_per_step']:,.0f} | {row['exact']}/{len(prompt_ids)} |")
    assistant.set_schedule(**settings[-1][1])
    assistant.save_pretrained(Path(out_dir) / "assistant")
    target.save_pretrained(Path(out_dir) / "target")
    tokenizer.save_pretrained(Path(out_dir) / "target")
    print(f"\nsaved the pair to {out_dir}/target and {out_dir}/assistant (load with AutoModelForCausalLM)")
    return rows
