"""τ of chains and fixed trees on a CPU pair whose drafter agrees with the target as a trained one does, while its q
is as diffuse as the target's own distribution: how a tree's choice of nodes turns into accepted tokens, without a
GPU.

    dynaspec-hf demo                      # once: trains dynaspec-demo/target on the standard library (~4 min)
    python benchmarks/diagnostics/tree_tau.py dynaspec-demo/target [--noise 0.3] [--prompts 12] [--new-tokens 48]

The drafter is the target with Gaussian noise on every weight (`--noise` times each tensor's spread; 0.3 gives a
greedy agreement near the 128k pair's), wrapped as a full-vocabulary assistant. Prints the drafter's mean top-1
probability against its greedy agreement with the target, then per shape τ (new tokens per target pass), draft
nodes and depth per round, greedy, over held-out standard-library prompts. τ counts tokens, not time: the tree's
cost on a GPU is `tree_budgets.py`'s part.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import dynaspec_hf  # noqa: E402
from dynaspec_hf import DynaSpecAssistant, TokenClusters, TreeConfig  # noqa: E402
from dynaspec_hf.demo import stdlib_texts  # noqa: E402

SHAPES = [TreeConfig.chain(6), TreeConfig.chain(7), TreeConfig.chain(6, runner_ups=1),
          TreeConfig(8, 4, 4), TreeConfig(12, 6, 4), TreeConfig(16, 7, 4), TreeConfig(28, 7, 4)]


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", help="a causal LM folder with its tokenizer (the demo's dynaspec-demo/target)")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    target = AutoModelForCausalLM.from_pretrained(args.target).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    drafter = copy.deepcopy(target)
    torch.manual_seed(0)
    for parameter in drafter.parameters():
        parameter.add_(args.noise * parameter.std() * torch.randn_like(parameter))
    texts = [text for text in stdlib_texts(1_500_000)[::10] if len(text) > 3000]  # the demo's held-out files
    prompts = [torch.tensor(tokenizer(text[1000:])["input_ids"][:64])[None] for text in texts][: args.prompts]
    options = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)

    top, agree = [], []
    for prompt in prompts:
        sequence = target.generate(prompt, **options)
        start = prompt.shape[1] - 1
        q = drafter(sequence).logits[0, start:-1].softmax(-1)
        top.append(q.max(-1).values)
        agree.append(q.argmax(-1) == target(sequence).logits[0, start:-1].argmax(-1))
    print(f"drafter = target + noise {args.noise}: mean top-1 q {torch.cat(top).mean():.3f}, greedy agreement "
          f"{torch.cat(agree).float().mean():.3f} ({torch.cat(top).numel()} positions)\n")

    clusters = TokenClusters.from_embeddings(drafter.get_output_embeddings().weight, 64, seed=0)
    assistant = DynaSpecAssistant.from_drafter(drafter, clusters, router_hidden_size=32).eval()  # full vocabulary
    print("| shape (nodes / depth / width) | τ | draft nodes a round | depth a round |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        new = passes = nodes = depth = 0
        for prompt in prompts:
            _, stats = dynaspec_hf.generate(target, assistant, prompt, tree=shape, return_stats=True, compile=False,
                                            **options)
            new, passes = new + stats.new_tokens, passes + stats.target_passes
            nodes, depth = nodes + stats.drafted_tokens, depth + sum(stats.depths)
        name = (f"chain of {shape.max_depth}" + (f" + {shape.runner_ups} runner-up" if shape.runner_ups else "")
                if shape.is_chain else f"{shape.num_nodes}/{shape.max_depth}/{shape.width}")
        print(f"| {name} | {new / passes:.2f} | {nodes / passes:.1f} | {depth / passes:.1f} |")


if __name__ == "__main__":
    main()
