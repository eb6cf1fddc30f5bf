"""How close the Llama-3-8B-shaped verification pass can get to its weight-reading floor, and where it stops.

    python benchmarks/verify_floor.py --out DIR

Random weights, bf16, one GPU. Two tables, against the floor (every weight but the embedding read once at the
measured copy rate):
1. The pass's matrix products alone, replayed from one CUDA graph, for M rows (13: one padded pass; 52 and 104:
   4 and 8 such passes batched), with the model's separate q/k/v and gate/up weights and with them concatenated
   (one product each, as fused-projection engines store them). What no transformers forward can go below.
2. The own loop's padded 13-token verification pass (`TreeVerifier`), eager kernels and `compile=True`: the whole
   `verify` call, its graph replayed alone, the device's busy time, split by kernel class, and kernels per pass.
Writes DIR/verify_floor.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dynaspec_hf.engines import release_engines  # noqa: E402
from dynaspec_hf.tree import TokenTree  # noqa: E402
from dynaspec_hf.verification import tree_verifier  # noqa: E402
from gpu_checks import COMPILED, TARGET_8B, VOCAB, copy_bandwidth, graph_ms  # noqa: E402
from timing import cuda_ms  # noqa: E402

KERNEL_CLASSES = {  # by kernel name, first match wins (inductor's kernels name the operations they fuse)
    "fused (inductor)": ("triton",),
    "matrix products": ("gemm", "gemv", "nvjet", "cutlass", "xmma", "splitk", "cublas"),
    "attention": ("fmha", "flash", "attention", "sdpa"),
}


def kernel_class(name: str) -> str:
    name = name.lower()
    return next((kind for kind, marks in KERNEL_CLASSES.items() if any(m in name for m in marks)), "other")


@torch.no_grad()
def products_ms(target, rows: int, concatenated: bool) -> float:
    """The pass's matrix products over `rows` activations, one graph."""
    hidden = target.config.hidden_size
    x = torch.randn(rows, hidden, device="cuda", dtype=target.dtype)
    weights = []
    for layer in target.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        inputs = [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]
        gate_up = [mlp.gate_proj.weight, mlp.up_proj.weight]
        if concatenated:
            inputs, gate_up = [torch.cat(inputs)], [torch.cat(gate_up)]
        weights.append((inputs, gate_up, attention.o_proj.weight, mlp.down_proj.weight))
    intermediate = target.config.intermediate_size

    def run():
        for inputs, gate_up, output, down in weights:
            for weight in inputs:
                x @ weight.T
            x @ output.T
            activation = [x @ weight.T for weight in gate_up][0][:, :intermediate]
            activation @ down.T
        x @ target.lm_head.weight.T

    ms = graph_ms(run, inner=1)
    del weights
    torch.cuda.empty_cache()
    return ms


@torch.no_grad()
def verification_pass(target, options) -> dict:
    prompt = torch.randint(0, VOCAB, (256,), device="cuda")
    tree = TokenTree(root_position=255)
    for token in range(7):
        tree.add(token, token - 1)
    chain = tree.nodes("cuda")
    started = time.perf_counter()
    verifier = tree_verifier(target, 256 + 16, 13, options)
    verifier.verify(prompt, chain)  # the prompt, eagerly

    def one_pass():
        verifier.cached = 255  # the last prompt token re-fed, then six drafts: a padded 13-token pass
        verifier.verify(prompt, chain)

    one_pass()  # captures (and compiles)
    out = {"warm-up (s)": time.perf_counter() - started, "verify call (ms)": cuda_ms(one_pass, repeats=30),
           "graph replay alone (ms)": cuda_ms(verifier.model.graphs[13].replay, repeats=30,
                                              before=lambda: verifier.model.set_length(255))}
    passes = 10
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        for _ in range(passes):
            one_pass()
        torch.cuda.synchronize()
    busy, kernels = {}, {}
    for event in profile.key_averages():
        if event.self_device_time_total > 0:
            kind = kernel_class(event.key)
            busy[kind] = busy.get(kind, 0.0) + event.self_device_time_total / 1e3 / passes
            kernels[kind] = kernels.get(kind, 0) + event.count / passes
    out["device busy (ms)"] = sum(busy.values())
    out["busy by class (ms)"], out["kernels by class"] = busy, kernels
    release_engines(target, "verifier")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with torch.device("cuda"):
        target = AutoModelForCausalLM.from_config(TARGET_8B, dtype=torch.bfloat16).eval()
    bandwidth = copy_bandwidth()
    weights = sum(p.numel() for p in target.parameters()) - target.get_input_embeddings().weight.numel()
    floor = 2 * weights / bandwidth * 1e3
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "copy bandwidth (GB/s)": bandwidth / 1e9,
               "floor (ms)": floor, "products (ms)": {}, "verification pass": {}}
    lines = [f"GPU: {results['gpu']}, torch {results['torch']}, bf16, random weights, Llama-3-8B-shaped target; "
             f"copy bandwidth {bandwidth / 1e9:.0f} GB/s, weight floor {floor:.2f} ms\n",
             "## The pass's matrix products alone (one CUDA graph)\n",
             "| rows | separate q/k/v, gate/up (ms) | / floor | concatenated (ms) | / floor |", "|---|---|---|---|---|"]
    for rows in (1, 13, 52, 104):
        separate, joined = products_ms(target, rows, False), products_ms(target, rows, True)
        results["products (ms)"][rows] = {"separate": separate, "concatenated": joined}
        lines.append(f"| {rows} | {separate:.2f} | {separate / floor:.2f} | {joined:.2f} | {joined / floor:.2f} |")
    for kernels, options in COMPILED.items():
        results["verification pass"][kernels] = verification_pass(target, options)
    passes = results["verification pass"]
    lines += ["\n## The padded 13-token verification pass (`TreeVerifier`)\n",
              "| ms | " + " | ".join(passes) + " |", "|---|" + "---|" * len(passes)]
    for key in ("verify call (ms)", "graph replay alone (ms)", "device busy (ms)"):
        lines.append(f"| {key[:-5]} | " + " | ".join(f"{p[key]:.2f} ({p[key] / floor:.2f}x)" for p in passes.values()) + " |")
    for kind in [*KERNEL_CLASSES, "other"]:
        lines.append(f"| busy: {kind} (kernels) | " + " | ".join(
            f"{p['busy by class (ms)'].get(kind, 0):.2f} ({p['kernels by class'].get(kind, 0):.0f})"
            for p in passes.values()) + " |")
    lines.append("| warm-up (s) | " + " | ".join(f"{p['warm-up (s)']:.0f}" for p in passes.values()) + " |")
    (args.out / "verify_floor.json").write_text(json.dumps(results, indent=2))
    (args.out / "verify_floor.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
