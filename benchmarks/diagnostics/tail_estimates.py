"""Where the sampling tail loses per-token acceptance, on a saved target and assistant (the demo's, or a pair's).

    dynaspec-hf demo                        # writes dynaspec-demo/{target,assistant} (CPU, ~4 min)
    python benchmarks/diagnostics/tail_estimates.py --target dynaspec-demo/target --assistant dynaspec-demo/assistant
        [--clusters 4] [--ranks 0 4 8 16] [--text FILE ...] [--device cuda]   # default: the demo's two text sets

Exact per-token sampled acceptance, sum_x min(p(x), q(x)) at T = 1, teacher-forced (`calibrate.sampled_acceptance`)
at a routed shortlist of `--clusters` clusters, for each tail rank and weight; then the rank-0 tail's two factors
swapped one at a time for the full head's own: the cluster masses (the router's, against the full head's) and the
shares within a cluster (corpus counts, against the full head's). The factor whose exact version closes more of the
gap to the full head is where the estimate loses. Prints one table per text set.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dynaspec_hf import DynaSpecAssistant  # noqa: E402
from dynaspec_hf.calibrate import TAIL_WEIGHTS, sampled_acceptance  # noqa: E402
from dynaspec_hf.configuration_dynaspec import Shortlist  # noqa: E402
from dynaspec_hf.demo import encoding_texts, stdlib_texts  # noqa: E402


@torch.no_grad()
def swapped_factors(target, assistant, sequences: list[torch.Tensor], k: int) -> dict:
    """The rank-0 tail at weight 1 with its cluster masses or its within-cluster shares taken from the full head."""
    index, head = assistant.lm_head.index(), assistant.lm_head
    cluster = index.token_cluster
    sums, positions = {}, 0
    for ids in sequences:
        ids = ids.to(assistant.device)
        p = target(input_ids=ids[None]).logits[0, 1:-1].float().softmax(-1)
        states = assistant.drafter(input_ids=ids[None]).last_hidden_state[0]
        hidden, previous, tokens = states[1:-1], states[:-2], ids[1:-1]
        full = assistant.full_vocabulary_logits(hidden).float().log_softmax(-1)
        mass = torch.stack([full[:, cluster == c].logsumexp(-1) for c in range(head.num_clusters)], -1)
        cluster_ids, router_mass = assistant.routing(previous, tokens, k, tail=1.0)
        rows, row_tokens, _ = assistant.shortlist_logits(hidden, previous, tokens, Shortlist(0, k, 0, 0.0), index,
                                                         routing=(cluster_ids, router_mass))
        for name, estimate in (("router mass, exact shares", router_mass[:, cluster] + full - mass[:, cluster]),
                               ("exact mass, corpus shares", mass[:, cluster] + head.token_log_share)):
            q = assistant._spread(rows, row_tokens, estimate).softmax(-1)
            sums[name] = sums.get(name, 0.0) + float(torch.minimum(p, q).sum())
        positions += len(tokens)
    return {name: total / positions for name, total in sums.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True)
    parser.add_argument("--assistant", required=True)
    parser.add_argument("--clusters", type=int, default=4, help="routed clusters of the shortlist")
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 4, 8, 16])
    parser.add_argument("--text", type=Path, nargs="*", help="text files, a set each (default: the demo's two sets)")
    parser.add_argument("--tokens", type=int, default=512, help="tokens a window")
    parser.add_argument("--windows", type=int, default=16, help="windows read of each --text file")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    target = AutoModelForCausalLM.from_pretrained(args.target).to(args.device).eval()
    assistant = DynaSpecAssistant.from_pretrained(args.assistant).to(args.device).eval()
    if args.text:  # each file's first windows
        sets = {}
        for path in args.text:
            ids = torch.tensor(tokenizer(path.read_text()[: 8 * args.tokens * args.windows])["input_ids"])
            sets[path.name] = list(ids[: args.tokens * args.windows].split(args.tokens))
    else:  # each text's first window
        sets = {name: [torch.tensor(tokenizer(text)["input_ids"])[: args.tokens] for text in texts] for name, texts in
                (("held-out stdlib", stdlib_texts(1_500_000)[::10]), ("unseen codecs", encoding_texts()[:8]))}
    for name, sequences in sets.items():
        sequences = [ids for ids in sequences if ids.numel() > 64]
        print(f"\n{name}: {len(sequences)} texts, routed shortlist of {args.clusters} clusters\n")
        print("| tail | " + " | ".join(f"weight {w}" for w in TAIL_WEIGHTS) + " |")
        print("|---|" + "---|" * len(TAIL_WEIGHTS))
        for rank in args.ranks:
            assistant.set_schedule(k_by_position=[args.clusters], core_by_position=[0], num_context_tokens=0,
                                   temperature_bands=[], sampling_tail=1.0, sampling_tail_rank=rank)
            result = sampled_acceptance(target, assistant, sequences, TAIL_WEIGHTS)
            print(f"| rank {rank} | " + " | ".join(f"{result['tail'][str(w)]:.4f}" for w in TAIL_WEIGHTS) + " |")
        print(f"\nfull head {result['full']:.4f}; best possible shortlist, no tail {result['best_shortlist']:.4f}")
        assistant.set_schedule(sampling_tail_rank=0)
        for label, value in swapped_factors(target, assistant, sequences, args.clusters).items():
            print(f"rank 0, weight 1, {label}: {value:.4f}")


if __name__ == "__main__":
    main()
