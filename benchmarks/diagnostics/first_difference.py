"""Where the own loop's greedy output first differs from the target's own, and how close the target's two likeliest
tokens were there: a top-two gap near float32's rounding says the kernels of two passes disagreed on a near-tie; a
clear gap says a bug. Also lists any "CUDA graph capture failed" warning. For a failure of `tests/gpu`'s own-loop
exactness test: the same tiny pairs, prompts and settings.

    python benchmarks/diagnostics/first_difference.py gemma2 [llama ...] [--device cuda] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import dynaspec_hf  # noqa: E402
from conftest import make_assistant, tiny_pair  # noqa: E402
from dynaspec_hf import TreeConfig  # noqa: E402
from dynaspec_hf.measure import gap_at_first_difference  # noqa: E402

SHAPES = {"chain": TreeConfig.chain(6), "runner-ups": TreeConfig.chain(6, runner_ups=1), "tree": TreeConfig()}


@torch.no_grad()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="+")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--new-tokens", type=int, default=100)
    args = parser.parse_args(argv)
    for family in args.families:
        for name, shape in SHAPES.items():
            target, drafter = (model.to(args.device) for model in tiny_pair(family))
            assistant = make_assistant(drafter, "routed")
            generator = torch.Generator().manual_seed(2)
            differences = []
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for prompt in range(10):
                    ids = torch.randint(0, 192, (1, 9), generator=generator).to(args.device)
                    plain = target.generate(ids, do_sample=False, max_new_tokens=args.new_tokens)
                    own = dynaspec_hf.generate(target, assistant, ids, max_new_tokens=args.new_tokens, tree=shape,
                                               compile=args.compile)
                    difference = gap_at_first_difference(target, plain, own)
                    if difference is not None:
                        differences.append(f"prompt {prompt}: position {difference[0]}, gap {difference[1]:.1e}")
            failed = sorted({str(w.message)[:200] for w in caught if "capture failed" in str(w.message)})
            print(f"{family}, {name}: {len(differences)} of 10 differ {differences}; capture failures: {failed}",
                  flush=True)


if __name__ == "__main__":
    main()
