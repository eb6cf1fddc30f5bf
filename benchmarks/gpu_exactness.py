"""Greedy exactness on the GPU: is a mismatch ours or bf16 verification numerics?

    python benchmarks/gpu_exactness.py

Random-weight Llama target (12 x 768) and drafter (2 x 768), 128,256-token vocabulary. For bf16 and float32,
counts prompts whose `target.generate(assistant_model=...)` output equals plain greedy, for transformers' own
assistant (the drafter as `assistant_model`) and for DynaSpec assistants (full vocabulary and routed 1/16).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dynaspec_hf import DynaSpecAssistant, TokenClusters  # noqa: E402
from dynaspec_hf.demo import llama_pair  # noqa: E402


def main(prompts: int = 12, new_tokens: int = 64):
    torch.manual_seed(0)
    target, drafter = llama_pair(128_256, 768, 12, 768, 2, max_positions=2048)
    for model in (target, drafter):
        model.config.initializer_range = 0.1
        model.init_weights()
    clusters = TokenClusters.from_embeddings(drafter.lm_head.weight.cuda(), 256)
    print("| dtype | assistant | exact / prompts |\n|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        t, d = target.to("cuda", dtype).eval(), drafter.to("cuda", dtype).eval()
        full = DynaSpecAssistant.from_drafter(d, clusters, k_by_position=[256])
        routed = DynaSpecAssistant.from_drafter(d, clusters, k_by_position=[16])
        for a in (full, routed):
            a.generation_config.assistant_confidence_threshold = 0.0
        d.generation_config.assistant_confidence_threshold = 0.0
        d.generation_config.num_assistant_tokens = 6
        generator = torch.Generator().manual_seed(1)
        ids = [torch.randint(0, 128_256, (1, 32), generator=generator).cuda() for _ in range(prompts)]
        plain = [t.generate(x, do_sample=False, max_new_tokens=new_tokens) for x in ids]
        for name, assistant in (("transformers (drafter as assistant_model)", d), ("DynaSpec full vocabulary", full),
                                ("DynaSpec routed 1/16", routed)):
            out = [t.generate(x, assistant_model=assistant, do_sample=False, max_new_tokens=new_tokens) for x in ids]
            exact = sum(torch.equal(a, b) for a, b in zip(plain, out))
            print(f"| {str(dtype).replace('torch.', '')} | {name} | {exact}/{prompts} |", flush=True)


if __name__ == "__main__":
    main()
