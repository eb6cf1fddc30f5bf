"""Compare drafting methods on the trained pair through the unchanged `target.generate(assistant_model=...)`.

    python benchmarks/run_benchmark.py --pair PAIR_DIR --data DATA_DIR --out RESULTS_DIR

Calibrates a DynaSpec assistant for the pair (clusters + router + position-aware schedule), then for each
method and prompt category measures τ (tokens per target forward pass), recovery (τ / τ of the full-vocabulary
drafter), tokens/s, speedup over autoregressive decoding, exactness against the target's greedy output and the
head's time per draft step. Writes RESULTS_DIR/latest.json, latest.md and latest.png.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from dynaspec_hf.calibrate import calibrate  # noqa: E402
from dynaspec_hf.measure import measure_generation  # noqa: E402
from summarize import summary_table  # noqa: E402


def load_prompts(data: Path, per_category: int, seed: int) -> dict[str, list[str]]:
    """A fixed, seeded sample of Spec-Bench prompts per category (first turn) plus HumanEval."""
    categories: dict[str, list[str]] = {}
    for line in (data / "spec_bench" / "question.jsonl").read_text().splitlines():
        record = json.loads(line)
        category = "mt_bench" if record["category"] not in {
            "translation", "summarization", "qa", "math_reasoning", "rag"} else record["category"]
        categories.setdefault(category, []).append(record["turns"][0])
    with gzip.open(data / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        categories["humaneval"] = [json.loads(line)["prompt"] for line in f]
    rng = random.Random(seed)
    return {name: rng.sample(texts, min(per_category, len(texts))) for name, texts in sorted(categories.items())}


@torch.no_grad()
def head_time_ms(assistant, schedule: dict, repeats: int = 200) -> float:
    """Median CUDA time of one draft step's head (router + shortlist rows) at draft position 0, batch 1."""
    assistant.set_schedule(**schedule)
    hidden = torch.randn(1, assistant.config.hidden_size, device=assistant.device, dtype=assistant.dtype)
    token = torch.tensor([[5]], device=assistant.device)
    core_rank = assistant.lm_head.core_rank() if assistant.config.core_size else None
    num_core, k = assistant.config.shortlist_at(0)

    def step():
        clusters = assistant.route(hidden, token[:, -1], k)
        return assistant.lm_head(hidden, clusters, num_core, core_rank)

    times = []
    for i in range(repeats + 20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        if i >= 20:
            times.append(start.elapsed_time(end))
    return float(torch.tensor(times).median())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pair", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--per-category", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--num-clusters", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.pair / "target")
    target = AutoModelForCausalLM.from_pretrained(args.pair / "target", dtype=torch.bfloat16).cuda().eval()
    drafter = AutoModelForCausalLM.from_pretrained(args.pair / "drafter", dtype=torch.bfloat16).cuda().eval()
    tokens = torch.load(args.pair / "tokens.pt")
    vocab = target.config.vocab_size

    # calibration on held-in text: 128 windows of 256 tokens per training domain
    generator = torch.Generator().manual_seed(args.seed)
    sequences, domains = [], []
    for name, stream in tokens["train"].items():
        for start in torch.randint(0, stream.numel() - 257, (128,), generator=generator).tolist():
            sequences.append(stream[start : start + 256])
            domains.append(name)
    counts = torch.bincount(torch.cat(list(tokens["train"].values())), minlength=vocab)
    cluster_size = -(-vocab // args.num_clusters)
    fractions = {"1/32": vocab // 32, "1/16": vocab // 16, "1/8": vocab // 8}
    ks = {name: max(1, round(rows / cluster_size)) for name, rows in fractions.items()}
    core_size = max(ks.values()) * cluster_size
    assistant, report = calibrate(target, drafter, sequences, domains=domains, num_clusters=args.num_clusters,
                                  frequency_counts=counts, core_size=core_size, router_hidden_size=512,
                                  continuation_tokens=0, epochs=6, seed=args.seed, progress=False)
    assistant.generation_config.num_assistant_tokens = 6
    assistant.generation_config.assistant_confidence_threshold = 0.0
    print(f"calibrated in {time.time() - started:.0f}s; position-aware k: {report['k_by_position']}", flush=True)

    methods = [("full vocabulary", None, dict(k_by_position=[args.num_clusters], core_by_position=[0]))]
    for name, k in ks.items():
        methods.append((f"static frequency {name}", k * cluster_size / vocab,
                        dict(k_by_position=[0], core_by_position=[k * cluster_size])))
        methods.append((f"DynaSpec {name}", k * cluster_size / vocab, dict(k_by_position=[k], core_by_position=[0])))
    pa = report["k_by_position"]
    methods.append(("DynaSpec position-aware", sum(pa) / len(pa) * cluster_size / vocab,
                    dict(k_by_position=pa, core_by_position=[0])))

    prompts = load_prompts(args.data, args.per_category, args.seed)
    encoded = {c: [torch.tensor(tokenizer(t)["input_ids"][-512:]) for t in texts] for c, texts in prompts.items()}
    warm = encoded[next(iter(encoded))][0]
    measure_generation(target, [warm], assistant, max_new_tokens=16)  # CUDA warm-up
    rows = []
    for temperature in (0.0, 1.0):
        sample = temperature > 0
        for category, category_prompts in encoded.items():
            torch.manual_seed(args.seed)
            base = measure_generation(target, category_prompts, max_new_tokens=args.max_new_tokens, do_sample=sample)
            rows.append(dict(method="autoregressive", shortlist_fraction=None, category=category,
                             temperature=temperature, tau=1.0, tokens_per_s=base["tokens_per_s"], speedup=1.0,
                             prompts=len(category_prompts)))
            full_tau = None
            for name, fraction, schedule in methods if not sample else [methods[i] for i in (0, 3, 4, 7)]:
                assistant.set_schedule(**schedule)
                assistant.lm_head.reset_counters()
                torch.manual_seed(args.seed)
                result = measure_generation(target, category_prompts, assistant, max_new_tokens=args.max_new_tokens,
                                            do_sample=sample, reference=None if sample else base["outputs"])
                full_tau = result["tau"] if full_tau is None else full_tau
                rows.append(dict(
                    method=name, shortlist_fraction=fraction, category=category, temperature=temperature,
                    tau=result["tau"], recovery=result["tau"] / full_tau, tokens_per_s=result["tokens_per_s"],
                    speedup=result["tokens_per_s"] / base["tokens_per_s"], prompts=len(category_prompts),
                    exact=result.get("exact"),
                    head_rows_per_step=assistant.lm_head.rows_computed / max(assistant.lm_head.calls, 1),
                ))
            print(f"T={temperature} {category} done ({time.time() - started:.0f}s)", flush=True)
    head_ms = {name: head_time_ms(assistant, schedule) for name, _, schedule in methods}
    for row in rows:
        row["head_ms_per_step"] = head_ms.get(row["method"])

    hardware = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                "transformers": transformers.__version__, "python": platform.python_version()}
    results = {"hardware": hardware, "settings": vars(args) | {"pair": str(args.pair), "data": str(args.data),
                                                                "out": str(args.out)},
               "prompts_per_category": {c: len(p) for c, p in encoded.items()},
               "calibration": {"k_by_position": pa, "curves": report.get("curves")},
               "recipe": json.loads((args.pair / "recipe.json").read_text()), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(rows)
    (args.out / "latest.md").write_text(table)
    plot(rows, args.out / "latest.png")
    summary = summary_table(rows)
    (args.out / "summary.md").write_text(summary)
    print(table)
    print(summary)
    print(f"total {time.time() - started:.0f}s")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| T | method | category | τ | recovery | tokens/s | speedup | exact | head ms/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['temperature']:.0f} | {r['method']} | {r['category']} | {r['tau']:.2f} | "
            f"{r.get('recovery', float('nan')):.3f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f} | "
            f"{'' if r.get('exact') is None else str(r['exact']) + '/' + str(r['prompts'])} | "
            f"{'' if r.get('head_ms_per_step') is None else format(r['head_ms_per_step'], '.3f')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    greedy = [r for r in rows if r["temperature"] == 0 and r.get("recovery") is not None]
    categories = sorted({r["category"] for r in greedy})
    methods = [m for m in dict.fromkeys(r["method"] for r in greedy)]
    fig, ax = plt.subplots(figsize=(12, 4))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        values = [next((r["recovery"] for r in greedy if r["method"] == method and r["category"] == c), 0)
                  for c in categories]
        ax.bar([x + i * width for x in range(len(categories))], values, width, label=method)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(categories))], categories)
    ax.set_ylabel("recovery of full-vocabulary τ (greedy)")
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
