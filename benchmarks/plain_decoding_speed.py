"""Does transformers' sampling path cost more per token than greedy, and how much does plain decoding's speed move?

    PYTHONPATH=. python benchmarks/plain_decoding_speed.py

The recipe's target shape (Llama, 12 x 768, 128,256 tokens) with random weights, float32, 256 new tokens, five
interleaved greedy/sampled repeats per prompt length. Written to read the benchmark's plain-decoding baselines,
which are bound by Python and kernel launches (it prints a table; the last one is in results/history/2026-11-23-plain-decoding-speed/).
"""

import statistics
import time

import torch

from dynaspec_hf.demo import llama_pair

VOCAB, NEW_TOKENS, REPEATS = 128256, 256, 5


def main() -> None:
    torch.manual_seed(0)
    target, _ = llama_pair(VOCAB, 768, 12, 768, 2, max_positions=2048)
    target = target.cuda().eval()
    speeds = {}
    for prompt_length in (100, 1000):
        ids = torch.randint(1, VOCAB, (1, prompt_length), device="cuda")
        target.generate(ids, do_sample=False, max_new_tokens=32)  # warm-up
        target.generate(ids, do_sample=True, max_new_tokens=32, top_k=0, top_p=1.0)
        for repeat in range(REPEATS):
            for temperature in (0, 1):
                options = dict(do_sample=temperature > 0, max_new_tokens=NEW_TOKENS)
                if temperature:
                    options.update(temperature=1.0, top_k=0, top_p=1.0)
                torch.manual_seed(repeat)
                torch.cuda.synchronize()
                start = time.perf_counter()
                out = target.generate(ids, **options)
                torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                speeds.setdefault((prompt_length, temperature), []).append((out.shape[1] - prompt_length) / seconds)
    for (prompt_length, temperature), values in speeds.items():
        print(f"prompt {prompt_length:5d} T={temperature}: tok/s median {statistics.median(values):.1f} "
              f"min {min(values):.1f} max {max(values):.1f}")


if __name__ == "__main__":
    main()
