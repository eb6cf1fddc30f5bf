"""Compose measured draft-step times with measured τ, next to the memory-bound roofline, for realistic shapes.

    python benchmarks/roofline.py benchmarks/results/history/2026-11-24-gpu-checks/gpu_checks.json benchmarks/results/latest.json \
        [--rounds benchmarks/results/history/2026-12-01-engine/gpu_checks_rounds_compile_static.json]

Speedup over plain decoding = τ · t(target, 1 token) / (block · t(draft step) + t(target, block + 1 tokens)). The
roofline uses the same formula with every forward at its weight-reading floor (bf16 weights read once at
`--bandwidth` bytes/s; the KV cache and activations are ignored). `--rounds` (a `gpu_checks.py` rounds file)
composes whole measured rounds instead: τ · t(plain decoding) / t(round), against the eager plain decoding of the
same run and against plain decoding at its weight floor, which no plain decoder beats (a lower bound).
"""

import argparse
import json

BLOCK = 6
VOCAB, HEAD_FRACTION = 128_256, 1 / 16
SHAPES = {  # name in the anatomy file: (hidden, layers, intermediate, kv heads × head dim)
    "Llama-3.2-1B-shaped (16 x 2048)": (2048, 16, 8192, 512),
    "EAGLE-like (1 x 4096)": (4096, 1, 14336, 1024),
}
TARGET = (4096, 32, 14336, 1024)


def body_parameters(hidden, layers, intermediate, kv):
    return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("anatomy")
    parser.add_argument("latest")
    parser.add_argument("--bandwidth", type=float, default=3.0e12, help="bytes/s (the H100's measured copy rate)")
    parser.add_argument("--rounds", help="gpu_checks.json with a rounds section: compose its measured rounds")
    args = parser.parse_args()
    anatomy = json.load(open(args.anatomy))["anatomy"]
    rows = json.load(open(args.latest))["rows"]
    tau = {}
    for method in ("full vocabulary", "DynaSpec 1/16"):
        per_category = [r["tau"] for r in rows if r["method"] == method and r["temperature"] == 0]
        tau[method] = sum(per_category) / len(per_category)
    target = anatomy["Llama-3-8B-shaped target"]
    ar, verify = target["target forward, 1 token(s), eager"], target["target forward, 7 token(s), eager"]
    floor = lambda parameters: 2 * parameters / args.bandwidth * 1e3  # noqa: E731  (ms, bf16)
    target_floor = floor(body_parameters(*TARGET) + VOCAB * TARGET[0])
    print(f"τ (T=0, mean of {len(per_category)} categories): full {tau['full vocabulary']:.2f}, DynaSpec 1/16 {tau['DynaSpec 1/16']:.2f}; "
          f"target {ar:.1f} ms/token, verify {verify:.1f} ms, weight floor {target_floor:.2f} ms\n")
    print("| drafter | head | step (ms) | composed speedup | roofline speedup |\n|---|---|---|---|---|")
    for shape, dims in SHAPES.items():
        steps = anatomy[shape]
        for head, key, method, head_rows in (
            ("full, eager", "step, full head, eager", "full vocabulary", VOCAB),
            ("full, CUDA graph", "step, full head, CUDA graph", "full vocabulary", VOCAB),
            ("DynaSpec 1/16, CUDA graph", "step, DynaSpec 1/16, CUDA graph", "DynaSpec 1/16", VOCAB * HEAD_FRACTION),
        ):
            step = steps[key]
            composed = tau[method] * ar / (BLOCK * step + verify)
            draft_floor = floor(body_parameters(*dims) + head_rows * dims[0])
            roofline = tau[method] * target_floor / (BLOCK * draft_floor + target_floor)
            print(f"| {shape} | {head} | {step:.3f} | {composed:.2f}x | {roofline:.2f}x |")
    if args.rounds:
        compose_rounds(json.load(open(args.rounds))["rounds"], tau["DynaSpec 1/16"])


def compose_rounds(rounds: dict, tau: float) -> None:
    """Measured rounds (6 drafts + one verification pass) composed with the pair's τ. The rounds ran on random
    weights (about one token per round), but a round's work hardly depends on τ: the pass is padded to a fixed
    size and the chain always drafts 6; only the drafter's re-read grows with the accepted tokens."""
    plain, floor = rounds["target forward, 1 token(s), eager"], rounds["target floor (ms)"]
    print(f"\nMeasured rounds (τ {tau:.2f}, DynaSpec 1/16, chain of {BLOCK}); plain decoding in the same run: eager "
          f"{plain:.1f} ms per token, weight floor {floor:.2f} ms\n")
    print("| drafter | loop | ms per round | speedup over eager plain decoding | over plain decoding at its floor |\n"
          "|---|---|---|---|---|")
    for shape in SHAPES:
        for loop, ms in rounds.get(shape, {}).items():
            if "loop" in loop:
                print(f"| {shape} | {loop} | {ms:.2f} | {tau * plain / ms:.2f}x | {tau * floor / ms:.2f}x |")


if __name__ == "__main__":
    main()
