"""Multi-GPU checks and timings (device tool: nvidia-h200-x2). One command:

    python benchmarks/multi_gpu.py --data .carry/data --out benchmarks/results

1. Exactness with a target sharded over the GPUs (`device_map="balanced"`) and the assistant on the last GPU:
   transformers' assisted loop and the tree loop against plain greedy decoding (float32).
2. `dynaspec-hf calibrate` under `accelerate launch` on 1 and on 2 GPUs: wall time, and whether both runs save
   the same assistant.
3. The benchmark's τ phase under `accelerate launch` on 1 and on 2 GPUs (same workers, same prompts): wall time,
   and whether both runs record the same τ per prompt. (Start the CUDA MPS daemon first, as for run_all.sh.)

Models have random weights (what is measured is placement, equality and time, not quality); the tokenizer is
trained on the data folder's text. Writes multi_gpu.json and multi_gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

import dynaspec_hf  # noqa: E402
from dynaspec_hf import DynaSpecAssistant, TokenClusters, TreeConfig  # noqa: E402
from dynaspec_hf.demo import train_tokenizer  # noqa: E402
from dynaspec_hf.engines import kept_engine  # noqa: E402


def make_pair(data: Path, out: Path, vocab_size: int = 32_000) -> None:
    """A random-weight Llama target (16 x 1024) and drafter (target + noise) in the recipe's folder layout."""
    texts = {"wikitext": (data / "wikitext2" / "valid.txt").read_text(),
             "shakespeare": (data / "tinyshakespeare" / "input.txt").read_text()}
    tokenizer = train_tokenizer(list(texts.values()), vocab_size=vocab_size)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    target = AutoModelForCausalLM.from_config(config)
    drafter = AutoModelForCausalLM.from_config(config)
    drafter.load_state_dict(target.state_dict())
    with torch.no_grad():
        for parameter in drafter.parameters():
            parameter.add_(0.3 * parameter.std() * torch.randn_like(parameter))
    for model, name in ((target, "target"), (drafter, "drafter")):
        model.save_pretrained(out / name)
        tokenizer.save_pretrained(out / name)
    encoded = {name: torch.tensor(tokenizer(text[:400_000])["input_ids"]) for name, text in texts.items()}
    torch.save({"train": encoded, "heldout": encoded}, out / "tokens.pt")
    (out / "recipe.json").write_text(json.dumps({"random_weights": True, "vocab_size": len(tokenizer)}))
    for name, text in texts.items():
        (out / f"{name}.txt").write_text(text[:300_000])


def sharded_exactness(pair: Path, log) -> dict:
    target = AutoModelForCausalLM.from_pretrained(pair / "target", dtype=torch.float32, device_map="balanced").eval()
    devices = sorted({str(d) for d in target.hf_device_map.values()})
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    drafter = AutoModelForCausalLM.from_pretrained(pair / "drafter", dtype=torch.float32).to(last).eval()
    clusters = TokenClusters.from_embeddings(drafter.lm_head.weight, 64)
    assistant = DynaSpecAssistant.from_drafter(drafter, clusters, k_by_position=[8, 4])
    assistant.generation_config.assistant_confidence_threshold = 0.0
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, target.config.vocab_size, (1, 24), generator=generator) for _ in range(8)]
    exact_loop = exact_tree = 0
    for ids in prompts:
        ids = ids.to(target.device)
        plain = target.generate(ids, do_sample=False, max_new_tokens=48)
        exact_loop += torch.equal(plain, target.generate(ids, assistant_model=assistant, do_sample=False,
                                                         max_new_tokens=48))
        exact_tree += torch.equal(plain, dynaspec_hf.generate(target, assistant, ids, max_new_tokens=48,
                                                              tree=TreeConfig(num_nodes=12, max_depth=6)))
    graphs = kept_engine(assistant, "chain drafter") is not None
    result = dict(target_devices=devices, assistant_device=str(last), prompts=len(prompts), exact_assisted=exact_loop,
                  exact_tree=exact_tree, graph_drafter_used=graphs)
    log(f"| target on {', '.join(devices)}; assistant on {last} | {exact_loop}/{len(prompts)} | "
        f"{exact_tree}/{len(prompts)} | {graphs} |")
    return result


def timed(command: list[str], env: dict) -> float:
    started = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return time.time() - started


def launch(gpus: int) -> list[str]:
    """`accelerate launch` with one process per GPU (flags given, so no accelerate config file is needed)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(gpus),
            *(["--multi_gpu"] if gpus > 1 else []), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no"]


def calibration_scaling(pair: Path, work: Path, log) -> dict:
    results, states = {}, {}
    for gpus in (1, 2):
        out = work / f"calibrated-{gpus}gpu"
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))), TQDM_DISABLE="1",
                   HF_HOME=str(work / f"hf-{gpus}"))
        command = [*launch(gpus), "-m", "dynaspec_hf.cli", "calibrate", "--target", str(pair / "target"),
                   "--drafter", str(pair / "drafter"), "--data", str(pair / "wikitext.txt"),
                   str(pair / "shakespeare.txt"), "--out", str(out), "--num-clusters", "64", "--epochs", "3",
                   "--dtype", "float32", "--max-length", "256"]
        results[f"{gpus} GPU"] = timed(command, env)
        states[gpus] = load_file(out / "model.safetensors")
        report = json.loads((out / "calibration_report.json").read_text())
        log(f"| calibrate, {gpus} GPU(s) | {results[f'{gpus} GPU']:.1f} s | k_by_position {report['k_by_position']} |")
    same = all(torch.allclose(states[1][k].float(), states[2][k].float(), atol=1e-4) for k in states[1])
    results["same_assistant"] = same
    log(f"| calibrate: 1-GPU and 2-GPU assistants equal (atol 1e-4) | {same} | |")
    return results


def benchmark_scaling(pair: Path, data: Path, work: Path, log) -> dict:
    """The benchmark's τ phase under `accelerate launch` on 1 and 2 GPUs: the same 12 workers, the same records."""
    results, records = {}, {}
    arguments = [str(ROOT / "benchmarks" / "run_benchmark.py"), "--pair", str(pair), "--data", str(data),
                 "--out", str(work / "bench"), "--num-clusters", "64", "--per-category", "3", "--max-new-tokens", "48",
                 "--workers", "12", "--temperatures", "0"]
    env = dict(os.environ, TQDM_DISABLE="1")
    results["calibrate phase"] = timed([sys.executable, *arguments, "--phase", "calibrate"], env)
    print(f"benchmark calibrate phase: {results['calibrate phase']:.0f} s", flush=True)
    for gpus in (1, 2):
        for stale in list(pair.glob("tau-*.json")) + list((pair / "shards").glob("*")):
            stale.unlink()
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(map(str, range(gpus))), TQDM_DISABLE="1")
        results[f"{gpus} GPU"] = timed([*launch(gpus), *arguments, "--phase", "tau"], env)
        records[gpus] = sorted(json.loads((pair / "tau-T0.0.json").read_text()),
                               key=lambda r: (r["method"], r["category"], r["prompt"]))
        tau = sum(r["tokens"] for r in records[gpus]) / sum(r["target_calls"] for r in records[gpus])
        results[f"tau {gpus} GPU"] = tau
        log(f"| benchmark τ phase under accelerate launch, {gpus} GPU(s), 12 workers, {len(records[gpus])} generations "
            f"| {results[f'{gpus} GPU']:.1f} s | τ {tau:.3f} |")
    results["same_records"] = records[1] == records[2]
    log(f"| benchmark: 1-GPU and 2-GPU τ records equal | {results['same_records']} | |")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("runs/multi_gpu"))
    parser.add_argument("--sections", nargs="+", choices=["sharded", "calibrate", "benchmark"],
                        default=["sharded", "calibrate", "benchmark"])
    args = parser.parse_args(argv)
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    pair = args.work / "pair"
    if not (pair / "recipe.json").exists():
        started = time.time()
        make_pair(args.data, pair)
        print(f"random-weight pair built in {time.time() - started:.0f} s", flush=True)
    results = {"hardware": {"gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                            "torch": torch.__version__, "transformers": transformers.__version__}}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run stopped by a time limit keeps what it measured
        (args.out / "multi_gpu.json").write_text(json.dumps(results, indent=2))
        gpus = ", ".join(results["hardware"]["gpus"])
        (args.out / "multi_gpu.md").write_text(f"GPUs: {gpus}; torch {torch.__version__}, transformers "
                                               f"{transformers.__version__}\n\n" + "\n".join(lines) + "\n")

    sections = set(args.sections)
    if "sharded" in sections:
        log("## Sharded target (float32, random weights, 16 x 1024, 32k vocabulary)\n\n| placement | assisted loop "
            "exact | tree loop exact | graph drafter |\n|---|---|---|---|")
        results["sharded_exactness"] = sharded_exactness(pair, log)
        save()
    if sections & {"calibrate", "benchmark"}:
        log("\n## Data-parallel runs: 1 vs 2 GPUs\n\n| run | wall time | result |\n|---|---|---|")
    if "calibrate" in sections:
        results["calibration"] = calibration_scaling(pair, args.work, log)
        save()
    if "benchmark" in sections:
        results["benchmark"] = benchmark_scaling(pair, args.data, args.work, log)
        save()


if __name__ == "__main__":
    main()
